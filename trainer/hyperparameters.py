"""Typed hyperparameter schemas for every architecture, free of TensorFlow.

The service imports these to validate and document job requests, so this
module must stay importable without loading TensorFlow.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

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

    conv_filters: tuple[PositiveWidth, PositiveWidth, PositiveWidth, PositiveWidth, PositiveWidth] = (
        Field((32, 64, 128, 128, 64), description="Filters of the five convolutions.")
    )
    dense_units: tuple[PositiveWidth, PositiveWidth] = Field(
        (256, 128), description="Units of the two hidden dense layers."
    )
    dropout_rate: DropoutRate = Field(0.5, description="Dropout after each hidden dense layer.")
    batch_norm: bool = Field(False, description="Batch normalization after each convolution.")


class ResNetHyperparameters(_Hyperparameters):
    """A small residual network (ResNet-9 style) with batch normalization."""

    stem_filters: PositiveWidth = Field(32, description="Filters of the stem convolution.")
    stage_filters: list[PositiveWidth] = Field(
        default_factory=lambda: [64, 128, 256],
        min_length=1,
        max_length=4,
        description="Filters of each stage; every stage halves the resolution.",
    )
    residual_stages: list[bool] = Field(
        default_factory=lambda: [True, False, True],
        description="Whether each stage ends with a two-convolution residual block.",
    )
    dropout_rate: DropoutRate = Field(0.0, description="Dropout before the classifier.")
