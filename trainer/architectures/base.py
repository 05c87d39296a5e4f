"""What an architecture definition holds, and the helpers its modules share.

An architecture is one module in this package that defines ``DEFINITION``: its spec
class (hyperparameter schema, training defaults — the recipe — and the description
shown in ``/docs``), its Keras builder and a cost estimate. Keras is imported
inside the builders only, so the service can import every definition without
loading TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from trainer import precision
from trainer.errors import InvalidInputError
from trainer.spec_base import TrainingSpecBase

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelCost:
    """Estimated size and work of a model, per image, before anything is built."""

    parameters: int
    # Values the layers output for one image: what training keeps for backprop.
    activations_per_image: int
    # Floating-point operations of one forward pass.
    flops_per_image: int

    def activation_bytes(self, batch_size: int) -> int:
        """float32 activations of one training batch."""
        return 4 * self.activations_per_image * batch_size

    def training_flops(self, images: int, epochs: int) -> int:
        """Forward plus backward (about twice the forward) over every epoch."""
        return 3 * self.flops_per_image * images * epochs


class CostTracer:
    """Follows a feature map through conv, pool and dense layers, adding up the cost.

    The counts match Keras' ``count_params()`` exactly (batch norm's four vectors
    included), which the tests check for every architecture.
    """

    def __init__(self, input_shape: Shape) -> None:
        self.height, self.width, self.channels = input_shape
        self.parameters = 0
        self.activations = 0
        self.flops = 0

    @property
    def values(self) -> int:
        return self.height * self.width * self.channels

    def conv(self, filters: int, kernel_size: int, *, bias: bool, batch_norm: bool) -> None:
        weights = kernel_size * kernel_size * self.channels * filters
        self.parameters += weights + (filters if bias else 0) + (4 * filters if batch_norm else 0)
        self.flops += 2 * weights * self.height * self.width
        self.channels = filters
        self.activations += self.values * (3 if batch_norm else 1)

    def pool(self) -> None:
        self.height, self.width = self.height // 2, self.width // 2
        if self.height < 1 or self.width < 1:
            # Keras would fail to build this model inside the worker; say so at submit.
            raise InvalidInputError(
                "the model halves the image more times than its size allows; use fewer "
                "pooling stages (conv blocks) for this dataset",
                field="body.hyperparameters",
            )
        self.activations += self.values

    def batch_norm(self, *, scale: bool = True) -> None:
        # Offset, moving mean and moving variance, and the gain unless left out.
        self.parameters += (4 if scale else 3) * self.channels
        self.activations += 2 * self.values

    def whitening(self, patch_size: int) -> None:
        """trainer.whitening.PatchWhitening: a fixed ``valid`` convolution, 2 filters per value."""
        values = patch_size * patch_size * self.channels
        weights = values * 2 * values
        # The kernel, the bias, and the per-channel mean and inverse standard deviation.
        self.parameters += weights + 2 * values + 2 * self.channels
        self.height, self.width = self.height - patch_size + 1, self.width - patch_size + 1
        self.flops += 2 * weights * self.height * self.width
        self.channels = 2 * values
        self.activations += self.values

    def add(self) -> None:
        self.activations += self.values

    def global_pool(self) -> None:
        self.height = self.width = 1
        self.activations += self.channels

    def dense(self, units: int, *, bias: bool = True) -> None:
        inputs = self.values
        self.parameters += inputs * units + (units if bias else 0)
        self.flops += 2 * inputs * units
        self.height = self.width = 1
        self.channels = units
        self.activations += units

    def cost(self) -> ModelCost:
        return ModelCost(self.parameters, self.activations, self.flops)


@dataclass(frozen=True)
class ArchitectureDefinition:
    """Everything about one architecture; every list of names derives from these."""

    spec: type[TrainingSpecBase]
    build: Callable[[Any, Shape, int], Any]
    estimate_cost: Callable[[Any, Shape, int], ModelCost]
    # Ready-made POST /jobs bodies shown in /docs, by example name.
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The architecture a spec without "architecture" gets.
    default: bool = False
    # Fits what the network takes from the data rather than from training (a whitening
    # layer, say) to the training images, once, before the first step.
    adapt: Callable[[Any, NDArray[np.float32]], None] | None = None

    @property
    def name(self) -> str:
        return str(self.spec.model_fields["architecture"].default)

    @property
    def hyperparameters(self) -> type[BaseModel]:
        annotation = self.spec.model_fields["hyperparameters"].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        return annotation

    @property
    def description(self) -> str:
        return (self.spec.__doc__ or "").strip()

    @property
    def summary(self) -> str:
        return self.description.split("\n", 1)[0].rstrip(".")


def conv_block(
    x: Any, filters: int, kernel_size: int, batch_norm: bool, name: str, dtype: str | None = None
) -> Any:
    """Conv2D + ReLU, or Conv2D (no bias) + BatchNorm + ReLU: the lab models' unit."""
    from keras import layers

    from trainer.batch_norm import FusedBatchNormalization

    if not batch_norm:
        return layers.Conv2D(
            filters, kernel_size, padding="same", activation="relu", dtype=dtype, name=name
        )(x)
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, dtype=dtype, name=name)(
        x
    )
    x = FusedBatchNormalization(dtype=dtype, name=f"{name}_bn")(x)
    return layers.Activation("relu", dtype=dtype, name=f"{name}_relu")(x)


def compute_dtype(bfloat16: bool | None) -> str | None:
    """The layers' dtype policy: mixed bfloat16 if asked, or if unset and it trains faster here.

    "Faster here" is measured once per machine (``trainer.precision``): a native
    bfloat16 flag alone does not make it faster. A per-layer policy rather than
    Keras' global one, so that building one model never changes how other models
    in the same process compute.
    """
    use_bfloat16 = precision.bfloat16_trains_faster() if bfloat16 is None else bfloat16
    return "mixed_bfloat16" if use_bfloat16 else None


BFLOAT16_DESCRIPTION = (
    "Mixed precision: compute in bfloat16, keep weights and the softmax in float32. "
    "Faster on some CPUs with AMX or AVX-512 BF16, slower on others and on every CPU "
    "without them; empty means on where a short measurement on this machine finds it "
    "faster (see `python -m trainer.precision`)."
)
