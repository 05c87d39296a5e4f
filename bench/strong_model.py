"""The stronger architecture: the ``resnet`` defaults on 25% of CIFAR-10, trained in minutes.

A ResNet-9-style network (batch norm, two residual blocks, bfloat16 compute)
trained with SGD + Nesterov momentum on a one-cycle schedule, label smoothing,
decoupled weight decay, and the standard CIFAR augmentation: random left-right
flips and shifts of up to 4 pixels (12.5%), nothing else.

    .venv/bin/python -m bench.strong_model [--data-dir DIR] [--registry-dir DIR]
"""

from __future__ import annotations

from bench.harness import run_benchmark
from trainer.architectures.resnet import ResNetHyperparameters, ResNetSpec
from trainer.spec_base import AugmentationSpec

SPEC = ResNetSpec(
    dataset="cifar10",
    sample_fraction=0.25,
    seed=42,
    epochs=16,
    batch_size=128,
    optimizer="sgd",
    learning_rate=0.2,
    lr_schedule="one_cycle",
    weight_decay=5e-3,
    label_smoothing=0.1,
    augmentation=AugmentationSpec(
        enabled=True,
        horizontal_flip=True,
        width_shift=0.125,
        height_shift=0.125,
        rotation_degrees=0.0,
        zoom=0.0,
    ),
    hyperparameters=ResNetHyperparameters(),
    model_name="bench-strong-model",
)

if __name__ == "__main__":
    run_benchmark("strong-model", "Strong model: resnet (ResNet-9 style), 16 epochs", SPEC)
