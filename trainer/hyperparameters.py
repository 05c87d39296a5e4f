"""Typed hyperparameter schemas for every architecture, free of TensorFlow.

The service imports these to validate and document job requests, so this
module must stay importable without loading TensorFlow.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveWidth = Annotated[int, Field(ge=1, le=2048)]
DropoutRate = Annotated[float, Field(ge=0.0, lt=1.0)]


class _Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CustomCnnHyperparameters(_Hyperparameters):
    """The lab's configurable CNN; the defaults build the lab's model exactly."""

    filters1: PositiveWidth = Field(32, description="Filters of the first convolution.")
    filters2: PositiveWidth = Field(64, description="Filters of the second convolution.")
    extra_conv_filters: list[PositiveWidth] = Field(
        default_factory=list,
        max_length=4,
        description="Filters of further Conv → MaxPool blocks after the second one.",
    )
    dense_units: PositiveWidth = Field(128, description="Units of the hidden dense layer.")
    kernel_size: Annotated[int, Field(ge=1, le=7)] = Field(3, description="Convolution kernel.")
    dropout_rate: DropoutRate = Field(0.25, description="Dropout after the conv stack and dense.")
    batch_norm: bool = Field(False, description="Batch normalization after each convolution.")


class AlexNetHyperparameters(_Hyperparameters):
    """The lab's AlexNet-inspired CNN: five 3×3 convolutions, two dense layers."""

    conv_filters: tuple[
        PositiveWidth, PositiveWidth, PositiveWidth, PositiveWidth, PositiveWidth
    ] = Field((32, 64, 128, 128, 64), description="Filters of the five convolutions.")
    dense_units: tuple[PositiveWidth, PositiveWidth] = Field(
        (256, 128), description="Units of the two hidden dense layers."
    )
    dropout_rate: DropoutRate = Field(0.5, description="Dropout after each hidden dense layer.")
    batch_norm: bool = Field(False, description="Batch normalization after each convolution.")


class ResNetHyperparameters(_Hyperparameters):
    """A small residual network (ResNet-9 style) with batch normalization.

    The defaults reach about 0.84 test accuracy on the 25% CIFAR-10 sample in
    16 epochs (about 6 minutes on 2 CPU cores) with the training settings of
    ``bench/strong_model.py``; docs/benchmarks.md has the measured figures.
    """

    stem_filters: PositiveWidth = Field(32, description="Filters of the stem convolution.")
    stage_filters: list[PositiveWidth] = Field(
        default_factory=lambda: [64, 128, 256],
        min_length=1,
        max_length=4,
        description="Filters of each stage; every stage halves the resolution.",
    )
    residual_stages: list[bool] = Field(
        default_factory=lambda: [True, False, True],
        max_length=4,
        description="Whether each stage ends with a two-convolution residual block; "
        "stages beyond the list have none.",
    )
    dropout_rate: DropoutRate = Field(0.0, description="Dropout before the classifier.")
    logit_scale: float = Field(
        0.125,
        gt=0,
        le=1,
        description="Multiplies the logits before the softmax: a softer start that lets "
        "SGD take the high peak learning rate of a one-cycle schedule.",
    )
    batch_norm_momentum: float = Field(
        0.9,
        ge=0.0,
        lt=1.0,
        description="Momentum of the batch-norm moving statistics; 0.9 keeps them current "
        "in runs of only a few thousand steps.",
    )
    bfloat16: bool | None = Field(
        None,
        description="Mixed precision: compute in bfloat16, keep weights and the softmax in "
        "float32. About 1.5x faster on CPUs with AMX or AVX-512 BF16, slower elsewhere; "
        "empty means on exactly when the CPU has them.",
    )

    @model_validator(mode="after")
    def _residual_stages_fit(self) -> ResNetHyperparameters:
        if len(self.residual_stages) > len(self.stage_filters):
            raise ValueError(
                f"residual_stages has {len(self.residual_stages)} entries but stage_filters "
                f"only {len(self.stage_filters)}: give at most one flag per stage"
            )
        return self
