"""Reports built from model cards: the per-class report and version comparisons."""

from __future__ import annotations

from service.schemas import (
    ClassDifference,
    MetricsComparison,
    MetricsReport,
    ModelDetail,
    VersionRef,
    VersionSummary,
)
from trainer.card import ModelCard
from trainer.errors import CorruptModelError
from trainer.registry import FileModelRegistry

CHANGE_THRESHOLD = 0.01


def metrics_report(model_name: str, version: int, card: ModelCard) -> MetricsReport:
    """The /metrics body for one version, from the test report in its card."""
    return MetricsReport(
        **card.metrics.test.model_dump(),
        model_name=model_name,
        version=version,
        dataset=card.dataset.name,
        architecture=card.architecture,
        parameter_count=card.parameter_count,
        training_seconds=card.timings.fit_seconds,
        epochs_run=card.timings.epochs_run,
        final_train_accuracy=card.metrics.final_train_accuracy,
        validation_accuracy=card.metrics.validation_accuracy,
        generalization_gap=card.metrics.generalization_gap,
        train_accuracy=card.metrics.train_accuracy,
        history=card.history,
    )


def compare_reports(a: MetricsReport, b: MetricsReport) -> MetricsComparison:
    """Per-class differences from ``a`` to ``b`` (positive deltas: ``b`` is better)."""
    per_class_b = {entry.class_name: entry for entry in b.per_class}
    differences = []
    for entry_a in a.per_class:
        entry_b = per_class_b.get(entry_a.class_name)
        if entry_b is None:
            continue
        differences.append(
            ClassDifference(
                class_name=entry_a.class_name,
                precision_a=entry_a.precision,
                precision_b=entry_b.precision,
                recall_a=entry_a.recall,
                recall_b=entry_b.recall,
                f1_a=entry_a.f1,
                f1_b=entry_b.f1,
                f1_delta=round(entry_b.f1 - entry_a.f1, 6),
                support_a=entry_a.support,
                support_b=entry_b.support,
            )
        )
    return MetricsComparison(
        a=VersionRef(model_name=a.model_name, version=a.version),
        b=VersionRef(model_name=b.model_name, version=b.version),
        accuracy_a=a.accuracy,
        accuracy_b=b.accuracy,
        accuracy_delta=round(b.accuracy - a.accuracy, 6),
        macro_f1_a=a.macro_avg.f1,
        macro_f1_b=b.macro_avg.f1,
        macro_f1_delta=round(b.macro_avg.f1 - a.macro_avg.f1, 6),
        per_class=differences,
        improved_classes=[d.class_name for d in differences if d.f1_delta > CHANGE_THRESHOLD],
        regressed_classes=[d.class_name for d in differences if d.f1_delta < -CHANGE_THRESHOLD],
        weak_classes_a=[weak.class_name for weak in a.weak_classes],
        weak_classes_b=[weak.class_name for weak in b.weak_classes],
    )


def model_detail(registry: FileModelRegistry, model_name: str) -> ModelDetail:
    """A model's live versions with the headline figures from their cards."""
    summary = registry.get_model(model_name)
    aliases_by_version: dict[int, list[str]] = {}
    for alias, version in sorted(summary.aliases.items()):
        aliases_by_version.setdefault(version, []).append(alias)
    versions = []
    for version in summary.versions:
        aliases = aliases_by_version.get(version, [])
        try:
            card = registry.get_card(model_name, version)
        except CorruptModelError:
            # One broken card must not hide the model's other versions.
            versions.append(VersionSummary(version=version, aliases=aliases, corrupt=True))
            continue
        versions.append(
            VersionSummary(
                version=version,
                created_at=card.created_at,
                architecture=card.architecture,
                dataset=card.dataset.name,
                test_accuracy=card.metrics.test.accuracy,
                aliases=aliases,
                job_id=card.job_id,
            )
        )
    return ModelDetail(
        model_name=model_name,
        latest_version=summary.latest_version,
        aliases=summary.aliases,
        versions=versions,
    )
