"""The best recipe per training time: ``whitened_cnn`` with its defaults on 25% of CIFAR-10.

Target 1's recipe (whitened 2×2 patches, three conv groups, 10 epochs, lookahead, label
smoothing, flips and whole-pixel shifts, mirror and shifts at test time), trained and
registered as a job with nothing but the data set is: the card's full report (macro F1,
weak classes, model file) beside the lab baseline's and the ``resnet``'s in the summary
of docs/benchmarks.md. Accuracy over seeds and against the lab's time in the same
script is ``bench.whitened_seeds``'s.

    .venv/bin/python -m bench.best_recipe [--data-dir DIR] [--registry-dir DIR]
"""

from __future__ import annotations

from bench.harness import run_benchmark
from trainer.architectures.whitened_cnn import WhitenedCnnSpec

SPEC = WhitenedCnnSpec(
    dataset="cifar10", sample_fraction=0.25, seed=42, model_name="bench-best-recipe"
)

if __name__ == "__main__":
    run_benchmark("best-recipe", "Best recipe: whitened_cnn with its defaults, 10 epochs", SPEC)
