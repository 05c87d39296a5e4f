"""The report's discussion, written from its figures: each sentence states a number
from the report, and a model is called better only when the paired test says so."""

from __future__ import annotations

from trainer.study_report import Comparison, ReportModel, StudyReport, describe_p


def _selections(report: StudyReport) -> list[str]:
    sentences = []
    for stage, winner in report.selections.items():
        if len(winner.candidates) < 2:
            continue
        sentences.append(
            f"Stage {stage}: {winner.reason}. The test split was not consulted: its test "
            f"accuracy, reported below, played no part in the choice."
        )
    return sentences


def _comparisons(report: StudyReport) -> list[str]:
    """One sentence per test set: who is better than whom, then the pairs that tie.

    A sentence per pair read as a wall of near-identical lines (ten pairs for the lab's
    five CIFAR-10 models); each pair's counts and p-values stay in the report's table.
    """
    # A retrain and its base are not among the pairs: their test is in the augmentation
    # family, and their sentence follows.
    with_retrains = {report.model(e.base).test_set for e in report.augmentation}
    by_test_set: dict[str, list[Comparison]] = {}
    for comparison in report.comparisons:
        by_test_set.setdefault(comparison.test_set, []).append(comparison)
    return [
        _test_set_sentence(report, pairs, test_set in with_retrains)
        for test_set, pairs in by_test_set.items()
    ]


def _test_set_sentence(report: StudyReport, pairs: list[Comparison], retrained: bool) -> str:
    def accuracy(key: str) -> float:
        return report.model(key).test_accuracy.estimate

    def named(key: str) -> str:
        return f"{report.model(key).label} ({accuracy(key):.3f})"

    better_than: dict[str, list[str]] = {}
    ties = []
    for pair in pairs:
        test = pair.mcnemar
        if not test.significant:
            ties.append(f"{named(pair.a)} and {named(pair.b)} ({describe_p(test)})")
            continue
        a_better = test.only_a_correct > test.only_b_correct
        better, worse = (pair.a, pair.b) if a_better else (pair.b, pair.a)
        better_than.setdefault(better, []).append(worse)
    # The most accurate first, so the sentence reads as a ranking.
    wins = []
    for better in sorted(better_than, key=accuracy, reverse=True):
        beaten = sorted(better_than[better], key=accuracy, reverse=True)
        wins.append(f"{named(better)} is better than {_listed([named(k) for k in beaten])}")
    if ties:
        wins.append(f"no significant difference between {'; '.join(ties)}")
    count = "one pair" if len(pairs) == 1 else f"{len(pairs)} pairs"
    retrains = "; each retrain against its base: below" if retrained else ""
    return (
        f"On {report.model(pairs[0].a).dataset}, {count} of models on the same test images "
        f"(McNemar's exact test, Holm-adjusted, significant below {pairs[0].mcnemar.alpha}"
        f"{retrains}): {'; '.join(wins)}."
    )


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _recipe_change(base: ReportModel, variant: ReportModel) -> str:
    """What else the retrain changed, so its delta is not read as augmentation's alone."""
    before = (base.epochs_run, base.lr_schedule)
    after = (variant.epochs_run, variant.lr_schedule)
    if None in (base.lr_schedule, variant.lr_schedule) or before == after:
        return ""
    return (
        f" It trained {variant.epochs_run} epochs with a {_schedule(variant.lr_schedule)} "
        f"learning-rate schedule, {base.label} {base.epochs_run} epochs with a "
        f"{_schedule(base.lr_schedule)} one: the difference is not augmentation's alone."
    )


def _schedule(name: str | None) -> str:
    # The spec's identifier ("one_cycle") is for machines; a sentence says "one-cycle".
    return (name or "").replace("_", "-")


def _augmentation(report: StudyReport) -> list[str]:
    sentences = []
    for effect in report.augmentation:
        base, variant = report.model(effect.base), report.model(effect.variant)
        significant = [c for c in effect.per_class if c.significant]
        improved = [c.class_name for c in significant if c.f1_delta.estimate > 0]
        worsened = [c.class_name for c in significant if c.f1_delta.estimate < 0]
        only_targets = variant.augmentation.get("augmented_classes") == "targets"
        if effect.target_classes:
            alone = ", their images alone augmented" if only_targets else ""
            target = f" (targeted at {', '.join(effect.target_classes)}{alone})"
        elif variant.augmentation.get("target_classes") == "weak":
            # "weak" resolved to no class: no image was oversampled, and with the
            # targets' images alone augmented, none was augmented either.
            left_out = "augmented or oversampled" if only_targets else "oversampled"
            target = f" (no class of the reference was weak, so no class was {left_out})"
        else:
            target = ""
        test = effect.mcnemar
        direction = "better" if test.only_b_correct > test.only_a_correct else "worse"
        overall = (
            f"{direction} overall ({describe_p(test)})"
            if test.significant
            else f"not significantly different overall ({describe_p(test)})"
        )
        if improved or worsened:
            classes = (
                f"F1 rose significantly for {', '.join(improved) or 'no class'} and fell "
                f"significantly for {', '.join(worsened) or 'no class'}"
            )
        else:
            classes = "no class's F1 changed significantly (every 95% interval includes zero)"
        sentences.append(
            f"{variant.label}{target}: test accuracy {base.test_accuracy.estimate:.3f} → "
            f"{variant.test_accuracy.estimate:.3f}, {overall}; {classes}."
            + _recipe_change(base, variant)
        )
    return sentences


def _fit(report: StudyReport) -> str:
    """How far training accuracy runs ahead of validation accuracy, measured alike."""
    measured = {m.key: m.train_accuracy for m in report.models if m.train_accuracy is not None}
    if len(measured) < len(report.models):
        # The running figure, with dropout and augmentation on, reads low: a negative gap
        # is what it gives, and no evidence against overfitting.
        lab = max(report.models, key=lambda m: m.generalization_gap)
        return (
            f"The largest of the lab's generalization gaps is {lab.generalization_gap:.3f}, "
            f"for {lab.label}: the last epoch's running training accuracy, taken with dropout "
            "and augmentation on, minus validation accuracy. Some cards predate training "
            "accuracy measured as validation is, so the report draws no conclusion on "
            "overfitting from it."
        )
    gap = {m.key: measured[m.key] - m.validation_accuracy for m in report.models}
    widest = max(report.models, key=lambda m: gap[m.key])
    if gap[widest.key] <= 0:
        return (
            "Measured alike after training (no dropout, no augmentation), no model's "
            "training accuracy exceeds its validation accuracy (the widest gap is "
            f"{gap[widest.key]:.3f}, for {widest.label})."
        )
    return (
        f"Measured alike after training (no dropout, no augmentation), training accuracy "
        f"exceeds validation accuracy most for {widest.label} on {widest.dataset}: "
        f"{measured[widest.key]:.3f} against {widest.validation_accuracy:.3f}, a gap of "
        f"{gap[widest.key]:.3f}."
    )


def _efficiency(report: StudyReport) -> list[str]:
    if len(report.models) < 2:
        return []
    fastest = min(report.models, key=lambda m: m.fit_seconds)
    smallest = min(report.models, key=lambda m: m.parameter_count)
    return [
        _fit(report),
        f"The quickest to train was {fastest.label} ({fastest.fit_seconds:.1f} s for "
        f"{fastest.epochs_run} epochs); the smallest is {smallest.label} "
        f"({smallest.parameter_count:,} parameters).",
        *_mixed_precisions(report),
    ]


def _mixed_precisions(report: StudyReport) -> list[str]:
    # bfloat16 can train 1.4x faster or 1.6x slower than float32 depending on the CPU:
    # training times across precisions are not a like-for-like comparison.
    by_precision: dict[str, list[str]] = {}
    for model in report.models:
        if model.compute_precision is not None:
            by_precision.setdefault(model.compute_precision, []).append(model.label)
    if len(by_precision) < 2:
        return []
    groups = "; ".join(
        f"{precision.replace('_', ' ')}: {', '.join(labels)}"
        for precision, labels in sorted(by_precision.items())
    )
    return [f"Training times compare models that computed in different precisions ({groups})."]


def discuss(report: StudyReport) -> list[str]:
    """Sentences drawn from the report's figures, in the report's order."""
    return _selections(report) + _comparisons(report) + _augmentation(report) + _efficiency(report)
