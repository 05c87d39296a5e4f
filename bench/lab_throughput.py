"""Issue 9, target 4: the lab's own models, trained by our pipeline vs plain ``model.fit``.

For each lab model (the three custom_cnn variations and alexnet, their lab recipes:
batch 64, Adam at 1e-3, no augmentation) on the lab's 25% CIFAR-10 sample, in turns:

- **plain**: what the lab ran — ``model.fit`` on the NumPy arrays, float32, with
  TensorFlow's default kernels for this CPU;
- **plain with oneDNN**: the same with TensorFlow's oneDNN kernels on, which it
  enables by default only on CPUs with AVX-512-VNNI, AVX-512-BF16 or AMX — to show
  how much of the gain is the kernels alone;
- **ours**: ``trainer.train``, the path every job and study takes, in a process set
  up as a worker is (``trainer.kernels``: oneDNN on): a ``tf.data`` input, 8 steps
  per compiled call, fused optimizer updates (``trainer.optimizers``) and, where
  the CPU computes bfloat16 natively, mixed bfloat16 (the architectures'
  ``bfloat16`` default); with ``--float32``, float32 as a CPU without fast bfloat16
  trains (an AVX2-only one, or C of ``docs/benchmarks.md``).

Each run is a fresh process, since TensorFlow fixes its kernels when it loads.
Where oneDNN is TensorFlow's default, plain ``fit`` already runs with it, and the
second contender is not run again.

Images per second come from the epochs after the first (which also traces the
graph). The contenders alternate for ``--rounds`` rounds, and each one's figure is
the median of its epochs over all rounds: on a shared 2-core host one process's
epochs can run 20–40% slower than the next one's, which a single run per contender
would credit to one side. A few epochs measure speed, not the final accuracy; the
validation accuracy after the last epoch, the mean over the rounds, is printed beside
it as a check that both learn alike.

    flock /tmp/daciavision-bench.lock .venv/bin/python -m bench.lab_throughput [--epochs 3] \
        [--rounds 2] [--float32] [--models LABEL ...]
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    CpuMeter,
    in_fresh_process,
    locked_command,
    publish,
    run_context,
    side_by_side_arguments,
)
from bench.lab_pipeline import compile_as_the_lab, float32_model, lab_sample
from trainer.architectures.alexnet import AlexNetSpec
from trainer.architectures.custom_cnn import CustomCnnSpec
from trainer.data import PreparedData
from trainer.kernels import (
    onednn_is_tensorflows_default,
    tensorflow_default_environment,
    training_environment,
)
from trainer.precision import preferred_verdict as precision_verdict
from trainer.study_presets import LAB_FRACTION, VARIATIONS
from trainer.train import train

KEY = "lab-throughput"
TARGET_RATIO = 1.3
HEADER = (
    "| Model | Plain `fit`, images/s | Plain `fit` with oneDNN | Ours, images/s | Ratio "
    "| Val. accuracy after {epochs} epochs, mean of the rounds (plain / ours) | Target |\n"
    "|---|---|---|---|---|---|---|"
)


@dataclass(frozen=True)
class Pace:
    """One run's images/s in each epoch after the first, and its final validation accuracy."""

    epoch_rates: tuple[float, ...]
    val_accuracy: float

    @property
    def images_per_second(self) -> float:
        return statistics.median(self.epoch_rates)


def pooled(runs: list[Pace]) -> Pace:
    """Several runs of one contender as one: all their epochs, their mean accuracy.

    The runs share the seed and usually agree; where the order of oneDNN's threaded sums
    makes them differ, the mean stands for the contender better than the last run.
    """
    rates = tuple(rate for run in runs for rate in run.epoch_rates)
    return Pace(rates, statistics.mean(run.val_accuracy for run in runs))


def lab_specs(epochs: int, float32: bool = False) -> list[tuple[str, Any]]:
    """The lab's models by label, each with its lab recipe; ``float32`` forces that precision.

    Otherwise the architectures' own choice: bfloat16 where it measured faster.
    """
    common = {"dataset": "cifar10", "sample_fraction": LAB_FRACTION, "seed": 42, "epochs": epochs}
    precision = {"bfloat16": False} if float32 else {}
    specs: list[tuple[str, Any]] = [
        (
            f"custom_cnn {label}",
            CustomCnnSpec(hyperparameters=hp.model_copy(update=precision), **common),
        )
        for label, hp in VARIATIONS
    ]
    specs.append(("alexnet", AlexNetSpec(hyperparameters=precision, **common)))
    return specs


def _spec_and_data(
    label: str, epochs: int, data_dir: Path, float32: bool = False
) -> tuple[Any, PreparedData]:
    spec = dict(lab_specs(epochs, float32))[label]
    return spec, lab_sample(data_dir)


def plain_fit(label: str, epochs: int, data_dir: Path) -> Pace:
    """The lab's pipeline: the same model compiled as the lab did (float32), on NumPy arrays."""
    import keras

    spec, data = _spec_and_data(label, epochs, data_dir)
    keras.utils.set_random_seed(spec.seed)
    model = float32_model(spec.architecture, spec.hyperparameters, data)
    compile_as_the_lab(model, spec.learning_rate)
    seconds: list[float] = []

    class Clock(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            seconds.append(time.perf_counter() - self.started)

    history = model.fit(
        data.train.x,
        data.train.y,
        batch_size=spec.batch_size,
        epochs=spec.epochs,
        validation_data=(data.validation.x, data.validation.y),
        callbacks=[Clock()],
        verbose=0,
    )
    return Pace(_rates(len(data.train), seconds), float(history.history["val_accuracy"][-1]))


def our_fit(label: str, epochs: int, data_dir: Path, float32: bool) -> Pace:
    spec, data = _spec_and_data(label, epochs, data_dir, float32)
    result = train(spec, None, data=data)
    seconds = [record.seconds for record in result.history]
    return Pace(_rates(len(data.train), seconds), float(result.history[-1].val_accuracy or 0.0))


def _run_medians(runs: list[Pace]) -> str:
    return ", ".join(f"{run.images_per_second:,.0f}" for run in runs)


def _rates(images: int, epoch_seconds: list[float]) -> tuple[float, ...]:
    steady = epoch_seconds[1:] or epoch_seconds
    return tuple(images / seconds for seconds in steady)


def main(argv: list[str] | None = None) -> None:
    parser = side_by_side_arguments(__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument(
        "--float32", action="store_true", help="Ours in float32 even where bfloat16 is faster."
    )
    parser.add_argument(
        "--rounds",
        type=int,
        choices=range(1, 11),
        default=2,
        metavar="1-10",
        help="rounds of alternating runs (default 2)",
    )
    labels = [label for label, _ in lab_specs(1)]
    parser.add_argument(
        "--models",
        nargs="+",
        choices=labels,
        default=labels,
        metavar="LABEL",
        help=f"the lab models to run, by label (default: all four: {'; '.join(labels)})",
    )
    args = parser.parse_args(argv)
    command = locked_command("bench.lab_throughput", argv)
    lab_kernels, our_kernels = tensorflow_default_environment(), training_environment()
    onednn_by_default = onednn_is_tensorflows_default()
    meter = CpuMeter()
    rows = []
    for label in args.models:
        run = (label, args.epochs, args.data_dir)
        plain_runs, onednn_runs, our_runs = [], [], []
        for _ in range(args.rounds):
            plain_runs.append(in_fresh_process(plain_fit, *run, environment=lab_kernels))
            if not onednn_by_default:
                onednn_runs.append(in_fresh_process(plain_fit, *run, environment=our_kernels))
            our_runs.append(in_fresh_process(our_fit, *run, args.float32, environment=our_kernels))
        plain, ours = pooled(plain_runs), pooled(our_runs)
        plain_onednn = (
            "the same" if onednn_by_default else f"{pooled(onednn_runs).images_per_second:,.0f}"
        )
        ratio = ours.images_per_second / plain.images_per_second
        print(
            f"{label}: plain {plain.images_per_second:.0f} img/s (val {plain.val_accuracy:.3f}; "
            f"runs {_run_medians(plain_runs)}), plain with oneDNN {plain_onednn}, "
            f"ours {ours.images_per_second:.0f} img/s (val {ours.val_accuracy:.3f}; "
            f"runs {_run_medians(our_runs)}): {ratio:.2f}×",
            flush=True,
        )
        met = "**met**" if ratio >= TARGET_RATIO else f"**missed** by {TARGET_RATIO - ratio:.2f}×"
        rows.append(
            f"| {label} | {plain.images_per_second:,.0f} ({_run_medians(plain_runs)}) "
            f"| {plain_onednn} | {ours.images_per_second:,.0f} ({_run_medians(our_runs)}) "
            f"| {ratio:.2f}× | {plain.val_accuracy:.3f} / {ours.val_accuracy:.3f} | {met} |"
        )
    cpu = meter.stop()
    verdict = precision_verdict()
    # The reason has a parenthesis of its own; inside ours it reads better unnested.
    reason = verdict.reason.replace(" (", ", ").rstrip(")")
    own_choice = "bfloat16" if verdict.use_bfloat16 else "float32"
    if args.float32:
        precision = (
            "computes in float32 like plain `fit`, as asked (`--float32`), as a CPU without "
            f"fast bfloat16 trains; this CPU's own choice would be {own_choice} ({reason})"
        )
    elif verdict.use_bfloat16:
        precision = (
            "runs the layers in mixed bfloat16 (weights and the softmax stay float32), which "
            f"measured faster here ({reason}); plain `fit` runs float32 as the lab did"
        )
    else:
        precision = (
            f"computes in float32 like plain `fit`: bfloat16 measured slower here ({reason})"
        )
    default_kernels = (
        "oneDNN, which TensorFlow enables by default on this CPU, so plain `fit` with oneDNN "
        "is plain `fit` itself and is not run twice"
        if onednn_by_default
        else "Eigen's: TensorFlow enables oneDNN by default only on CPUs with AVX-512-VNNI, "
        "AVX-512-BF16 or AMX, which this one lacks"
    )
    training_images = len(lab_sample(args.data_dir).train)
    body = f"""## Lab models: our training pipeline vs plain `model.fit` (target 4)

{run_context(cpu)}
- **Protocol:** the lab's recipes (batch 64, Adam 1e-3, no augmentation) on the 25%
  CIFAR-10 sample ({training_images:,} training images), {args.epochs} epochs per run,
  each run in a fresh process, model by model, plain and ours alternating for
  {args.rounds} rounds; images/s is the median of all rounds' epochs after the first
  (in brackets: each run's median). Goal: ours ≥ {TARGET_RATIO}× plain at equal accuracy.

{HEADER.format(epochs=args.epochs)}
{chr(10).join(rows)}

Plain `fit` runs as the lab did, with TensorFlow's default kernels for this CPU:
{default_kernels}. Ours runs as a worker does: TensorFlow's oneDNN kernels on
(`trainer/kernels.py`), a shuffled, batched and prefetched `tf.data` input, 8 steps
per compiled call, each variable's optimizer update in one kernel
(`trainer/optimizers.py`), and it
{precision}. XLA (`jit_compile=True`) is not used: tried by hand it made the custom
CNN's training step about 4× slower on an AVX-512 EPYC and 6× slower on an AVX2-only one.
"""
    left_out = [label for label in labels if label not in args.models]
    if left_out:
        body += (
            f"\n**Not run this time** (`--models`): {'; '.join(left_out)}; their last "
            "figures are in [the history](benchmark-history.md).\n"
        )
    publish(KEY, body, command, args)


if __name__ == "__main__":
    main()
