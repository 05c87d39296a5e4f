"""whitened_cnn: a speed-run CNN for small natural-image datasets, after airbench."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from trainer.architectures.base import (
    BFLOAT16_DESCRIPTION,
    ArchitectureDefinition,
    CostTracer,
    ModelCost,
    Shape,
    compute_dtype,
)
from trainer.architectures.resnet import ResNetRecipe
from trainer.spec_base import (
    TEST_TIME_AUGMENTATION_DESCRIPTION,
    AugmentationSpec,
    PositiveWidth,
    TestTimeAugmentation,
)

# The whitened patches are 2×2: the smallest patch that sees edges, as in airbench.
PATCH_SIZE = 2

# The groups' filters when none are given, by the precision the layers compute in. In
# float32 the recipe's training steps already run near the CPU's peak, so only fewer
# FLOPs make them shorter: on an AVX-512 EPYC 64/192/256 trained 1.41× as fast per
# image as 64/256/256 and, over three seeds, kept 0.876 test accuracy on the 25%
# CIFAR-10 sample in 0.73× the lab's run, where 64/256/256 needed 1.16× (float32).
# On an AMX Xeon computing in float32, as Intel CPUs without fast bfloat16 train, it
# scored 0.879 in 0.84× once training stopped stalling between epochs.
# In bfloat16 the full width fits the lab's time with its 0.877 (docs/benchmarks.md).
BFLOAT16_GROUP_FILTERS = (64, 256, 256)
FLOAT32_GROUP_FILTERS = (64, 192, 256)

GroupFilters = Annotated[list[PositiveWidth], Field(min_length=1, max_length=4)]


class WhitenedCnnHyperparameters(BaseModel):
    """A whitening first layer, then convolution groups that each halve the resolution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_filters: GroupFilters | None = Field(
        None,
        description="Filters of each group (conv, max-pool, batch norm, GELU, conv, batch "
        "norm, GELU); every group halves the resolution. Left out (null): 64/256/256 "
        "where the layers compute in bfloat16 and 64/192/256 in float32, whose steps cost "
        "more (docs/benchmarks.md gives each one's accuracy and time by CPU).",
    )
    batch_norm_momentum: float = Field(
        0.6,
        ge=0.0,
        lt=1.0,
        description="Momentum of the batch-norm moving statistics: low, so that they follow "
        "the weights of a schedule only about a thousand steps long.",
    )
    logit_scale: float = Field(
        1 / 9,
        gt=0,
        le=1,
        description="Multiplies the logits before the softmax: a softer start that lets SGD "
        "take the high peak learning rate of a one-cycle schedule.",
    )
    activation: Literal["gelu", "relu"] = Field(
        "gelu",
        description="The activation after the whitening layer and each batch norm: GELU as "
        "in airbench, or ReLU, which trains faster where bfloat16's element-wise "
        "operations are slow (AMX Xeons).",
    )
    identity_init: bool = Field(
        True,
        description="Start each convolution's first filters, one per input channel, as the "
        "identity (airbench's dirac initialization), so the untrained network passes the "
        "whitened image through; the other filters start random.",
    )
    bias_gradient_scale: float = Field(
        64.0,
        ge=1.0,
        le=1000.0,
        description="Multiplies the gradient of each batch-norm bias: with SGD, a learning "
        "rate that many times the weights' for the biases (airbench's 64).",
    )
    train_whitening_bias: bool = Field(
        False,
        description="Train the whitening layer's bias. Left fixed at zero, the first "
        "convolution needs no input gradient: a float32 step about 11% shorter.",
    )
    bfloat16: bool | None = Field(None, description=BFLOAT16_DESCRIPTION)


def _two_pixel_shifts() -> AugmentationSpec:
    # Flips and shifts of up to 2 pixels, as airbench: on the 25% CIFAR-10 sample they
    # scored 0.869 where resnet's 4 pixels scored 0.866 (mirror at test time, one seed).
    # Whole-pixel shifts, as airbench's crops: the images trained on stay as sharp as
    # those tested on.
    return AugmentationSpec(
        enabled=True,
        rotation_degrees=0,
        zoom=0,
        width_shift=0.0625,
        height_shift=0.0625,
        whole_pixel_shifts=True,
        alternating_flip=True,
    )


class WhitenedCnnSpec(ResNetRecipe):
    """A speed-run CNN: whitened 2×2 patches, three conv groups, GELU; the best recipe per time.

    After Keller Jordan's airbench, the fastest known CIFAR-10 training: a first layer
    fixed to whiten 2×2 patches of the training images, then three groups of two
    convolutions (64, 256 and 256 filters in bfloat16, 64, 192 and 256 in float32) that
    start as the identity, with max-pooling and batch norm, trained with resnet's
    optimizer and schedule (SGD one-cycle), batch-norm biases at 64× the learning rate,
    lookahead weights, stronger label smoothing, alternating flips and whole-pixel shifts
    of up to 2 pixels, and the mirror and one-pixel shifts at test time. Those airbench
    tricks took the recipe from 13 epochs to 10: with 64/256/256 in float32 on 25% of
    CIFAR-10 on two AVX2-only cores, over three seeds, 0.877 ± 0.004 test accuracy in
    0.90× the wall time of the lab's 30-epoch run beside them, where 13 epochs without
    them took 1.50× (docs/benchmarks.md).
    """

    architecture: Literal["whitened_cnn"] = "whitened_cnn"
    hyperparameters: WhitenedCnnHyperparameters = Field(default_factory=WhitenedCnnHyperparameters)
    epochs: int = Field(10, ge=1, le=500)
    label_smoothing: float = Field(0.2, ge=0, lt=1)
    lookahead: bool = True
    augmentation: AugmentationSpec = Field(default_factory=_two_pixel_shifts)
    test_time_augmentation: TestTimeAugmentation = Field(
        "flip_and_shifts",
        description=TEST_TIME_AUGMENTATION_DESCRIPTION.format(
            flip="left out, it means 'flip_and_shifts' for natural images and 'none' for digits"
        ),
    )


def _conv(
    x: Any, filters: int, hp: WhitenedCnnHyperparameters, dtype: str | None, name: str, pool: bool
) -> Any:
    from keras import layers

    from trainer.batch_norm import FusedBatchNormalization

    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, dtype=dtype, name=name)(x)
    if pool:
        # Pool before batch norm, as in resnet: a quarter of the normalization work.
        x = layers.MaxPooling2D(dtype=dtype, name=f"{name}_pool")(x)
    # No scale: a per-channel gain before GELU adds nothing SGD needs here (as airbench).
    x = FusedBatchNormalization(
        momentum=hp.batch_norm_momentum,
        scale=False,
        bias_gradient_scale=hp.bias_gradient_scale,
        dtype=dtype,
        name=f"{name}_bn",
    )(x)
    return layers.Activation(hp.activation, dtype=dtype, name=f"{name}_{hp.activation}")(x)


def build(hyperparameters: WhitenedCnnHyperparameters, input_shape: Shape, num_classes: int) -> Any:
    """The network with an un-fitted whitening layer; ``adapt`` fits it to training images."""
    import keras
    from keras import layers

    from trainer.whitening import PatchWhitening

    hp = hyperparameters
    dtype = compute_dtype(hp.bfloat16)
    group_filters = group_filters_for(hp, dtype)
    inputs = keras.Input(shape=input_shape, name="image")
    x = PatchWhitening(PATCH_SIZE, dtype=dtype, name="whitening")(inputs)
    x = layers.Activation(hp.activation, dtype=dtype, name=f"whitening_{hp.activation}")(x)
    for group, filters in enumerate(group_filters, start=1):
        x = _conv(x, filters, hp, dtype, name=f"group{group}_conv1", pool=True)
        x = _conv(x, filters, hp, dtype, name=f"group{group}_conv2", pool=False)
    x = layers.GlobalMaxPooling2D(dtype=dtype, name="global_pool")(x)
    # The classifier computes in float32: bfloat16 would round small probabilities away.
    x = layers.Dense(num_classes, use_bias=False, dtype="float32", name="logits")(x)
    x = layers.Rescaling(hp.logit_scale, dtype="float32", name="logit_scale")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="whitened_cnn")
    model.get_layer("whitening").bias.trainable = hp.train_whitening_bias
    if hp.identity_init:
        for group in range(1, len(group_filters) + 1):
            for conv in ("conv1", "conv2"):
                _start_as_identity(model.get_layer(f"group{group}_{conv}"))
    return model


def group_filters_for(hyperparameters: WhitenedCnnHyperparameters, dtype: str | None) -> list[int]:
    """The groups' filters: those given, else the default for the ``dtype`` policy."""
    if hyperparameters.group_filters is not None:
        return list(hyperparameters.group_filters)
    bfloat16 = dtype == "mixed_bfloat16"
    return list(BFLOAT16_GROUP_FILTERS if bfloat16 else FLOAT32_GROUP_FILTERS)


def _start_as_identity(conv: Any) -> None:
    """Make the first of ``conv``'s filters copy one input channel each (dirac filters)."""
    kernel = conv.kernel.numpy()
    height, width, in_channels, out_channels = kernel.shape
    copied = min(in_channels, out_channels)
    kernel[:, :, :, :copied] = 0.0
    channels = np.arange(copied)
    kernel[height // 2, width // 2, channels, channels] = 1.0
    conv.kernel.assign(kernel)


def adapt(model: Any, training_images: NDArray[np.float32]) -> None:
    """Fit the whitening layer to the training images, before the first step."""
    model.get_layer("whitening").adapt(training_images)


def estimate_cost(
    hyperparameters: WhitenedCnnHyperparameters, input_shape: Shape, num_classes: int
) -> ModelCost:
    # Without TensorFlow the machine's precision is unknown. A spec that names float32
    # gets float32's widths; one that names bfloat16 or neither gets the wider bfloat16
    # widths, which bound what either precision builds.
    float32 = hyperparameters.bfloat16 is False
    group_filters = hyperparameters.group_filters or (
        FLOAT32_GROUP_FILTERS if float32 else BFLOAT16_GROUP_FILTERS
    )
    tracer = CostTracer(input_shape)
    tracer.whitening(PATCH_SIZE)
    for filters in group_filters:
        tracer.conv(filters, 3, bias=False, batch_norm=False)
        tracer.pool()
        tracer.batch_norm(scale=False)
        tracer.conv(filters, 3, bias=False, batch_norm=False)
        tracer.batch_norm(scale=False)
    tracer.global_pool()
    tracer.dense(num_classes, bias=False)
    return tracer.cost()


DEFINITION = ArchitectureDefinition(
    spec=WhitenedCnnSpec,
    build=build,
    estimate_cost=estimate_cost,
    adapt=adapt,
    examples={
        "whitened_cnn": {
            "summary": "The most accurate recipe per training time",
            "description": "Leaving out the training settings gives whitened_cnn's own recipe: "
            "10 epochs of SGD one-cycle at 0.2 with lookahead, label smoothing 0.2, "
            "alternating flips and shifts, the mirror and shifts at test time.",
            "value": {
                "dataset": "cifar10",
                "sample_fraction": 0.25,
                "architecture": "whitened_cnn",
                "model_name": "cifar10-whitened-cnn",
            },
        },
    },
)
