"""The model card: what a registered version records, as one typed model.

A training run produces a ``TrainingRecord``; the registry adds what only it knows
(version, checksum, file size, creation time) and stores the result as a
``ModelCard`` in ``card.json``. Routes, reports, the CLI and the benchmarks read
typed fields; only the registry reads and writes the file.

Cards carry ``schema_version``. Cards written before it existed (release 0.1.0)
have the same layout and load as version 1; a future layout change adds a step to
``_UPGRADES`` so every card ever written still loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny

from trainer.evaluate import EvaluationReport
from trainer.progress import EpochProgress
from trainer.spec import parse_training_spec
from trainer.spec_base import TrainingSpecBase

CARD_SCHEMA_VERSION = 5


def _parse_spec(value: Any) -> Any:
    # The spec is stored as JSON; parsing it through the union gives back the
    # architecture's own spec class (and its hyperparameter schema).
    return parse_training_spec(value) if isinstance(value, dict) else value


StoredSpec = Annotated[SerializeAsAny[TrainingSpecBase], BeforeValidator(_parse_spec)]


class _CardPart(BaseModel):
    # Unknown keys are kept, not refused: a card written by a newer release still loads.
    model_config = ConfigDict(extra="allow")


class DatasetSample(_CardPart):
    """Which data the version was trained and tested on."""

    name: str
    source: str
    sample_fraction: float
    seed: int
    train_samples: int
    validation_samples: int
    test_samples: int


class CardMetrics(_CardPart):
    test: EvaluationReport = Field(description="Measured once, on the held-out test split.")
    validation: EvaluationReport = Field(description="What model selection may look at.")
    final_train_accuracy: float = Field(
        description="The running training accuracy of the epoch whose weights the model "
        "holds (timings.weights_epoch), as Keras reports it: averaged while the weights "
        "changed, with dropout and augmentation on."
    )
    validation_accuracy: float
    generalization_gap: float = Field(
        description="final_train_accuracy minus validation accuracy: the lab's gap. With "
        "dropout or augmentation it understates how well the model fits its training "
        "images; train_accuracy is the figure to set against validation accuracy."
    )
    train_accuracy: float | None = Field(
        None,
        description="Accuracy on the training split after training, in inference mode as "
        "validation is measured (no dropout, no augmentation): on all of it, or on "
        "train_accuracy_samples of its images drawn at random. None on cards written "
        "before 2026-12-05.",
    )
    train_accuracy_samples: int | None = Field(
        None,
        description="How many training images train_accuracy was measured on: the whole "
        "split up to 2,500 images, a random 2,500 of a larger one. None on older cards, "
        "which measured the whole split.",
    )


class Timings(_CardPart):
    prepare_seconds: float
    fit_seconds: float
    epochs_run: int
    stopped_early: bool
    weights_epoch: int | None = Field(
        None,
        description="The epoch whose weights the model holds: the last one, or with early "
        "stopping the one of the lowest validation loss. None on cards written before "
        "2026-12-05.",
    )
    seconds_per_epoch: float
    evaluate_seconds: float | None = None


class LayerSummary(_CardPart):
    name: str
    layer_type: str
    output_shape: list[int | None]
    parameters: int


class InferenceTiming(_CardPart):
    """Model-call speed measured on the training machine after training."""

    batch1_milliseconds: float = Field(description="Median latency of one image.")
    batch_size: int = Field(
        description="Images per timed batch: 256 network inputs, so 256 images, or 25 for a "
        "model with ten test-time views per image."
    )
    images_per_second: float = Field(description="Throughput on batches of batch_size.")


class Checksum(_CardPart):
    algorithm: Literal["sha256"] = "sha256"
    value: str


class TrainingRecord(_CardPart):
    """What a training run knows about its model, before the registry numbers it."""

    job_id: str | None = None
    architecture: str
    spec: StoredSpec
    dataset: DatasetSample
    class_names: list[str]
    input_shape: tuple[int, int, int]
    parameter_count: int
    augmentation_target_classes: list[str] = Field(default_factory=list)
    metrics: CardMetrics
    history: list[EpochProgress]
    timings: Timings
    library_versions: dict[str, str]
    trained_at: str
    layers: list[LayerSummary] = Field(
        default_factory=list, description="Layers in order with output shapes and parameters."
    )
    test_predictions: list[int] | None = Field(
        None,
        description="Predicted class of every test image, in test-split order: what paired "
        "comparisons between models (McNemar's test) and bootstrap intervals need.",
    )
    inference: InferenceTiming | None = None
    compute_precision: Literal["float32", "mixed_bfloat16"] | None = Field(
        None,
        description="What the layers computed in. With the spec's bfloat16 left empty, "
        "the faster one as measured on the machine that trained (empty on older cards).",
    )


class ModelCard(TrainingRecord):
    """A registered version's card.json."""

    schema_version: int = CARD_SCHEMA_VERSION
    model_name: str
    version: int
    created_at: str
    checksum: Checksum
    model_file: str
    model_file_bytes: int


def _from_0_1_0(raw: dict[str, Any]) -> dict[str, Any]:
    # Release 0.1.0 wrote the version 1 layout without the schema_version field.
    return {**raw, "schema_version": 1}


def _from_1(raw: dict[str, Any]) -> dict[str, Any]:
    # Before version 2, custom_cnn and alexnet always computed in float32; their
    # hyperparameters now have a bfloat16 switch whose default means "if the CPU has
    # it", so an older card states what its model actually did.
    spec = raw.get("spec")
    if isinstance(spec, dict) and spec.get("architecture", "custom_cnn") in (
        "custom_cnn",
        "alexnet",
    ):
        hyperparameters = {"bfloat16": False, **spec.get("hyperparameters", {})}
        raw = {**raw, "spec": {**spec, "hyperparameters": hyperparameters}}
    return {**raw, "schema_version": 2}


def _from_2(raw: dict[str, Any]) -> dict[str, Any]:
    # Before version 3 no model had test-time augmentation; the resnet recipes now
    # default to a mirrored copy, so an older card states that its model had none.
    spec = raw.get("spec")
    if isinstance(spec, dict):
        raw = {**raw, "spec": {"test_time_augmentation": "none", **spec}}
    return {**raw, "schema_version": 3}


def _from_3(raw: dict[str, Any]) -> dict[str, Any]:
    # Before version 4 no model trained with lookahead or alternating flips, and
    # whitened_cnn trained its whitening bias from random convolution filters with one
    # learning rate; its recipe now does the opposite, so an older card says what was.
    spec = raw.get("spec")
    if not isinstance(spec, dict):
        return {**raw, "schema_version": 4}
    augmentation = spec.get("augmentation")
    spec = {"lookahead": False, **spec}
    if isinstance(augmentation, dict):
        spec["augmentation"] = {"alternating_flip": False, **augmentation}
    if spec.get("architecture") == "whitened_cnn":
        before = {"identity_init": False, "bias_gradient_scale": 1.0, "train_whitening_bias": True}
        spec["hyperparameters"] = {**before, **spec.get("hyperparameters", {})}
    return {**raw, "spec": spec, "schema_version": 4}


def _from_4(raw: dict[str, Any]) -> dict[str, Any]:
    # Before version 5, target classes with "enabled": false augmented the targets'
    # images alone; a spec saying so now augments every class, so an older card says
    # which images its model saw augmented.
    spec = raw.get("spec")
    augmentation = spec.get("augmentation") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(augmentation, dict):
        return {**raw, "schema_version": 5}
    if augmentation.get("target_classes") and not augmentation.get("enabled", False):
        augmentation = {**augmentation, "enabled": True, "augmented_classes": "targets"}
        raw = {**raw, "spec": {**spec, "augmentation": augmentation}}
    return {**raw, "schema_version": 5}


# schema_version found in the file → the step that upgrades it by one.
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    0: _from_0_1_0,
    1: _from_1,
    2: _from_2,
    3: _from_3,
    4: _from_4,
}


def upgrade_card(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored card's JSON brought up to the current schema version."""
    version = int(raw.get("schema_version", 0))
    while version < CARD_SCHEMA_VERSION:
        raw = _UPGRADES[version](raw)
        version = int(raw["schema_version"])
    return raw
