"""What a training spec will cost, estimated without TensorFlow, and the limits it must fit.

The service checks a spec at submit time, so a job that would build an 800-million-
parameter model or run for weeks is refused with a 422 before anything is stored.
Each architecture estimates its own model (``estimate_cost`` in its definition,
``trainer/architectures/``); this module scales that by the spec's batch, sample and
epochs and compares the result with the configured limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainer import architectures
from trainer.datasets import dataset_info
from trainer.errors import ResourceBudgetError
from trainer.spec import AnyTrainingSpec


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


def estimate_cost(spec: AnyTrainingSpec) -> Cost:
    """Parameters, activation memory of one batch and FLOPs of the whole training.

    The model's own figures come from its architecture definition; this adds what the
    spec multiplies them by: the batch, the images trained on and the epochs.
    """
    info = dataset_info(spec.dataset)
    model = architectures.estimate_cost(
        spec.architecture, spec.hyperparameters, info.input_shape, info.num_classes
    )
    images = info.train_images * spec.sample_fraction * (1 - spec.validation_fraction)
    if spec.augmentation.target_classes:
        # At most every image is a target: the upper bound of oversampling.
        images *= spec.augmentation.oversample_factor
    return Cost(
        parameters=model.parameters,
        activation_bytes_per_batch=model.activation_bytes(spec.batch_size),
        training_flops=float(model.training_flops(math.ceil(images), spec.epochs)),
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
