"""resnet_small: resnet at half its widths and half its epochs, for time to accuracy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainer.architectures import resnet
from trainer.architectures.base import ArchitectureDefinition
from trainer.spec_base import PositiveWidth


class SmallResNetHyperparameters(resnet.ResNetHyperparameters):
    """resnet's network at half its widths: a quarter of the work per image."""

    stem_filters: PositiveWidth = Field(16, description="Filters of the stem convolution.")
    stage_filters: list[PositiveWidth] = Field(
        default_factory=lambda: [32, 64, 128],
        min_length=1,
        max_length=4,
        description="Filters of each stage; every stage halves the resolution.",
    )


class SmallResNetSpec(resnet.ResNetRecipe):
    """resnet at half its widths and 8 epochs: the lab's best accuracy in a fraction of its time.

    The same recipe as resnet (SGD one-cycle, label smoothing, flips and shifts, a
    mirrored copy at test time) on a network with a quarter of the work per image.
    On 25% of CIFAR-10 it passes the lab's best result (0.703, 60 augmented epochs)
    in under a minute of training on two CPU cores; docs/benchmarks.md has the
    side-by-side figures.
    """

    architecture: Literal["resnet_small"] = "resnet_small"
    hyperparameters: SmallResNetHyperparameters = Field(default_factory=SmallResNetHyperparameters)
    epochs: int = Field(8, ge=1, le=500)


DEFINITION = ArchitectureDefinition(
    spec=SmallResNetSpec,
    build=resnet.build,
    estimate_cost=resnet.estimate_cost,
    examples={
        "resnet_small": {
            "summary": "The fast recipe: the lab's best accuracy in a fraction of its time",
            "value": {
                "dataset": "cifar10",
                "sample_fraction": 0.25,
                "architecture": "resnet_small",
                "model_name": "cifar10-resnet-small",
            },
        },
    },
)
