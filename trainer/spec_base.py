"""The fields every training spec shares, and the checks on them.

Each architecture (``trainer/architectures/``) subclasses ``TrainingSpecBase`` with
its own ``architecture`` literal, hyperparameter schema and training defaults — its
recipe; ``trainer/spec.py`` joins them into one union. Free of TensorFlow: the
service imports it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from trainer.datasets import DATASET_NAMES, dataset_info
from trainer.errors import InvalidInputError

# Bounds that keep every number and list a client sends far from an overflow or a 500.
MAX_VERSION = 2**31 - 1
MAX_SEED = 2**32 - 1  # NumPy and Keras seeds are unsigned 32-bit
MAX_TARGET_CLASSES = 100
MAX_TIME_LIMIT_SECONDS = 7 * 24 * 3600.0

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)


def validate_model_name(model_name: str) -> str:
    """Return ``model_name`` if it is a safe registry name, else raise ValueError."""
    if not _MODEL_NAME_RE.fullmatch(model_name) or ".." in model_name:
        raise ValueError(
            f"model name {model_name!r} is not allowed: use 1-64 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit, e.g. 'cifar10-custom'"
        )
    return model_name


class ModelReference(BaseModel):
    """A registered model version; ``version`` may be a number or an alias."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    version: (
        Annotated[int, Field(ge=1, le=MAX_VERSION)] | Annotated[str, Field(max_length=64)] | None
    ) = Field(None, description="Version number or alias; empty means production, else latest.")

    @field_validator("model_name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return validate_model_name(value)


class AugmentationSpec(BaseModel):
    """Random image transforms applied while training (the lab's settings by default)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Augment every training image. Target classes turn it on: augmenting "
        "only some classes makes the transforms themselves a sign of those classes.",
    )
    rotation_degrees: float = Field(15.0, ge=0, le=180, description="Random rotation, ±degrees.")
    width_shift: float = Field(0.1, ge=0, lt=1, description="Random horizontal shift fraction.")
    height_shift: float = Field(0.1, ge=0, lt=1, description="Random vertical shift fraction.")
    zoom: float = Field(0.1, ge=0, lt=1, description="Random zoom fraction.")
    cutout: float = Field(
        0.0,
        ge=0,
        le=0.75,
        description="Cutout: a random square this fraction of the image's side is set to the "
        "image's mean colour; 0 turns it off (the lab had none).",
    )
    horizontal_flip: bool | None = Field(
        None,
        description="Random left-right flips; empty means on for natural images and off for "
        "digit datasets, where a flip changes the meaning.",
    )
    whole_pixel_shifts: bool = Field(
        False,
        description="Shift by whole pixels over a mirrored border, as airbench's random "
        "crops, instead of the lab's fractional shifts, which interpolate (blur) the image "
        "and repeat its edge pixels.",
    )
    alternating_flip: bool = Field(
        False,
        description="Where images are flipped, flip a random half in the first epoch and then "
        "each image the other way from its previous epoch (airbench), so that every two "
        "epochs see both mirrors of every image.",
    )
    target_classes: (
        Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=MAX_TARGET_CLASSES)]
        | Literal["weak"]
    ) = Field(
        default_factory=list,
        description="Class names whose samples appear oversample_factor times, each time as "
        "a new random view, or 'weak' for the weak classes of reference_model. Every image "
        "is augmented then, of every class ('enabled' is set), unless augmented_classes "
        "says 'targets'.",
    )
    oversample_factor: int = Field(
        2, ge=1, le=10, description="Each target-class sample appears this many times."
    )
    augmented_classes: Literal["all", "targets"] = Field(
        "all",
        description="Which classes' images are augmented: 'all', or only the 'targets' "
        "(target_classes, originals and copies), as the lab's weak-class retrain did and as "
        "models with target classes trained before card schema 5. 'targets' makes the "
        "transforms a sign of those classes, and their recall on clean test images falls.",
    )
    reference_model: ModelReference | None = Field(
        None, description="The model whose weak classes 'weak' means."
    )

    @model_validator(mode="after")
    def _check_targets(self) -> AugmentationSpec:
        if self.target_classes == "weak" and self.reference_model is None:
            raise ValueError("target_classes 'weak' needs a reference_model to find them")
        if self.augmented_classes == "targets" and not self.target_classes:
            raise ValueError("augmented_classes 'targets' needs target_classes to augment")
        return self

    @model_validator(mode="after")
    def _targets_augment_every_class(self) -> AugmentationSpec:
        # Set rather than rejected when false: specs stored before this rule said
        # "enabled": false beside their targets, and they must still load.
        if self.target_classes:
            self.enabled = True
        return self


TestTimeAugmentation = Literal["none", "flip", "shifts", "flip_and_shifts"]
TEST_TIME_AUGMENTATION_DESCRIPTION = (
    "Classify each image by the mean prediction over transformed copies, built into the "
    "registered model: 'flip' adds its left-right mirror ({flip}), 'shifts' its four "
    "one-pixel shifts, 'flip_and_shifts' both. Inference does 2, 5 or 10 times the work."
)


class TrainingSpecBase(BaseModel):
    """What every architecture's spec has; subclasses add ``hyperparameters`` and defaults."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        description="Which dataset to train on.", json_schema_extra={"enum": list(DATASET_NAMES)}
    )
    sample_fraction: float = Field(
        1.0, gt=0, le=1, description="Stratified fraction of each class kept (train and test)."
    )
    seed: int = Field(
        42, ge=0, le=MAX_SEED, description="Seeds sampling, splits, shuffling and weights."
    )
    epochs: int = Field(10, ge=1, le=500)
    batch_size: int = Field(64, ge=1, le=4096)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0, le=1, description="Decoupled weight decay (adamw, sgd).")
    lr_schedule: Literal["constant", "one_cycle", "cosine"] = Field(
        "constant", description="Learning-rate schedule over all training steps."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    lookahead: bool = Field(
        False,
        description="Average the weights towards a slow copy every few steps, more strongly "
        "as training ends, and keep the slow weights (hlb-cifar10's and airbench's lookahead).",
    )
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="Stratified share of the sampled training data held out."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, le=500, description="Stop after this many epochs without val_loss improving."
    )
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)
    test_time_augmentation: TestTimeAugmentation = Field(
        "none", description=TEST_TIME_AUGMENTATION_DESCRIPTION.format(flip="not for digits")
    )
    time_limit_seconds: float | None = Field(
        None,
        # Left out when unset: a runtime limit, not part of the recipe that cards store.
        exclude_if=lambda value: value is None,
        gt=0,
        le=MAX_TIME_LIMIT_SECONDS,
        description="Wall-time limit of the job; empty means the service's default. The "
        "service refuses more than its configured maximum.",
    )
    model_name: str | None = Field(
        None, description="Registry name for the result; empty means '{dataset}-{architecture}'."
    )

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, value: str) -> str:
        try:
            return dataset_info(value).name
        except InvalidInputError as error:
            raise PydanticCustomError("unknown_dataset", error.message) from None

    @field_validator("model_name")
    @classmethod
    def _check_model_name(cls, value: str | None) -> str | None:
        return None if value is None else validate_model_name(value)

    @model_validator(mode="after")
    def _mirror_only_where_it_keeps_the_class(self) -> TrainingSpecBase:
        if "flip" in self.test_time_augmentation and not dataset_info(self.dataset).flip_safe:
            raise ValueError(
                f"test_time_augmentation {self.test_time_augmentation!r} mirrors images, which "
                f"changes what a {self.dataset} image shows; use 'shifts' or 'none'"
            )
        return self

    @property
    def registered_name(self) -> str:
        return self.model_name or f"{self.dataset}-{self.architecture}".replace("_", "-")

    architecture: str
    hyperparameters: BaseModel


# Shared by the architectures' hyperparameter schemas.
PositiveWidth = Annotated[int, Field(ge=1, le=2048)]
DropoutRate = Annotated[float, Field(ge=0.0, lt=1.0)]
