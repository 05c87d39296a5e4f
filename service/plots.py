"""Plots of reports, defined once as data and drawn two ways.

Each figure is built once from a report or a model card as a ``Figure`` (series and
axes); ``service/plot_render.py`` draws it with Plotly for the interactive offline
HTML page and with matplotlib for static SVG at stable URLs. Static export through
Plotly (kaleido) drives a Chrome/Chromium it must find or download, which the API
image does not carry; matplotlib renders the same figure in-process.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from trainer.card import ModelCard
from trainer.errors import NotFoundError
from trainer.evaluate import ConfusionMatrix
from trainer.progress import EpochProgress
from trainer.study_report import StudyReport

# Static images at stable URLs: SVG for the web, small PNG for Markdown and READMEs.
ImageFormat = Literal["svg", "png"]
MEDIA_TYPES: dict[str, str] = {"svg": "image/svg+xml", "png": "image/png"}


class Series(BaseModel):
    name: str
    kind: Literal["line", "bar", "scatter"]
    x: list[float | str]
    y: list[float]
    text: list[str] | None = None
    sizes: list[float] | None = None
    dashed: bool = False


class Figure(BaseModel):
    name: str = Field(description="Stable: the plot's URL is .../plots/{name}.svg or .png.")
    title: str
    x_label: str
    y_label: str
    series: list[Series] = Field(default_factory=list)
    heatmap: ConfusionMatrix | None = None


class PlotNotFoundError(NotFoundError):
    code = "plot_not_found"


def slug(key: str) -> str:
    return key.replace("/", "-")


def curves(name: str, title: str, history: list[EpochProgress]) -> Figure:
    epochs: list[float | str] = [float(e.epoch) for e in history]
    series = [
        Series(name="train loss", kind="line", x=epochs, y=[e.loss for e in history]),
        Series(name="train accuracy", kind="line", x=epochs, y=[e.accuracy for e in history]),
    ]
    if all(e.val_loss is not None for e in history):
        series.append(
            Series(name="validation loss", kind="line", x=epochs, dashed=True,
                   y=[float(e.val_loss or 0) for e in history])
        )  # fmt: skip
    if all(e.val_accuracy is not None for e in history):
        series.append(
            Series(name="validation accuracy", kind="line", x=epochs, dashed=True,
                   y=[float(e.val_accuracy or 0) for e in history])
        )  # fmt: skip
    return Figure(name=name, title=title, x_label="epoch", y_label="loss / accuracy", series=series)


def confusion(name: str, title: str, matrix: ConfusionMatrix) -> Figure:
    return Figure(
        name=name, title=title, x_label="predicted class", y_label="true class", heatmap=matrix
    )


def f1_bars(
    name: str, title: str, class_names: list[str], models: dict[str, list[float]]
) -> Figure:
    labels: list[float | str] = list(class_names)
    series = [Series(name=label, kind="bar", x=labels, y=f1) for label, f1 in models.items()]
    return Figure(name=name, title=title, x_label="class", y_label="test F1", series=series)


def card_figures(card: ModelCard) -> list[Figure]:
    """The plots of one model version."""
    who = f"{card.model_name} v{card.version}"
    return [
        curves("curves", f"{who}: loss and accuracy by epoch", card.history),
        confusion("confusion", f"{who}: confusion matrix", card.metrics.test.confusion_matrix),
        f1_bars("f1", f"{who}: per-class F1 (test)", card.class_names,
                {who: [c.f1 for c in card.metrics.test.per_class]}),
    ]  # fmt: skip


def study_figures(report: StudyReport) -> list[Figure]:
    """The plots of a study report, in the order the page shows them."""
    figures = [
        Figure(
            name="accuracy_vs_cost",
            title="Test accuracy vs training time (marker area: parameters)",
            x_label="training seconds",
            y_label="test accuracy",
            series=[
                Series(
                    name=f"{model.label} ({model.dataset})", kind="scatter",
                    x=[model.fit_seconds], y=[model.test_accuracy.estimate],
                    text=[model.label],
                    sizes=[float(model.parameter_count)],
                )
                for model in report.models
            ],
        )
    ]  # fmt: skip
    test_sets = sorted({model.test_set for model in report.models})
    for index, test_set in enumerate(test_sets):
        members = [m for m in report.models if m.test_set == test_set]
        figures.append(
            f1_bars(f"f1_{index}", f"Per-class test F1 on {test_set}", members[0].class_names,
                    {m.label: [c.f1 for c in m.per_class] for m in members})
        )  # fmt: skip
    for model in report.models:
        who = f"{model.label} ({model.dataset})"
        figures.append(
            curves(f"curves_{slug(model.key)}", f"{who}: loss and accuracy", model.history)
        )
        figures.append(
            confusion(
                f"confusion_{slug(model.key)}", f"{who}: confusion matrix", model.confusion_matrix
            )
        )
    return figures


def find_figure(figures: list[Figure], name: str) -> Figure:
    for figure in figures:
        if figure.name == name:
            return figure
    raise PlotNotFoundError(
        f"no plot named {name!r}; available: {', '.join(f.name for f in figures)}", plot=name
    )


def study_plot(report: StudyReport, name: str, image_format: ImageFormat) -> bytes:
    from service.plot_render import to_image

    return to_image(find_figure(study_figures(report), name), image_format)
