"""What a training spec will cost, estimated without TensorFlow, and the limits it must fit.

The service checks a spec at submit time, so a job that would build an 800-million-
parameter model or run for weeks is refused with a 422 before anything is stored.
The figures follow the architectures' layer structure (``trainer/architectures.py``):
parameters exactly for the layers that hold them, forward FLOPs as two per
multiply-add of convolutions and dense layers, activation memory as the float32
outputs of every layer of one batch, kept for the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from trainer.data import dataset_info
from trainer.errors import ResourceBudgetError
from trainer.hyperparameters import (
    AlexNetHyperparameters,
    CustomCnnHyperparameters,
    ResNetHyperparameters,
)
from trainer.spec import AnyTrainingSpec

# Training images per dataset before sampling (the test split is not trained on).
TRAIN_IMAGES: Final[dict[str, int]] = {
    "cifar10": 50_000,
    "mnist": 60_000,
    "fashion_mnist": 60_000,
    "digits": 1_437,
}
BYTES_PER_VALUE = 4
# Backward pass ≈ twice the forward pass.
TRAINING_FLOPS_PER_FORWARD = 3


@dataclass(frozen=True)
class Cost:
    """Estimated cost of one training run."""

    parameters: int
    activation_bytes_per_batch: int
    training_flops: float


@dataclass(frozen=True)
class Budget:
    """Limits a job must fit in (from settings)."""

    max_parameters: int
    max_activation_bytes: int
    max_training_flops: float


class _Network:
    """Walks layer by layer, adding up parameters, FLOPs and activations per image."""

    def __init__(self, height: int, width: int, channels: int) -> None:
        self.height, self.width, self.channels = height, width, channels
        self.parameters = 0
        self.flops = 0
        self.activations = height * width * channels

    def conv(self, filters: int, kernel: int, *, bias: bool, batch_norm: bool) -> None:
        weights = kernel * kernel * self.channels * filters
        self.parameters += weights + (filters if bias else 0) + (4 * filters if batch_norm else 0)
        self.flops += 2 * weights * self.height * self.width
        self.channels = filters
        # The convolution's output, plus batch norm's and the activation's.
        self.activations += self.height * self.width * filters * (3 if batch_norm else 2)

    def pool(self, description: str) -> None:
        self.height, self.width = self.height // 2, self.width // 2
        if self.height < 1 or self.width < 1:
            raise ResourceBudgetError(
                f"{description} halves the image more times than its size allows; "
                "use fewer pooling stages",
                field="body.hyperparameters",
            )
        self.activations += self.height * self.width * self.channels

    def flatten(self) -> None:
        self.channels = self.height * self.width * self.channels
        self.height = self.width = 1

    def global_pool(self) -> None:
        self.height = self.width = 1

    def dense(self, units: int, *, bias: bool = True) -> None:
        weights = self.channels * units
        self.parameters += weights + (units if bias else 0)
        self.flops += 2 * weights
        self.channels = units
        self.activations += units * 2


def _custom_cnn(hp: CustomCnnHyperparameters, network: _Network, classes: int) -> None:
    for filters in [hp.filters1, hp.filters2, *hp.extra_conv_filters]:
        network.conv(filters, hp.kernel_size, bias=not hp.batch_norm, batch_norm=hp.batch_norm)
        network.pool("custom_cnn's conv blocks")
    network.flatten()
    network.dense(hp.dense_units)
    network.dense(classes)


def _alexnet(hp: AlexNetHyperparameters, network: _Network, classes: int) -> None:
    for index, filters in enumerate(hp.conv_filters, start=1):
        network.conv(filters, 3, bias=not hp.batch_norm, batch_norm=hp.batch_norm)
        if index in (1, 2, 5):
            network.pool("alexnet's pooling")
    network.flatten()
    for units in hp.dense_units:
        network.dense(units)
    network.dense(classes)


def _resnet(hp: ResNetHyperparameters, network: _Network, classes: int) -> None:
    network.conv(hp.stem_filters, 3, bias=False, batch_norm=True)
    for stage, filters in enumerate(hp.stage_filters, start=1):
        network.conv(filters, 3, bias=False, batch_norm=True)
        network.pool("resnet's stages")
        if stage <= len(hp.residual_stages) and hp.residual_stages[stage - 1]:
            network.conv(filters, 3, bias=False, batch_norm=True)
            network.conv(filters, 3, bias=False, batch_norm=True)
    network.global_pool()
    network.dense(classes, bias=False)


def estimate_cost(spec: AnyTrainingSpec) -> Cost:
    """Parameters, activation memory of one batch and FLOPs of the whole training."""
    info = dataset_info(spec.dataset)
    network = _Network(*info.input_shape)
    classes = len(info.class_names)
    hp = spec.hyperparameters
    if isinstance(hp, CustomCnnHyperparameters):
        _custom_cnn(hp, network, classes)
    elif isinstance(hp, AlexNetHyperparameters):
        _alexnet(hp, network, classes)
    else:
        _resnet(hp, network, classes)
    images = TRAIN_IMAGES[spec.dataset] * spec.sample_fraction * (1 - spec.validation_fraction)
    if spec.augmentation.target_classes:
        # At most every image is a target: the upper bound of oversampling.
        images *= spec.augmentation.oversample_factor
    return Cost(
        parameters=network.parameters,
        activation_bytes_per_batch=network.activations * spec.batch_size * BYTES_PER_VALUE,
        training_flops=float(network.flops) * TRAINING_FLOPS_PER_FORWARD * images * spec.epochs,
    )


def check_budget(spec: AnyTrainingSpec, budget: Budget) -> Cost:
    """The spec's cost, or ResourceBudgetError (422) naming each limit it exceeds."""
    cost = estimate_cost(spec)
    problems = []
    if cost.parameters > budget.max_parameters:
        problems.append(
            f"{cost.parameters:,} parameters (at most {budget.max_parameters:,}): use fewer "
            "filters or units"
        )
    if cost.activation_bytes_per_batch > budget.max_activation_bytes:
        problems.append(
            f"about {cost.activation_bytes_per_batch / 2**20:,.0f} MiB of activations per batch "
            f"(at most {budget.max_activation_bytes / 2**20:,.0f} MiB): use a smaller batch_size "
            "or fewer filters"
        )
    if cost.training_flops > budget.max_training_flops:
        problems.append(
            f"about {cost.training_flops:.2e} floating-point operations in all (at most "
            f"{budget.max_training_flops:.2e}): train fewer epochs, on a smaller sample, or a "
            "smaller model"
        )
    if problems:
        raise ResourceBudgetError(
            "this job is larger than the service allows: " + "; ".join(problems),
            field="body",
            received={
                "parameters": cost.parameters,
                "activation_bytes_per_batch": cost.activation_bytes_per_batch,
                "training_flops": cost.training_flops,
            },
        )
    return cost
