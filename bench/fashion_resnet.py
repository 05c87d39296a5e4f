"""Issue 9, target 3: ``resnet`` with its own defaults on 25% of Fashion-MNIST (recorded).

Fashion-MNIST comes from ``--data-dir`` (``fashion_mnist.npz``) or, failing that,
from Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``).

    .venv/bin/python -m bench.fashion_resnet [--data-dir DIR] [--registry-dir DIR]
"""

from __future__ import annotations

from bench.harness import run_benchmark
from trainer.architectures.resnet import ResNetSpec

SPEC = ResNetSpec(
    dataset="fashion_mnist", sample_fraction=0.25, seed=42, model_name="bench-fashion-resnet"
)

if __name__ == "__main__":
    run_benchmark("fashion-resnet", "Fashion-MNIST 25%: resnet with its defaults", SPEC)
