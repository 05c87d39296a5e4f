"""custom_cnn: the lab's configurable CNN; its defaults build the lab's model exactly."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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


class CustomCnnHyperparameters(BaseModel):
    """The lab's configurable CNN; the defaults build the lab's model exactly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    bfloat16: bool | None = Field(None, description=BFLOAT16_DESCRIPTION)

    @property
    def conv_filters(self) -> list[int]:
        return [self.filters1, self.filters2, *self.extra_conv_filters]


class CustomCnnSpec(TrainingSpecBase):
    """The lab's configurable CNN: Conv → MaxPool blocks, dropout, a dense layer, softmax.

    Default hyperparameters build the lab's model (545,098 parameters on CIFAR-10);
    training defaults are the lab's: Adam at 1e-3, batch 64, no augmentation.
    """

    architecture: Literal["custom_cnn"] = "custom_cnn"
    hyperparameters: CustomCnnHyperparameters = Field(default_factory=CustomCnnHyperparameters)


def build(hyperparameters: CustomCnnHyperparameters, input_shape: Shape, num_classes: int) -> Any:
    """Two Conv → MaxPool blocks (more if asked), dropout, dense, softmax."""
    import keras
    from keras import layers

    hp = hyperparameters
    dtype = compute_dtype(hp.bfloat16)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for index, filters in enumerate(hp.conv_filters, start=1):
        x = conv_block(x, filters, hp.kernel_size, hp.batch_norm, f"conv{index}", dtype)
        x = layers.MaxPooling2D(dtype=dtype, name=f"pool{index}")(x)
    x = layers.Dropout(hp.dropout_rate, dtype=dtype, name="conv_dropout")(x)
    x = layers.Flatten(dtype=dtype, name="flatten")(x)
    x = layers.Dense(hp.dense_units, activation="relu", dtype=dtype, name="dense")(x)
    x = layers.Dropout(hp.dropout_rate, dtype=dtype, name="dense_dropout")(x)
    # The classifier computes in float32: bfloat16 would round small probabilities away.
    outputs = layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name="custom_cnn")


def estimate_cost(
    hyperparameters: CustomCnnHyperparameters, input_shape: Shape, num_classes: int
) -> ModelCost:
    hp = hyperparameters
    tracer = CostTracer(input_shape)
    for filters in hp.conv_filters:
        tracer.conv(filters, hp.kernel_size, bias=not hp.batch_norm, batch_norm=hp.batch_norm)
        tracer.pool()
    tracer.dense(hp.dense_units)
    tracer.dense(num_classes)
    return tracer.cost()


_LAB_64_128_256 = {"filters1": 64, "filters2": 128, "dense_units": 256}

DEFINITION = ArchitectureDefinition(
    spec=CustomCnnSpec,
    build=build,
    estimate_cost=estimate_cost,
    default=True,
    examples={
        "lab_custom_cnn": {
            "summary": "The lab's custom CNN on 25% of CIFAR-10",
            "value": {
                "dataset": "cifar10",
                "sample_fraction": 0.25,
                "architecture": "custom_cnn",
                "hyperparameters": _LAB_64_128_256,
                "epochs": 30,
                "batch_size": 64,
                "model_name": "cifar10-custom",
            },
        },
        "weak_classes": {
            "summary": "Augment every image and oversample a reference model's weak classes",
            "value": {
                "dataset": "cifar10",
                "sample_fraction": 0.25,
                "architecture": "custom_cnn",
                "hyperparameters": _LAB_64_128_256,
                "epochs": 30,
                "augmentation": {
                    "target_classes": "weak",
                    "oversample_factor": 2,
                    "reference_model": {"model_name": "cifar10-custom", "version": "1"},
                },
                "model_name": "cifar10-custom",
            },
        },
    },
)
