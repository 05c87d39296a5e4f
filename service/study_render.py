"""A study report as JSON, one offline HTML page, or Markdown with its plots."""

from __future__ import annotations

import json
import re
from html import escape
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from service.compression import html_page
from service.plot_render import plotly_div, plotly_js
from service.plots import Figure, slug, study_figures
from trainer.errors import DaciaVisionError
from trainer.statistics import Interval
from trainer.study_report import StudyReport, verdict
from worker.settings import Settings
from worker.studies.runtime import reports_dir

ReportFormat = Literal["json", "html", "markdown"]
Table = tuple[list[str], list[list[str]]]


class ReportNotReadyError(DaciaVisionError):
    code = "report_not_ready"


def load_report(settings: Settings, study_id: str, status: str = "running") -> StudyReport:
    """The published report; ReportNotReadyError until the report stage has run."""
    path = reports_dir(settings) / study_id / "report.json"
    try:
        return StudyReport.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        if status == "running":
            reason = f"it is written when every stage has succeeded; follow GET /studies/{study_id}"
        else:
            # A failed or cancelled study never reaches its report stage: waiting is useless.
            reason = (
                f"the study ended {status}, so it will never have one; GET "
                f"/studies/{study_id} shows each stage's outcome"
            )
        raise ReportNotReadyError(
            f"study {study_id!r} has no report: {reason}", study_id=study_id, status=status
        ) from None


def negotiate(accept: str) -> ReportFormat:
    """html or markdown when the Accept header prefers them, else json."""
    if "text/html" in accept:
        return "html"
    if "text/markdown" in accept:
        return "markdown"
    return "json"


def _pct(value: float) -> str:
    return f"{value:.3f}"


def _interval(interval: Interval) -> str:
    return f"{_pct(interval.estimate)} ({_pct(interval.low)}–{_pct(interval.high)})"


def tables(report: StudyReport) -> dict[str, Table]:
    """The report's tables, as header and rows of text, shared by HTML and Markdown."""
    models = report.models
    comparison: Table = (
        ["model", "stage", "dataset", "test accuracy (95% CI)", "test loss", "val accuracy",
         "train s", "epochs", "parameters", "model MB", "latency ms", "train accuracy",
         "lab's gap"],
        [[m.label, m.stage, m.dataset,
          _interval(m.test_accuracy),
          f"{m.test_loss:.4f}", _pct(m.validation_accuracy), f"{m.fit_seconds:.1f}",
          str(m.epochs_run), f"{m.parameter_count:,}", f"{m.model_file_bytes / 1e6:.2f}",
          f"{m.inference_batch1_milliseconds:.2f}" if m.inference_batch1_milliseconds else "-",
          "-" if m.train_accuracy is None else _pct(m.train_accuracy),
          f"{m.generalization_gap:.3f}"] for m in models],
    )  # fmt: skip
    selection_rows = []
    for stage, winner in report.selections.items():
        for c in winner.candidates:
            mark = "winner" if c.model_name == winner.model_name else ""
            selection_rows.append([stage, c.label, _pct(c.validation_accuracy),
                                   f"{c.validation_loss:.4f}", mark])  # fmt: skip
    # Every test once, with the family whose Holm adjustment decided its verdict.
    tests = [(c.a, c.b, c.mcnemar, "models", c.verdict) for c in report.comparisons] + [
        (e.base, e.variant, e.mcnemar, "retrains",
         verdict(report.model(e.base), report.model(e.variant), e.mcnemar))
        for e in report.augmentation
    ]  # fmt: skip
    mcnemar: Table = (
        ["a", "b", "test set", "only a right", "only b right", "p", "Holm family",
         "Holm-adjusted p", "verdict"],
        [[report.model(a).label, report.model(b).label, report.model(a).test_set,
          str(test.only_a_correct), str(test.only_b_correct), f"{test.p_value:.4g}", family,
          "-" if test.p_value_holm is None else f"{test.p_value_holm:.4g}", text]
         for a, b, test, family, text in tests],
    )  # fmt: skip
    result = {
        "comparison": comparison,
        "selection": (["stage", "candidate", "val accuracy", "val loss", ""], selection_rows),
        "mcnemar": mcnemar,
    }
    for index, effect in enumerate(report.augmentation):
        result[f"augmentation_{index}"] = (
            ["class", "precision", "recall", "F1 before", "F1 after", "ΔF1 (95% CI)", ""],
            [[c.class_name, f"{c.precision_before:.3f} → {c.precision_after:.3f}",
              f"{c.recall_before:.3f} → {c.recall_after:.3f}", f"{c.f1_before:.3f}",
              f"{c.f1_after:.3f}",
              f"{c.f1_delta.estimate:+.3f} ({c.f1_delta.low:+.3f}…{c.f1_delta.high:+.3f})",
              ("▲ significant" if c.f1_delta.estimate > 0 else "▼ significant")
              if c.significant else ""] for c in effect.per_class],
        )  # fmt: skip
    for model in models:
        result[f"layers_{slug(model.key)}"] = (
            ["layer", "type", "output shape", "parameters"]
            if model.layers
            else ["layers were not recorded in this model's card"],
            [[layer.name, layer.layer_type, str(tuple(layer.output_shape)),
              f"{layer.parameters:,}"] for layer in model.layers],
        )  # fmt: skip
    return result


def _sections(report: StudyReport) -> list[tuple[str, list[str], list[str]]]:
    """(heading, table names, figure names) in page order."""
    by_stage: list[tuple[str, list[str], list[str]]] = [
        ("Comparison", ["comparison"], ["accuracy_vs_cost"]),
        ("Model selection (validation split only)", ["selection"], []),
        ("Paired significance (McNemar's exact test)", ["mcnemar"], []),
        ("Per-class F1", [], [f.name for f in study_figures(report) if f.name.startswith("f1_")]),
    ]
    for index, effect in enumerate(report.augmentation):
        base, variant = report.model(effect.base), report.model(effect.variant)
        by_stage.append(
            (f"Per class: {base.label} → {variant.label}", [f"augmentation_{index}"], [])
        )
    for model in report.models:
        key = slug(model.key)
        by_stage.append(
            (f"{model.label}: {model.architecture} on {model.dataset}",
             [f"layers_{key}"], [f"curves_{key}", f"confusion_{key}"])
        )  # fmt: skip
    return by_stage


def _cell_class(cell: str) -> str:
    return "up" if "▲" in cell else "down" if "▼" in cell else ""


def _html_table(table: Table) -> str:
    header, rows = table
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="{_cell_class(cell)}">{escape(cell)}</td>'
            for cell in row) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: StudyReport) -> str:
    """One self-contained page: plotly.js inlined, no network needed."""
    all_tables = tables(report)
    figures: dict[str, Figure] = {f.name: f for f in study_figures(report)}
    items = "".join(f"<li>{escape(sentence)}</li>" for sentence in report.discussion)
    note = (
        f"{report.method} {report.labels_source} Bootstrap: {report.bootstrap_resamples} "
        f"resamples; alpha {report.alpha}."
    )
    parts = [
        f"<h1>Study {escape(report.name or report.study_id)}</h1>",
        f"<h2>Discussion</h2><ul>{items}</ul>",
        f"<p class=note>{escape(note)}</p>",
    ]
    for heading, table_names, figure_names in _sections(report):
        parts.append(f"<h2>{escape(heading)}</h2>")
        parts.extend(_html_table(all_tables[name]) for name in table_names)
        parts.extend(plotly_div(figures[name], f"plot-{name}") for name in figure_names)
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
             ".up{background:#d4f4d4}.down{background:#f8d4d4}.note{color:#555}")  # fmt: skip
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>Study report</title>"
        f"<style>{style}</style><script>{plotly_js()}</script></head><body>"
        + "".join(parts)
        + "</body></html>"
    )


def _markdown_text(text: str) -> str:
    # Markdown passes HTML through: a label's "<script>" must reach a viewer as text.
    # Only a "<" that could open a tag (CommonMark's rule) is escaped: "p < 0.05" stays.
    # One line: a name's line break would end a heading or a table row.
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", " ".join(text.splitlines()))


def _markdown_table(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(map(_markdown_text, header)) + " |", "|" + " --- |" * len(header)]
    lines += [
        "| " + " | ".join(_markdown_text(cell).replace("|", "\\|") for cell in row) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def to_markdown(report: StudyReport, plot_url: str = "") -> str:
    """Markdown with images at ``{plot_url}{name}.png`` (the study's stable plot URLs).

    PNG rather than SVG: small files that every Markdown viewer shows, for reports
    kept beside code (``daciavision study report --output docs/examples/lab.md``).
    """
    all_tables = tables(report)
    titles = {f.name: f.title for f in study_figures(report)}
    parts = [f"# Study {_markdown_text(report.name or report.study_id)}", "## Discussion",
             "\n".join(f"- {_markdown_text(s)}" for s in report.discussion),
             f"_{report.method} {report.labels_source} Bootstrap: "
             f"{report.bootstrap_resamples} resamples; alpha {report.alpha}._"]  # fmt: skip
    for heading, table_names, figure_names in _sections(report):
        parts.append(f"## {_markdown_text(heading)}")
        parts.extend(_markdown_table(all_tables[name]) for name in table_names)
        parts.extend(
            f"![{_markdown_text(titles[name])}]({plot_url}{name}.png)" for name in figure_names
        )
    return "\n\n".join(parts) + "\n"


def render_report(report: StudyReport, format: ReportFormat, request: Request) -> Response:
    if format == "html":
        return html_page(request, to_html(report))
    if format == "markdown":
        text = to_markdown(report, f"/studies/{report.study_id}/plots/")
        return Response(text, media_type="text/markdown; charset=utf-8")
    return JSONResponse(json.loads(report.model_dump_json()))
