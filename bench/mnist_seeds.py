"""Issue 9, target 3 over several seeds: ``resnet``'s defaults on 25% of MNIST (goal ≥ 0.995).

One run says little here: on 2,500 test images the goal is at most 12 wrong, and
the same seed-42 recipe gave 15, 14 and 11 wrong on three runs on two kinds of
CPU (bfloat16 and oneDNN do not add up in a fixed order). So this trains the recipe once per seed —
each seed draws its own 25% sample, splits and initial weights — each in a fresh
process set up as a worker is, and judges the target on the mean.

    flock /tmp/daciavision-bench.lock .venv/bin/python -m bench.mnist_seeds [--seeds 42 43 44]
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    locked_command,
    mean_and_spread,
    publish,
    run_context,
    runs_per_seed,
    side_by_side_arguments,
)
from trainer.architectures.resnet import ResNetSpec
from trainer.registry import FileModelRegistry
from trainer.run import train_and_register

KEY = "mnist-seeds"
GOAL = 0.995


@dataclass(frozen=True)
class SeedRun:
    seed: int
    test_accuracy: float
    test_images: int
    fit_seconds: float
    compute_precision: str | None


def train_one(seed: int, data_dir: Path) -> SeedRun:
    spec = ResNetSpec(dataset="mnist", sample_fraction=0.25, seed=seed, model_name="mnist-seed")
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as scratch:
        card = train_and_register(
            spec, data_dir=data_dir, registry=FileModelRegistry(Path(scratch))
        ).card
    return SeedRun(
        seed=seed,
        test_accuracy=card.metrics.test.accuracy,
        test_images=card.dataset.test_samples,
        fit_seconds=card.timings.fit_seconds,
        compute_precision=card.compute_precision,
    )


def main(argv: list[str] | None = None) -> None:
    parser = side_by_side_arguments(__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    args = parser.parse_args(argv)
    command = locked_command("bench.mnist_seeds", argv)
    runs, cpu = runs_per_seed(train_one, args.seeds, args.data_dir)
    for run in runs:
        wrong = round((1 - run.test_accuracy) * run.test_images)
        print(f"seed {run.seed}: test accuracy {run.test_accuracy:.4f} ({wrong} wrong)")
    accuracies = [run.test_accuracy for run in runs]
    mean, spread = mean_and_spread(accuracies)
    rows = "\n".join(
        f"| {run.seed} | {run.test_accuracy:.4f} "
        f"| {round((1 - run.test_accuracy) * run.test_images)} of {run.test_images:,} "
        f"| {run.fit_seconds:,.0f} | {run.compute_precision} |"
        for run in runs
    )
    verdict = (
        "**met**" if mean >= GOAL else f"**missed** by {GOAL - mean:.4f} (mean against {GOAL})"
    )
    met_by = sum(accuracy >= GOAL for accuracy in accuracies)
    body = f"""## MNIST 25% over {len(runs)} seeds: resnet with its defaults (target 3)

{run_context(cpu)}
- **Protocol:** `resnet` as `POST /jobs` builds it from the architecture, `mnist` and
  a fraction of 0.25 alone; each seed draws its own stratified sample, splits and
  initial weights, and trains in a fresh process set up as a worker is.

| Seed | Test accuracy | Wrong | Fit seconds | Precision |
|---|---|---|---|---|
{rows}

- **Mean ± standard deviation:** {mean:.4f} ± {spread:.4f}; {met_by} of {len(runs)} runs
  reached {GOAL}.
- **Target 3** (≥ {GOAL} test accuracy): {verdict}.
"""
    publish(KEY, body, command, args)


if __name__ == "__main__":
    main()
