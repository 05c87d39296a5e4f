"""alexnet: the lab's AlexNet-inspired CNN."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainer.architectures.base import (
    BFLOAT16_DESCRIPTION,
    ArchitectureDefinition,
    CostTracer,
    ModelCost,
    Shape,
    compute_dtype,
    conv_block,
)
from trainer.spec_base import DropoutRate, PositiveWidth, TrainingSpecBase

# Max-pooling follows these convolutions (1-based), as in the lab's model.
_POOL_AFTER = (1, 2, 5)


class AlexNetHyperparameters(BaseModel):
    """The lab's AlexNet-inspired CNN: five 3×3 convolutions, two dense layers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conv_filters: tuple[
        PositiveWidth, PositiveWidth, PositiveWidth, PositiveWidth, PositiveWidth
    ] = Field((32, 64, 128, 128, 64), description="Filters of the five convolutions.")
    dense_units: tuple[PositiveWidth, PositiveWidth] = Field(
        (256, 128), description="Units of the two hidden dense layers."
    )
    dropout_rate: DropoutRate = Field(0.5, description="Dropout after each hidden dense layer.")
    batch_norm: bool = Field(False, description="Batch normalization after each convolution.")
    bfloat16: bool | None = Field(None, description=BFLOAT16_DESCRIPTION)


class AlexNetSpec(TrainingSpecBase):
    """The lab's AlexNet-inspired CNN: five 3×3 convolutions, pooling after 1, 2 and 5.

    Two dense layers with dropout follow (611,210 parameters on CIFAR-10); training
    defaults are the lab's: Adam at 1e-3, batch 64, no augmentation.
    """

    architecture: Literal["alexnet"] = "alexnet"
    hyperparameters: AlexNetHyperparameters = Field(default_factory=AlexNetHyperparameters)


def build(hyperparameters: AlexNetHyperparameters, input_shape: Shape, num_classes: int) -> Any:
    """Five 3×3 convolutions with pooling after 1, 2 and 5, two dense layers, softmax."""
    import keras
    from keras import layers

    hp = hyperparameters
    dtype = compute_dtype(hp.bfloat16)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for index, filters in enumerate(hp.conv_filters, start=1):
        x = conv_block(x, filters, 3, hp.batch_norm, f"conv{index}", dtype)
        if index in _POOL_AFTER:
            x = layers.MaxPooling2D(dtype=dtype, name=f"pool{index}")(x)
    x = layers.Flatten(dtype=dtype, name="flatten")(x)
    for index, units in enumerate(hp.dense_units, start=1):
        x = layers.Dense(units, activation="relu", dtype=dtype, name=f"dense{index}")(x)
        x = layers.Dropout(hp.dropout_rate, dtype=dtype, name=f"dropout{index}")(x)
    # The classifier computes in float32: bfloat16 would round small probabilities away.
    outputs = layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name="alexnet")


def estimate_cost(
    hyperparameters: AlexNetHyperparameters, input_shape: Shape, num_classes: int
) -> ModelCost:
    hp = hyperparameters
    tracer = CostTracer(input_shape)
    for index, filters in enumerate(hp.conv_filters, start=1):
        tracer.conv(filters, 3, bias=not hp.batch_norm, batch_norm=hp.batch_norm)
        if index in _POOL_AFTER:
            tracer.pool()
    for units in (*hp.dense_units, num_classes):
        tracer.dense(units)
    return tracer.cost()


DEFINITION = ArchitectureDefinition(
    spec=AlexNetSpec,
    build=build,
    estimate_cost=estimate_cost,
    examples={
        "alexnet": {
            "summary": "The AlexNet-inspired CNN with early stopping",
            "value": {
                "dataset": "cifar10",
                "sample_fraction": 0.25,
                "architecture": "alexnet",
                "epochs": 30,
                "early_stopping_patience": 5,
                "model_name": "cifar10-alexnet",
            },
        },
    },
)
