"""The report's discussion, written from its figures: each sentence states a number
from the report, and a model is called better only when the paired test says so."""

from __future__ import annotations

from trainer.study_report import StudyReport


def _accuracy(report: StudyReport, key: str) -> str:
    interval = report.model(key).test_accuracy
    return f"{interval.estimate:.3f} (95% CI {interval.low:.3f}–{interval.high:.3f})"


def _selections(report: StudyReport) -> list[str]:
    sentences = []
    for stage, winner in report.selections.items():
        if len(winner.candidates) < 2:
            continue
        sentences.append(
            f"Stage {stage}: {winner.reason}. It was chosen on the validation split; its test "
            f"accuracy is reported below but played no part in the choice."
        )
    return sentences


def _comparisons(report: StudyReport) -> list[str]:
    sentences = []
    for comparison in report.comparisons:
        a, b = report.model(comparison.a), report.model(comparison.b)
        sentences.append(
            f"{a.label} ({a.architecture}, {_accuracy(report, a.key)}) vs {b.label} "
            f"({b.architecture}, {_accuracy(report, b.key)}) on the same "
            f"{comparison.mcnemar.only_a_correct + comparison.mcnemar.only_b_correct} "
            f"disagreeing test images: {comparison.verdict}."
        )
    return sentences


def _augmentation(report: StudyReport) -> list[str]:
    sentences = []
    for effect in report.augmentation:
        base, variant = report.model(effect.base), report.model(effect.variant)
        improved = [
            c.class_name for c in effect.per_class if c.significant and c.f1_delta.estimate > 0
        ]
        worsened = [
            c.class_name for c in effect.per_class if c.significant and c.f1_delta.estimate < 0
        ]
        target = (
            f" (targeted at {', '.join(effect.target_classes)})" if effect.target_classes else ""
        )
        direction = (
            "better" if effect.mcnemar.only_b_correct > effect.mcnemar.only_a_correct else "worse"
        )
        overall = (
            f"{direction} overall (McNemar p = {effect.mcnemar.p_value:.3g})"
            if effect.mcnemar.significant
            else f"not significantly different overall (McNemar p = {effect.mcnemar.p_value:.3g})"
        )
        classes = (
            f"F1 rose significantly for {', '.join(improved) or 'no class'} and fell "
            f"significantly for {', '.join(worsened) or 'no class'}; the other classes' changes "
            "are within their 95% intervals"
        )
        sentences.append(
            f"{variant.label}{target}: test accuracy {base.test_accuracy.estimate:.3f} → "
            f"{variant.test_accuracy.estimate:.3f}, {overall}; {classes}."
        )
    return sentences


def _efficiency(report: StudyReport) -> list[str]:
    if len(report.models) < 2:
        return []
    gap = max(report.models, key=lambda m: m.generalization_gap)
    fastest = min(report.models, key=lambda m: m.fit_seconds)
    smallest = min(report.models, key=lambda m: m.parameter_count)
    return [
        f"The largest generalization gap (final train minus validation accuracy) is "
        f"{gap.generalization_gap:.3f}, for {gap.label} ({gap.stage}) on {gap.dataset}.",
        f"The quickest to train was {fastest.label} ({fastest.stage}, {fastest.fit_seconds:.1f} s "
        f"for {fastest.epochs_run} epochs); the smallest is {smallest.label} ({smallest.stage}, "
        f"{smallest.parameter_count:,} parameters).",
    ]


def discuss(report: StudyReport) -> list[str]:
    """Sentences drawn from the report's figures, in the report's order."""
    return _selections(report) + _comparisons(report) + _augmentation(report) + _efficiency(report)
