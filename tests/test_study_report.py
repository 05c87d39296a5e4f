"""The study report on constructed cards: figures come from the cards, verdicts follow
McNemar's test, the discussion states only what the figures say, renderings are whole."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from html import escape
from typing import Any

import numpy as np
import pytest

from service.plot_render import to_image, to_plotly
from service.plots import Figure, Series, study_figures
from service.study_render import tables, to_html, to_markdown
from tests.conftest import CARD_0_1_0, make_record
from trainer.card import ModelCard
from trainer.errors import InvalidInputError
from trainer.evaluate import evaluate_predictions
from trainer.selection import Candidate, pick_best
from trainer.study_discussion import discuss
from trainer.study_report import ReportInput, StudyReport, build_study_report, sample_key
from trainer.study_spec import StageSpec, StageTraining, check_labels
from worker.study_report import true_test_labels

CLASSES = [str(d) for d in range(10)]


def _card(name: str, labels: np.ndarray, predictions: np.ndarray, validation: float) -> ModelCard:
    report = evaluate_predictions(labels, np.eye(10)[predictions], CLASSES)
    record = make_record()
    metrics = record.metrics.model_copy(
        update={"test": report, "validation_accuracy": validation,
                "validation": record.metrics.validation.model_copy(update={"accuracy": validation})}
    )  # fmt: skip
    raw: dict[str, Any] = json.loads(CARD_0_1_0.read_text())
    return ModelCard.model_validate(
        {**raw, **record.model_dump(mode="json", exclude={"metrics"}),
         "metrics": metrics.model_dump(mode="json"), "model_name": name, "version": 1,
         "test_predictions": predictions.tolist()}
    )  # fmt: skip


def _predictions(labels: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    return np.where(wrong, (labels + 1) % 10, labels)


def _build(close_is_a_retrain: bool = True) -> StudyReport:
    labels = true_test_labels(_card("probe", np.zeros(360, int), np.zeros(360, int), 0.5), None)
    positions = np.arange(len(labels))
    strong = _card("strong", labels, _predictions(labels, positions % 10 == 0), 0.85)  # 90%
    weak = _card("weak", labels, _predictions(labels, positions % 4 == 0), 0.90)  # 75%
    close = _card(
        "close", labels, _predictions(labels, (positions % 10 == 0) | (positions == 1)), 0.8
    )
    inputs = [
        ReportInput(key="variations/0", stage="variations", label="strong", card=strong,
                    compared=True),
        ReportInput(key="variations/1", stage="variations", label="weak", card=weak,
                    compared=True),
        ReportInput(key="augmentation/0", stage="augmentation", label="close", card=close,
                    compared=True, base_key="variations/0" if close_is_a_retrain else None),
    ]  # fmt: skip
    winner = pick_best(
        [Candidate(label=i.label, model_name=i.card.model_name, version=1,
                   validation_accuracy=i.card.metrics.validation.accuracy,
                   validation_loss=i.card.metrics.validation.loss) for i in inputs[:2]]
    )  # fmt: skip
    return build_study_report(
        "f" * 32, "constructed", inputs, {sample_key(strong): labels}, {"variations": winner}
    )


@pytest.fixture(scope="module")
def report() -> StudyReport:
    return _build()


def test_figures_are_the_cards_and_verdicts_follow_the_test(report: StudyReport) -> None:
    strong, weak = report.model("variations/0"), report.model("variations/1")
    assert strong.test_accuracy.estimate == 0.9 and weak.test_accuracy.estimate == 0.75
    assert strong.test_accuracy.low < 0.9 < strong.test_accuracy.high
    by_pair = {(c.a, c.b): c for c in report.comparisons}
    big = by_pair[("variations/0", "variations/1")]
    assert big.mcnemar.significant and big.verdict.startswith("strong is better than weak")
    # A retrain and its base are tested once, in the retrains' Holm family, never also
    # among the pairs: two families could give the one pair two verdicts.
    assert ("variations/0", "augmentation/0") not in by_pair
    small = report.augmentation[0].mcnemar
    assert (small.only_a_correct, small.only_b_correct) == (1, 0) and not small.significant
    header, rows = tables(report)["mcnemar"]
    assert [(row[0], row[1], row[header.index("Holm family")]) for row in rows] == [
        ("strong", "weak", "models"),
        ("weak", "close", "models"),
        ("strong", "close", "retrains"),
    ]
    assert rows[2][-1].startswith("no significant difference between strong and close")
    # The winner went by validation (weak: 0.90) although strong is better on the test set.
    assert report.selections["variations"].label == "weak"


def test_the_discussion_states_the_figures(report: StudyReport) -> None:
    text = " ".join(report.discussion)
    # One sentence per test set: each model with what it beats, most accurate first, then
    # the ties; the retrain "close" and its base "strong" only in their own sentence.
    assert (
        "On digits, 2 pairs of models on the same test images (McNemar's exact test, "
        "Holm-adjusted, significant below 0.05; each retrain against its base: below): "
        "strong (0.900) is better than weak (0.750); close (0.897) is better than weak (0.750)."
    ) in report.discussion
    assert "The test split was not consulted" in text
    effect = report.augmentation[0]
    assert effect.base == "variations/0" and effect.variant == "augmentation/0"
    # One more error: the F1 of its true and of its predicted class drop, within noise.
    changed = [c for c in effect.per_class if c.f1_delta.estimate != 0]
    assert len(changed) == 2
    assert all(c.f1_delta.estimate < 0 and not c.significant for c in changed)
    assert "no class's F1 changed significantly" in text
    assert "Holm-adjusted" in text


def test_the_discussion_names_the_ties_with_their_p_values() -> None:
    # Not a retrain, "close" is one more pair of the test set.
    (sentence,) = [s for s in _build(close_is_a_retrain=False).discussion
                   if s.startswith("On digits")]  # fmt: skip
    assert sentence.startswith("On digits, 3 pairs of models on the same test images")
    assert sentence.endswith(
        "; no significant difference between strong (0.900) and close (0.897) "
        "(McNemar p = 1, Holm-adjusted 1 ≥ 0.05)."
    )


def test_the_discussion_says_when_a_retrain_changed_its_schedule_too(
    report: StudyReport,
) -> None:
    base, retrain = report.model("variations/0"), report.model("augmentation/0")
    # The fixture's retrain kept the base's recipe (the card's): nothing to add.
    assert base.lr_schedule == retrain.lr_schedule == "constant"
    assert not any("not augmentation's alone" in s for s in report.discussion)
    changed = report.model_copy(update={"models": [
        base, report.model("variations/1"), retrain.model_copy(update={"lr_schedule": "one_cycle"})
    ]})  # fmt: skip
    (sentence,) = [s for s in discuss(changed) if s.startswith("close:")]
    assert sentence.endswith(
        f"It trained {retrain.epochs_run} epochs with a one-cycle learning-rate schedule, strong "
        f"{base.epochs_run} epochs with a constant one: the difference is not augmentation's "
        "alone."
    )


def test_the_discussion_says_when_only_the_targets_were_augmented(report: StudyReport) -> None:
    retrain, effect = report.model("augmentation/0"), report.augmentation[0]

    def sentence(augmentation: Mapping[str, object], targets: list[str]) -> str:
        models = [m if m is not retrain else m.model_copy(update={"augmentation": augmentation})
                  for m in report.models]  # fmt: skip
        targeted = effect.model_copy(update={"target_classes": targets})
        changed = report.model_copy(update={"models": models, "augmentation": [targeted]})
        (found,) = [s for s in discuss(changed) if s.startswith("close")]
        return found

    alone = {"target_classes": ["3"], "augmented_classes": "targets"}
    assert "(targeted at 3, their images alone augmented)" in sentence(alone, ["3"])
    assert "(targeted at 3)" in sentence({**alone, "augmented_classes": "all"}, ["3"])
    weak = {"target_classes": "weak", "augmented_classes": "targets"}
    assert "so no class was augmented or oversampled" in sentence(weak, [])
    assert "so no class was oversampled)" in sentence({**weak, "augmented_classes": "all"}, [])


def test_the_discussion_warns_when_training_times_span_precisions(report: StudyReport) -> None:
    # The fixture's cards predate compute_precision: nothing to say.
    assert not any("different precisions" in s for s in report.discussion)
    strong, weak, close = report.models
    mixed = report.model_copy(update={"models": [
        strong.model_copy(update={"compute_precision": "mixed_bfloat16"}),
        weak.model_copy(update={"compute_precision": "float32"}),
        close.model_copy(update={"compute_precision": "mixed_bfloat16"}),
    ]})  # fmt: skip
    assert discuss(mixed)[-1] == (
        "Training times compare models that computed in different precisions "
        "(float32: weak; mixed bfloat16: strong, close)."
    )
    same = mixed.model_copy(update={"models": [
        m.model_copy(update={"compute_precision": "float32"}) for m in mixed.models
    ]})  # fmt: skip
    assert not any("different precisions" in s for s in discuss(same))


def test_html_is_offline_and_markdown_links_every_plot(report: StudyReport) -> None:
    page = to_html(report)
    assert "<script src" not in page  # plotly.js is inlined: the page works offline
    assert page.count('<div id="plot-') == len(study_figures(report))
    for sentence in report.discussion:
        assert escape(sentence) in page
    markdown = to_markdown(report, "plots/")
    for figure in study_figures(report):
        assert f"(plots/{figure.name}.png)" in markdown
    assert "| strong | variations | digits |" in markdown
    assert to_image(study_figures(report)[0]).startswith(b"<?xml")
    assert to_image(study_figures(report)[0], "png").startswith(b"\x89PNG\r\n\x1a\n")


def test_the_scatter_numbers_its_points_and_sizes_them_by_parameters(
    report: StudyReport,
) -> None:
    scatter = to_plotly(study_figures(report)[0])["data"]
    assert [trace["name"] for trace in scatter] == [
        "1: strong (digits)", "2: weak (digits)", "3: close (digits)"]  # fmt: skip
    assert [trace["text"] for trace in scatter] == [["1"], ["2"], ["3"]]
    assert [trace["hovertext"] for trace in scatter] == [["strong"], ["weak"], ["close"]]
    # Marker area in proportion to the parameters: a quarter of the largest, half its width.
    small, large = (
        Series(name=name, kind="scatter", x=[1.0], y=[0.5], sizes=[size])
        for name, size in (("small", 1e6), ("large", 4e6))
    )
    figure = Figure(name="sizes", title="", x_label="", y_label="", series=[small, large])
    assert [t["marker"]["size"] for t in to_plotly(figure)["data"]] == [[19.0], [30.0]]


def test_overfitting_is_judged_only_on_training_accuracy_measured_as_validation_is(
    report: StudyReport,
) -> None:
    # The fixture's cards predate train_accuracy: the lab's running gap, and no verdict.
    (lab,) = [s for s in report.discussion if "generalization gaps" in s]
    assert "draws no conclusion on overfitting" in lab
    assert not any("no sign of overfitting" in s for s in report.discussion)
    measured = report.model_copy(update={"models": [
        m.model_copy(update={"train_accuracy": m.validation_accuracy + gap})
        for m, gap in zip(report.models, [0.02, 0.11, -0.01], strict=True)
    ]})  # fmt: skip
    (sentence,) = [s for s in discuss(measured) if s.startswith("Measured alike")]
    validation = measured.model("variations/1").validation_accuracy
    assert sentence == (
        "Measured alike after training (no dropout, no augmentation), training accuracy "
        f"exceeds validation accuracy most for weak on digits: {validation + 0.11:.3f} "
        f"against {validation:.3f}, a gap of 0.110."
    )
    underfit = report.model_copy(update={"models": [
        m.model_copy(update={"train_accuracy": m.validation_accuracy - 0.01})
        for m in report.models
    ]})  # fmt: skip
    assert any("no model's training accuracy exceeds" in s for s in discuss(underfit))


HOSTILE = '</script><script>document.title="XSS"</script><img src=x onerror=alert(1)>$\\x{$'


def test_a_hostile_label_stays_text_in_every_rendering(report: StudyReport) -> None:
    hostile = report.model_copy(update={"models": [
        m.model_copy(update={"label": HOSTILE}) if m.key == "variations/1" else m
        for m in report.models
    ]})  # fmt: skip
    page = to_html(hostile)
    # Neither the tables' escaped text nor the plots' script-safe JSON can end a script.
    assert "</script><script>document.title" not in page and "<img src=x" not in page
    (scatter,) = re.findall(r"Plotly\.newPlot\(\"plot-accuracy_vs_cost\", (\{.*?\})\.data", page)
    names = [trace["name"] for trace in json.loads(scatter)["data"]]
    assert f"2: {HOSTILE} (digits)" in names  # the same label, as text
    markdown = to_markdown(hostile, "plots/")
    assert "<script>" not in markdown and "<img" not in markdown and "&lt;script>" in markdown
    assert "p = 1" in markdown and " ≥ " in markdown  # text that opens no tag stays
    # matplotlib's math mode: a "$" in a label is drawn, not parsed (it raised before).
    for figure in study_figures(hostile):
        assert to_image(figure, "png").startswith(b"\x89PNG")


@pytest.mark.parametrize("label", ["", "x" * 101, "two\nlines", "tab\there"])
def test_a_training_label_is_one_line_of_at_most_100_characters(label: str) -> None:
    stages = [StageSpec(name="base", trainings=[StageTraining(label=label, spec={})])]
    with pytest.raises(InvalidInputError, match="one line of 1 to 100 printable"):
        check_labels(stages)
    check_labels([StageSpec(name="base", trainings=[StageTraining(label="x" * 100, spec={})])])


def test_epochs_are_whole_numbers_on_every_curve(report: StudyReport) -> None:
    (curves, *_) = [figure for figure in study_figures(report) if figure.name.startswith("curves")]
    axis = to_plotly(curves)["layout"]["xaxis"]
    assert axis["tickformat"] == "d" and axis["dtick"] >= 1 and isinstance(axis["dtick"], int)
    scatter = to_plotly(study_figures(report)[0])["layout"]["xaxis"]
    assert "tickformat" not in scatter  # seconds are not counted in whole numbers
