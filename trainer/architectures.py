"""Named architectures: each pairs a hyperparameter schema with a Keras builder.

Models take float32 images in [0, 1] of the dataset's input shape and end in
a softmax over the classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers
from pydantic import BaseModel

from trainer.hyperparameters import (
    AlexNetHyperparameters,
    CustomCnnHyperparameters,
    ResNetHyperparameters,
)

Shape = tuple[int, int, int]


def _conv(
    x: Any, filters: int, kernel_size: int, batch_norm: bool, name: str
) -> Any:
    if not batch_norm:
        return layers.Conv2D(filters, kernel_size, padding="same", activation="relu", name=name)(x)
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_custom_cnn(
    hyperparameters: CustomCnnHyperparameters, input_shape: Shape, num_classes: int
) -> keras.Model:
    """The lab's CNN: two Conv → MaxPool blocks (more if asked), dropout, dense, softmax."""
    hp = hyperparameters
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for index, filters in enumerate([hp.filters1, hp.filters2, *hp.extra_conv_filters], start=1):
        x = _conv(x, filters, hp.kernel_size, hp.batch_norm, name=f"conv{index}")
        x = layers.MaxPooling2D(name=f"pool{index}")(x)
    x = layers.Dropout(hp.dropout_rate, name="conv_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hp.dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(hp.dropout_rate, name="dense_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="custom_cnn")


def build_alexnet(
    hyperparameters: AlexNetHyperparameters, input_shape: Shape, num_classes: int
) -> keras.Model:
    """The lab's AlexNet-inspired CNN: five 3×3 convolutions, pooling after 1, 2 and 5."""
    hp = hyperparameters
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for index, filters in enumerate(hp.conv_filters, start=1):
        x = _conv(x, filters, 3, hp.batch_norm, name=f"conv{index}")
        if index in (1, 2, 5):
            x = layers.MaxPooling2D(name=f"pool{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    for index, units in enumerate(hp.dense_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"dense{index}")(x)
        x = layers.Dropout(hp.dropout_rate, name=f"dropout{index}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="alexnet")


def build_resnet(
    hyperparameters: ResNetHyperparameters, input_shape: Shape, num_classes: int
) -> keras.Model:
    """A small ResNet-9-style network: conv-BN-ReLU stages with residual blocks."""
    hp = hyperparameters
    inputs = keras.Input(shape=input_shape, name="image")
    x = _conv(inputs, hp.stem_filters, 3, True, name="stem")
    for stage, filters in enumerate(hp.stage_filters, start=1):
        x = _conv(x, filters, 3, True, name=f"stage{stage}_conv")
        x = layers.MaxPooling2D(name=f"stage{stage}_pool")(x)
        if stage <= len(hp.residual_stages) and hp.residual_stages[stage - 1]:
            shortcut = x
            x = _conv(x, filters, 3, True, name=f"stage{stage}_res1")
            x = _conv(x, filters, 3, True, name=f"stage{stage}_res2")
            x = layers.Add(name=f"stage{stage}_add")([shortcut, x])
    x = layers.GlobalMaxPooling2D(name="global_pool")(x)
    if hp.dropout_rate:
        x = layers.Dropout(hp.dropout_rate, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="resnet")


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    hyperparameters: type[BaseModel]
    build: Callable[[Any, Shape, int], keras.Model]


ARCHITECTURES: dict[str, Architecture] = {
    "custom_cnn": Architecture(
        "custom_cnn", build_custom_cnn.__doc__ or "", CustomCnnHyperparameters, build_custom_cnn
    ),
    "alexnet": Architecture(
        "alexnet", build_alexnet.__doc__ or "", AlexNetHyperparameters, build_alexnet
    ),
    "resnet": Architecture("resnet", build_resnet.__doc__ or "", ResNetHyperparameters, build_resnet),
}


def build_model(
    architecture: str, hyperparameters: BaseModel, input_shape: Shape, num_classes: int
) -> keras.Model:
    """Build the named architecture for one input shape and class count."""
    return ARCHITECTURES[architecture].build(hyperparameters, input_shape, num_classes)
