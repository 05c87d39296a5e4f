"""Issue 9, target 1 over several seeds: ``whitened_cnn``'s recipe beside the lab's run.

``bench/accuracy_per_time.py`` measures one training beside the lab's run; its
margin over 0.87 was about a tenth of a point, less than one seed's spread. So this
trains the recipe once per training seed — initial weights, shuffling and
augmentation — on the protocol's fixed sample (seed 42, as the lab's), each in a
fresh process set up as a worker is, and judges the accuracy on the mean. The lab's
30-epoch run (float32, plain ``fit``, TensorFlow's default kernels) runs first in the
same script, so accuracy and time come from one run: target 1 is met when the mean
accuracy reaches 0.87 and the mean fit time is no more than the lab's. ``--epochs``
trains another length than the recipe's; ``--float32`` trains in float32 where the
CPU would choose bfloat16, as an AVX2-only CPU does; ``-p NAME=VALUE`` sets one of the
architecture's hyperparameters (repeatable), as the CLI's ``-p`` does.

    flock /tmp/daciavision-bench.lock .venv/bin/python -m bench.whitened_seeds [--seeds 42 43 44]
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.accuracy_per_time import LAB_EPOCHS, lab_run, lab_spec
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
from service.spec_arguments import parse_hyperparameters
from trainer.architectures.base import compute_dtype
from trainer.architectures.whitened_cnn import (
    WhitenedCnnHyperparameters,
    WhitenedCnnSpec,
    group_filters_for,
)
from trainer.kernels import tensorflow_default_environment, training_environment
from trainer.study_presets import LAB_FRACTION
from trainer.train import train

KEY = "whitened-seeds"
GOAL = 0.87


@dataclass(frozen=True)
class SeedRun:
    seed: int
    test_accuracy: float
    fit_seconds: float


def train_one(
    seed: int, data_dir: Path, epochs: int | None, hyperparameters: dict[str, object]
) -> SeedRun:
    data = lab_sample(data_dir)
    settings: dict[str, object] = {"hyperparameters": hyperparameters}
    if epochs is not None:
        settings["epochs"] = epochs
    spec = WhitenedCnnSpec(dataset="cifar10", sample_fraction=LAB_FRACTION, seed=seed, **settings)
    result = train(spec, None, data=data)
    return SeedRun(seed, test_accuracy(result.model, data.test), result.fit_seconds)


def main(argv: list[str] | None = None) -> None:
    parser = side_by_side_arguments(__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, help="Epochs instead of the recipe's.")
    parser.add_argument(
        "--float32", action="store_true", help="Train in float32 even where bfloat16 is faster."
    )
    parser.add_argument(
        "--hyperparameters",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A hyperparameter of whitened_cnn instead of the recipe's (repeatable): VALUE "
        "as JSON, else as text, e.g. -p 'group_filters=[64,192,256]' -p activation=relu.",
    )
    args = parser.parse_args(argv)
    hyperparameters = parse_hyperparameters(args.hyperparameters)
    if args.float32:
        hyperparameters["bfloat16"] = False
    command = locked_command("bench.whitened_seeds", argv)
    meter = CpuMeter()
    lab = in_fresh_process(
        lab_run, lab_spec(), args.data_dir, environment=tensorflow_default_environment()
    )
    print(f"{lab.label}: test accuracy {lab.test_accuracy:.4f}, fit {lab.fit_seconds:.0f} s")
    runs = []
    for seed in args.seeds:
        run = in_fresh_process(
            train_one,
            seed,
            args.data_dir,
            args.epochs,
            hyperparameters,
            environment=training_environment(),
        )
        print(f"seed {seed}: test accuracy {run.test_accuracy:.4f}, fit {run.fit_seconds:.0f} s")
        runs.append(run)
    cpu = meter.stop()

    accuracies = [run.test_accuracy for run in runs]
    mean, spread = mean_and_spread(accuracies)
    mean_seconds = statistics.mean(run.fit_seconds for run in runs)
    rows = "\n".join(
        f"| seed {run.seed} | {run.test_accuracy:.4f} | {run.fit_seconds:,.0f} "
        f"| {run.fit_seconds / lab.fit_seconds:.2f}× |"
        for run in runs
    )
    accurate, in_time = mean >= GOAL, mean_seconds <= lab.fit_seconds
    shortfalls = ([] if accurate else [f"accuracy short by {GOAL - mean:.4f}"]) + (
        [] if in_time else [f"time over by {mean_seconds / lab.fit_seconds - 1:.0%}"]
    )
    verdict = "**met**" if not shortfalls else f"**missed**: {'; '.join(shortfalls)}"
    epochs = args.epochs or WhitenedCnnSpec.model_fields["epochs"].default
    # The precision and widths the runs built: -p bfloat16=... (or --float32), else the
    # CPU's choice, resolved as the architecture resolves them.
    trained = WhitenedCnnHyperparameters(**hyperparameters)
    dtype = compute_dtype(trained.bfloat16)
    precision = "bfloat16" if dtype else "float32"
    widths = "/".join(str(width) for width in group_filters_for(trained, dtype))
    changed = ", ".join(
        f"`{name}={json.dumps(value)}`"
        for name, value in hyperparameters.items()
        if name != "bfloat16"
    )
    recipe = f"its own recipe with {changed}" if changed else "its own recipe"
    # One heading whatever the number of seeds: other sections link to it.
    body = f"""## CIFAR-10 25%: whitened_cnn by training seed beside the lab's run (target 1)

{run_context(cpu)}
- **Protocol:** the lab's 25% CIFAR-10 sample (seed 42). The lab's run first: `custom_cnn`
  64/128/256, {LAB_EPOCHS} epochs, plain `fit` on NumPy arrays in float32 with TensorFlow's
  default kernels. Then `whitened_cnn` with {recipe} ({epochs} epochs, groups of
  {widths} filters, mirror and shifts at test time; {precision}) once per training
  seed, which sets the initial weights, shuffling and augmentation. Each run in a
  fresh process; test accuracy on the 2,500 test images, once per run.

| Run | Test accuracy | Fit seconds | Time vs the lab's run |
|---|---|---|---|
| The lab's run | {lab.test_accuracy:.4f} | {lab.fit_seconds:,.0f} | 1.00× |
{rows}

- **whitened_cnn, mean ± standard deviation:** {mean:.4f} ± {spread:.4f} test accuracy
  ({sum(a >= GOAL for a in accuracies)} of {len(runs)} runs reached {GOAL}), in
  {mean_seconds / lab.fit_seconds:.2f}× the lab's time on the mean.
- **Target 1** (≥ {GOAL} on the mean, in no more time than the lab's run): {verdict}.
"""
    publish(KEY, body, command, args)


if __name__ == "__main__":
    main()
