"""Per-class evaluation reports of registered versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import QueryModelVersionDep, RegistryDep, resolve_version
from service.errors import error_responses
from service.reports import compare_reports, metrics_report
from service.schemas import MetricsComparison, MetricsReport

router = APIRouter(prefix="/metrics", tags=["metrics"])


@router.get(
    "",
    response_model=MetricsReport,
    summary="Per-class report of a model version",
    responses=error_responses(404, 422),
)
def get_metrics(registry: RegistryDep, model: QueryModelVersionDep) -> MetricsReport:
    """Accuracy, loss, per-class precision/recall/F1/support, macro and weighted averages,
    the confusion matrix with class names, the weak classes, parameter count, training
    time and generalization gap — measured once on the held-out test split."""
    card = registry.get_card(model.model_name, model.version)
    return metrics_report(model.model_name, model.version, card)


@router.get(
    "/compare",
    response_model=MetricsComparison,
    summary="Per-class differences between two versions",
    responses=error_responses(404, 422),
)
def compare_metrics(
    registry: RegistryDep,
    model_name: Annotated[str, Query(description="Model of version `a` (and `b` by default).")],
    a: Annotated[str, Query(description="Version number or alias of the baseline.", max_length=64)],
    b: Annotated[
        str, Query(description="Version number or alias to compare with it.", max_length=64)
    ],
    model_name_b: Annotated[
        str | None, Query(description="Model of version `b`, to compare two models.")
    ] = None,
) -> MetricsComparison:
    """Deltas are `b − a`: positive means `b` is better. Compares versions of one model,
    or two models when `model_name_b` is given (their classes are matched by name)."""
    first = resolve_version(registry, model_name, a)
    second = resolve_version(registry, model_name_b or model_name, b)
    reports = [
        metrics_report(ref.model_name, ref.version, registry.get_card(ref.model_name, ref.version))
        for ref in (first, second)
    ]
    return compare_reports(*reports)
