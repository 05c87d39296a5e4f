"""Per model version: an offline HTML report and plots at stable URLs."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from service.compression import html_page
from service.deps import PathModelVersionDep, RegistryDep
from service.errors import error_responses
from service.plot_render import plotly_div, plotly_js, to_image
from service.plots import MEDIA_TYPES, ImageFormat, card_figures, find_figure

router = APIRouter(prefix="/models", tags=["models"])


@router.get(
    "/{model_name}/versions/{version}/report",
    summary="One version's report as an offline HTML page",
    responses={**error_responses(404, 422), 200: {"content": {"text/html": {}}}},
)
def version_report(
    request: Request, registry: RegistryDep, model: PathModelVersionDep
) -> HTMLResponse:
    """Headline figures, loss and accuracy curves, the confusion matrix and per-class F1."""
    card = registry.get_card(model.model_name, model.version)
    test = card.metrics.test
    facts = (
        f"<p>{escape(card.architecture)} on {escape(card.dataset.name)}: test accuracy "
        f"{test.accuracy:.4f}, loss {test.loss:.4f}, validation accuracy "
        f"{card.metrics.validation_accuracy:.4f}, {card.parameter_count:,} parameters, "
        f"{card.timings.fit_seconds:.1f} s for {card.timings.epochs_run} epochs.</p>"
    )
    plots = "".join(plotly_div(figure, f"plot-{figure.name}") for figure in card_figures(card))
    return html_page(
        request,
        f"<!doctype html><html><head><meta charset=utf-8><title>{escape(card.model_name)} "
        f"v{card.version}</title><script>{plotly_js()}</script></head><body>"
        f"<h1>{escape(card.model_name)} version {card.version}</h1>{facts}{plots}</body></html>",
    )


@router.get(
    "/{model_name}/versions/{version}/plots/{name}.{image_format}",
    summary="One plot of a version as SVG or PNG: curves, confusion or f1",
    responses={
        **error_responses(404, 422),
        200: {"content": {media_type: {} for media_type in MEDIA_TYPES.values()}},
    },
)
def version_plot(
    registry: RegistryDep, model: PathModelVersionDep, name: str, image_format: ImageFormat
) -> Response:
    """Stable URLs for embedding a version's plots, as `.svg` or as a small `.png`."""
    card = registry.get_card(model.model_name, model.version)
    figure = find_figure(card_figures(card), name)
    return Response(to_image(figure, image_format), media_type=MEDIA_TYPES[image_format])
