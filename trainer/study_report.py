"""The study report as data: every figure comes from a model card or is computed
from the cards' test predictions and the test labels; nothing is typed in.

Comparisons are paired on the same test images: models are compared only when they
were tested on the same sample (dataset, fraction, seed). The text calls a model
"better" only when McNemar's exact test is significant at ``ALPHA``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
from pydantic import BaseModel, Field

from trainer.card import LayerSummary, ModelCard
from trainer.evaluate import ClassMetrics, ConfusionMatrix
from trainer.progress import EpochProgress
from trainer.selection import Winner
from trainer.statistics import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    IntArray,
    Interval,
    McNemarResult,
    accuracy_interval,
    f1_delta_intervals,
    mcnemar_exact,
    with_holm,
)

METHOD = (
    "Test accuracy intervals are 95% percentile-bootstrap intervals over the test images. "
    "Pairs of models are compared with McNemar's exact test on the same test images; the "
    "pairwise tests, and separately the before/after augmentation tests, are Holm-adjusted "
    "as a family (a retrain and its base are in the second family only), and a model is "
    "called better only when the adjusted p is below alpha. "
    "Per-class F1 changes carry paired-bootstrap 95% intervals, not adjusted for the number "
    "of classes: read a single highlighted class with that in mind. "
    "Each model was trained once, so these tests hold its weights fixed: they say whether "
    "two trained models differ on these test images, not whether their recipes would when "
    "trained again with other seeds, which one run per recipe cannot measure."
)
LABELS_SOURCE = (
    "True test labels are recomputed from the dataset sample (dataset, sample fraction and "
    "seed, with the same stratified split training used) and checked against each card: the "
    "per-class counts must equal the confusion matrix's row sums and the accuracy of the "
    "stored predictions must equal the card's test accuracy."
)


class ReportModel(BaseModel):
    """One trained model with the figures its card holds and its accuracy interval."""

    key: str = Field(description="'{stage}/{index}': unique within the study.")
    stage: str
    label: str
    model_name: str
    version: int
    architecture: str
    dataset: str
    test_set: str = Field(description="Models with the same test_set saw the same test images.")
    hyperparameters: dict[str, object]
    augmentation_target_classes: list[str]
    augmented: bool
    augmentation: dict[str, object] = Field(description="The training spec's augmentation.")
    parameter_count: int
    model_file_bytes: int
    layers: list[LayerSummary]
    test_accuracy: Interval
    test_loss: float
    validation_accuracy: float
    validation_loss: float
    final_train_accuracy: float
    generalization_gap: float = Field(
        description="The lab's: the last epoch's running "
        "training accuracy minus validation accuracy."
    )
    train_accuracy: float | None = Field(
        None, description="The training split in inference mode, as validation is measured."
    )
    fit_seconds: float
    epochs_run: int
    lr_schedule: str | None = Field(
        None,
        description="The training spec's learning-rate schedule; empty in reports written "
        "before it was recorded.",
    )
    inference_batch1_milliseconds: float | None
    compute_precision: str | None = Field(
        None, description="float32 or mixed_bfloat16; empty for cards that predate it."
    )
    class_names: list[str]
    per_class: list[ClassMetrics]
    confusion_matrix: ConfusionMatrix
    history: list[EpochProgress]


class Comparison(BaseModel):
    """Two models on the same test images: McNemar's exact test and the verdict."""

    a: str
    b: str
    test_set: str
    accuracy_a: float
    accuracy_b: float
    mcnemar: McNemarResult
    verdict: str


class ClassChange(BaseModel):
    class_name: str
    precision_before: float
    precision_after: float
    recall_before: float
    recall_after: float
    f1_before: float
    f1_after: float
    f1_delta: Interval
    significant: bool = Field(description="The delta's 95% interval excludes zero.")


class AugmentationEffect(BaseModel):
    """A retrain of an earlier winner compared class by class with it."""

    base: str
    variant: str
    target_classes: list[str]
    per_class: list[ClassChange]
    mcnemar: McNemarResult


class StudyReport(BaseModel):
    study_id: str
    name: str | None
    alpha: float = ALPHA
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES
    labels_source: str = LABELS_SOURCE
    method: str = METHOD
    models: list[ReportModel]
    selections: dict[str, Winner] = Field(description="Stage name → its winner and why.")
    comparisons: list[Comparison]
    augmentation: list[AugmentationEffect]
    discussion: list[str]

    def model(self, key: str) -> ReportModel:
        return next(entry for entry in self.models if entry.key == key)


class ReportInput(BaseModel):
    """One model of the study to report on, with where it came from."""

    key: str
    stage: str
    label: str
    card: ModelCard
    compared: bool = Field(description="Part of the pairwise comparisons (a stage's winner).")
    base_key: str | None = Field(None, description="The model it retrained, if any.")


def sample_key(card: ModelCard) -> str:
    return f"{card.dataset.name}@{card.dataset.sample_fraction:g}/seed{card.dataset.seed}"


def check_labels(card: ModelCard, labels: IntArray) -> None:
    """Raise ValueError unless ``labels`` are the test labels the card was scored on."""
    predictions = np.asarray(card.test_predictions)
    rows = [sum(row) for row in card.metrics.test.confusion_matrix.matrix]
    counts = np.bincount(labels, minlength=len(card.class_names)).tolist()
    accuracy = round(float(np.mean(predictions == labels)), 6)
    if counts != rows or accuracy != card.metrics.test.accuracy:
        raise ValueError(
            f"{card.model_name} v{card.version}: the recomputed test labels do not match its "
            f"card (class counts {counts} vs {rows}, accuracy {accuracy} vs "
            f"{card.metrics.test.accuracy}); was the dataset file changed since training?"
        )


def _report_model(entry: ReportInput, labels: IntArray) -> ReportModel:
    card = entry.card
    hyperparameters = card.spec.hyperparameters.model_dump(mode="json")
    return ReportModel(
        key=entry.key,
        stage=entry.stage,
        label=entry.label,
        model_name=card.model_name,
        version=card.version,
        architecture=card.architecture,
        dataset=card.dataset.name,
        test_set=sample_key(card),
        hyperparameters=hyperparameters,
        augmentation_target_classes=card.augmentation_target_classes,
        augmented=card.spec.augmentation.enabled,
        augmentation=card.spec.augmentation.model_dump(mode="json"),
        parameter_count=card.parameter_count,
        model_file_bytes=card.model_file_bytes,
        layers=card.layers,
        test_accuracy=accuracy_interval(labels, np.asarray(card.test_predictions)),
        test_loss=card.metrics.test.loss,
        validation_accuracy=card.metrics.validation.accuracy,
        validation_loss=card.metrics.validation.loss,
        final_train_accuracy=card.metrics.final_train_accuracy,
        generalization_gap=card.metrics.generalization_gap,
        train_accuracy=card.metrics.train_accuracy,
        fit_seconds=card.timings.fit_seconds,
        epochs_run=card.timings.epochs_run,
        lr_schedule=card.spec.lr_schedule,
        inference_batch1_milliseconds=card.inference.batch1_milliseconds
        if card.inference
        else None,
        compute_precision=card.compute_precision,
        class_names=card.class_names,
        per_class=card.metrics.test.per_class,
        confusion_matrix=card.metrics.test.confusion_matrix,
        history=card.history,
    )


def describe_p(test: McNemarResult) -> str:
    """'p = …' with the Holm-adjusted value that decided, when there is one."""
    text = f"McNemar p = {test.p_value:.3g}"
    if test.p_value_holm is not None:
        text += f", Holm-adjusted {test.p_value_holm:.3g}"
    return f"{text} {'<' if test.significant else '≥'} {test.alpha}"


def verdict(a: ReportModel, b: ReportModel, test: McNemarResult) -> str:
    where = f"on {a.dataset}"
    if not test.significant:
        return (
            f"no significant difference between {a.label} and {b.label} {where} "
            f"({describe_p(test)})"
        )
    better, worse = (a, b) if test.only_a_correct > test.only_b_correct else (b, a)
    return f"{better.label} is better than {worse.label} {where} ({describe_p(test)})"


def build_study_report(
    study_id: str,
    name: str | None,
    inputs: Sequence[ReportInput],
    labels_by_test_set: dict[str, IntArray],
    selections: dict[str, Winner],
) -> StudyReport:
    """The report of a finished study from its models' cards and the true test labels."""
    from trainer.study_discussion import discuss

    for entry in inputs:
        check_labels(entry.card, labels_by_test_set[sample_key(entry.card)])
    models = [_report_model(e, labels_by_test_set[sample_key(e.card)]) for e in inputs]
    predictions = {e.key: np.asarray(e.card.test_predictions) for e in inputs}
    compared = [m for m, e in zip(models, inputs, strict=True) if e.compared]
    # A retrain and its base are tested once, in the augmentation family below: in both
    # families one pair could read "better" there and "no difference" here.
    retrains = {frozenset((e.key, e.base_key)) for e in inputs if e.base_key is not None}
    pairs = [
        (a, b)
        for a, b in combinations(compared, 2)
        if a.test_set == b.test_set and frozenset((a.key, b.key)) not in retrains
    ]
    # One family: every pairwise test is Holm-adjusted, so "better" anywhere in the report
    # keeps the chance of any false claim at alpha.
    tests = with_holm(
        [
            mcnemar_exact(labels_by_test_set[a.test_set], predictions[a.key], predictions[b.key])
            for a, b in pairs
        ]
    )
    comparisons = [
        Comparison(
            a=a.key,
            b=b.key,
            test_set=a.test_set,
            accuracy_a=a.test_accuracy.estimate,
            accuracy_b=b.test_accuracy.estimate,
            mcnemar=test,
            verdict=verdict(a, b, test),
        )
        for (a, b), test in zip(pairs, tests, strict=True)
    ]
    effects = []
    by_key = {m.key: m for m in models}
    for entry in inputs:
        base = by_key.get(entry.base_key or "")
        variant = by_key[entry.key]
        if base is None or base.test_set != variant.test_set:
            continue
        labels = labels_by_test_set[base.test_set]
        deltas = f1_delta_intervals(
            labels, predictions[base.key], predictions[variant.key], len(base.class_names)
        )
        changes = [
            ClassChange(
                class_name=before.class_name,
                precision_before=before.precision,
                precision_after=after.precision,
                recall_before=before.recall,
                recall_after=after.recall,
                f1_before=before.f1,
                f1_after=after.f1,
                f1_delta=delta,
                significant=delta.low > 0 or delta.high < 0,
            )
            for before, after, delta in zip(base.per_class, variant.per_class, deltas, strict=True)
        ]
        effects.append(
            AugmentationEffect(
                base=base.key,
                variant=variant.key,
                target_classes=variant.augmentation_target_classes,
                per_class=changes,
                mcnemar=mcnemar_exact(labels, predictions[base.key], predictions[variant.key]),
            )
        )
    adjusted = with_holm([effect.mcnemar for effect in effects])
    effects = [e.model_copy(update={"mcnemar": t}) for e, t in zip(effects, adjusted, strict=True)]
    report = StudyReport(
        study_id=study_id,
        name=name,
        models=models,
        selections=selections,
        comparisons=comparisons,
        augmentation=effects,
        discussion=[],
    )
    return report.model_copy(update={"discussion": discuss(report)})
