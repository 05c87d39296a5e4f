"""Issue 9, target 1's recipe on CIFAR-10 test images nothing was ever tuned on.

``whitened_cnn``'s widths and epochs were chosen by comparing accuracies on the lab's
2,500-image test sample, the very sample target 1 is judged on. A choice among a few
settings by the judging set flatters the chosen one a little. CIFAR-10's other 7,500
test images were never looked at by anything: this trains the recipe as target 1 does
(the lab's 25% sample, seed 42, the precision this CPU trains in; one training per
``--seeds``), each in a fresh process set up as a worker is, and reports its accuracy
on both test sets. Their difference is how much the choice flattered the figure.

    flock /tmp/daciavision-bench.lock .venv/bin/python -m bench.holdout [--seeds 42]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from bench.harness import (
    CpuMeter,
    in_fresh_process,
    locked_command,
    mean_and_spread,
    publish,
    run_context,
    side_by_side_arguments,
)
from bench.lab_pipeline import lab_sample, test_accuracy
from trainer.architectures.base import compute_dtype
from trainer.architectures.whitened_cnn import WhitenedCnnSpec
from trainer.data import Split, load_raw, normalize
from trainer.kernels import training_environment
from trainer.study_presets import LAB_FRACTION
from trainer.train import train

KEY = "holdout"
GOAL = 0.87


def unseen_test_images(data_dir: Path) -> Split:
    """CIFAR-10's test images outside the lab's 25% test sample.

    The sample is ``train_test_split(..., test_size=0.25, stratify=y, random_state=42)``'s
    second half (``trainer.data.stratified_sample``); the same call on the indices gives
    the same split, so its first half is every test image the lab's sample left out.
    """
    raw = load_raw("cifar10", data_dir)
    indices = np.arange(len(raw.y_test))
    left_out, sampled = train_test_split(
        indices, test_size=LAB_FRACTION, stratify=raw.y_test, random_state=42
    )
    lab = lab_sample(data_dir).test
    same = np.array_equal(raw.y_test[sampled], lab.y)
    if not same or not np.array_equal(normalize(raw.x_test[sampled]), lab.x):
        raise RuntimeError("the indices do not reproduce the lab's test sample")
    return Split(normalize(raw.x_test[left_out]), raw.y_test[left_out])


@dataclass(frozen=True)
class HoldoutRun:
    seed: int
    lab_test_accuracy: float
    unseen_accuracy: float
    unseen_images: int
    fit_seconds: float
    precision: str


def train_one(seed: int, data_dir: Path) -> HoldoutRun:
    data = lab_sample(data_dir)
    spec = WhitenedCnnSpec(dataset="cifar10", sample_fraction=LAB_FRACTION, seed=seed)
    result = train(spec, None, data=data)
    unseen = unseen_test_images(data_dir)
    return HoldoutRun(
        seed,
        test_accuracy(result.model, data.test),
        test_accuracy(result.model, unseen),
        len(unseen.y),
        result.fit_seconds,
        compute_dtype(spec.hyperparameters.bfloat16) or "float32",
    )


def main(argv: list[str] | None = None) -> None:
    parser = side_by_side_arguments(__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    args = parser.parse_args(argv)
    command = locked_command("bench.holdout", argv)
    meter = CpuMeter()
    runs = []
    for seed in args.seeds:
        run = in_fresh_process(train_one, seed, args.data_dir, environment=training_environment())
        print(
            f"seed {seed}: lab test sample {run.lab_test_accuracy:.4f}, unseen test images "
            f"{run.unseen_accuracy:.4f}, fit {run.fit_seconds:.0f} s",
            flush=True,
        )
        runs.append(run)
    cpu = meter.stop()

    rows = "\n".join(
        f"| {run.seed} | {run.lab_test_accuracy:.4f} | {run.unseen_accuracy:.4f} | "
        f"{run.unseen_accuracy - run.lab_test_accuracy:+.4f} | {run.fit_seconds:,.0f} |"
        for run in runs
    )
    unseen_mean, unseen_spread = mean_and_spread([run.unseen_accuracy for run in runs])
    lab_mean, lab_spread = mean_and_spread([run.lab_test_accuracy for run in runs])
    verdict = "**met**" if unseen_mean >= GOAL else "**missed**"
    header = (
        f"| Seed | Lab's test sample (2,500) | Unseen test images ({runs[0].unseen_images:,}) "
        "| Difference | Fit seconds |"
    )
    body = f"""## Target 1's recipe on test images nothing was tuned on

{run_context(cpu)}
- **Why:** `whitened_cnn`'s widths and epochs were chosen by comparing accuracies on the
  lab's 2,500-image test sample, the one target 1 is judged on. CIFAR-10's other
  {runs[0].unseen_images:,} test images were never looked at by anything, so they say
  whether the choice flattered the figure.
- **Protocol:** target 1's (the lab's 25% sample, seed 42; `whitened_cnn` with its
  recipe, computing in {runs[0].precision}, in a fresh process set up as a worker is),
  one training per seed, each scored on both test sets.

{header}
|---|---|---|---|---|
{rows}

On the unseen images: {unseen_mean:.4f} ± {unseen_spread:.4f}, against
{lab_mean:.4f} ± {lab_spread:.4f} on the lab's sample (mean ± standard deviation over
{len(runs)} seed(s)); against target 1's accuracy goal of 0.87: {verdict}.
"""
    publish(KEY, body, command, args)


if __name__ == "__main__":
    main()
