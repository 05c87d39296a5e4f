"""Named architectures: each pairs a hyperparameter schema with a Keras builder.

Models take float32 images in [0, 1] of the dataset's input shape and end in
a softmax over the classes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


def _conv(x: Any, filters: int, kernel_size: int, batch_norm: bool, name: str) -> Any:
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


def _resnet_conv(
    x: Any, filters: int, hp: ResNetHyperparameters, dtype: str | None, name: str, pool: bool
) -> Any:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, dtype=dtype, name=name)(x)
    if pool:
        # Pool before batch norm: nearly the same function (max-pooling commutes with
        # a rising per-channel map) for a quarter of the normalization work, and
        # batch norm is about a quarter of this network's CPU time.
        x = layers.MaxPooling2D(dtype=dtype, name=f"{name}_pool")(x)
    x = layers.BatchNormalization(momentum=hp.batch_norm_momentum, dtype=dtype, name=f"{name}_bn")(
        x
    )
    return layers.Activation("relu", dtype=dtype, name=f"{name}_relu")(x)


@functools.cache
def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX-512 BF16, per /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def build_resnet(
    hyperparameters: ResNetHyperparameters, input_shape: Shape, num_classes: int
) -> keras.Model:
    """A small ResNet-9-style network: conv-pool-BN-ReLU stages with residual blocks."""
    hp = hyperparameters
    # A per-layer policy rather than the global one, so that building this model
    # never changes how other models in the same process compute.
    use_bfloat16 = cpu_has_bfloat16() if hp.bfloat16 is None else hp.bfloat16
    dtype = "mixed_bfloat16" if use_bfloat16 else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = _resnet_conv(inputs, hp.stem_filters, hp, dtype, name="stem", pool=False)
    for stage, filters in enumerate(hp.stage_filters, start=1):
        x = _resnet_conv(x, filters, hp, dtype, name=f"stage{stage}_conv", pool=True)
        if stage <= len(hp.residual_stages) and hp.residual_stages[stage - 1]:
            shortcut = x
            x = _resnet_conv(x, filters, hp, dtype, name=f"stage{stage}_res1", pool=False)
            x = _resnet_conv(x, filters, hp, dtype, name=f"stage{stage}_res2", pool=False)
            x = layers.Add(dtype=dtype, name=f"stage{stage}_add")([shortcut, x])
    x = layers.GlobalMaxPooling2D(dtype=dtype, name="global_pool")(x)
    if hp.dropout_rate:
        x = layers.Dropout(hp.dropout_rate, dtype=dtype, name="dropout")(x)
    # The classifier computes in float32: bfloat16 would round small probabilities away.
    x = layers.Dense(num_classes, use_bias=False, dtype="float32", name="logits")(x)
    if hp.logit_scale != 1.0:
        x = layers.Rescaling(hp.logit_scale, dtype="float32", name="logit_scale")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
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
    "resnet": Architecture(
        "resnet", build_resnet.__doc__ or "", ResNetHyperparameters, build_resnet
    ),
}


def build_model(
    architecture: str, hyperparameters: BaseModel, input_shape: Shape, num_classes: int
) -> keras.Model:
    """Build the named architecture for one input shape and class count."""
    return ARCHITECTURES[architecture].build(hyperparameters, input_shape, num_classes)
