"""Issue 9, target 2: the lab's best accuracy (0.703) in at most a fifth of the lab's time.

The lab's best figure came from its augmented run: the 64/128/256 custom CNN, 60
epochs, batch 64, Adam at 1e-3, rotation 15°, shifts 0.1, flips and zoom 0.1. Both
contenders train on the same 25% CIFAR-10 sample (seed 42), one after the other,
each in a fresh process (TensorFlow fixes its kernels when it loads):

- **ours**: ``resnet_small`` with its own recipe (``--epochs`` 8 by default, as its
  spec), through ``trainer.train`` — exactly what ``POST /jobs`` with
  ``"architecture": "resnet_small"`` runs; its test accuracy is measured once, after
  training;
- **the lab's pipeline**: plain ``model.fit`` on the NumPy arrays through the lab's own
  ``ImageDataGenerator`` (``tf.keras.preprocessing.image``, which Keras 3 still ships as
  a legacy class) at the lab's settings, ``datagen.flow(x, y, batch_size=64)``, so
  every epoch trains on all images. Its test accuracy is measured after every epoch
  (outside the timed fit) to find when it first reaches the target: the earliest
  epoch, which favours the lab.

The figure is ours' fit time divided by the lab's fit time to the target. If the
lab's pipeline never reaches the target, its whole run is the divisor: it would need
longer than that, so the true share is smaller still.

``--float32`` trains ours in float32 where the CPU would choose bfloat16, as a CPU
without fast bfloat16 trains.

    flock /tmp/daciavision-bench.lock .venv/bin/python -m bench.time_to_lab_best [--epochs 8] \
        [--float32]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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
from bench.lab_pipeline import compile_as_the_lab, float32_model, lab_sample, test_accuracy
from trainer.architectures.resnet_small import SmallResNetSpec
from trainer.kernels import (
    onednn_is_tensorflows_default,
    tensorflow_default_environment,
    training_environment,
)
from trainer.precision import bfloat16_trains_faster
from trainer.study_presets import LAB_FRACTION, VARIATIONS
from trainer.train import train

KEY = "time-to-lab-best"
LAB_BEST = 0.703
TARGET_SHARE = 1 / 5
LAB_EPOCHS = 60
LAB_HYPERPARAMETERS = dict(VARIATIONS)["64/128/256"]


@dataclass
class LabRun:
    """The lab's pipeline: per-epoch fit seconds and the test accuracy after each epoch."""

    epoch_seconds: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    parameters: int = 0

    def seconds_to(self, accuracy: float) -> float | None:
        """Fit seconds until the first epoch whose test accuracy reaches ``accuracy``."""
        for epoch, reached in enumerate(self.test_accuracy):
            if reached >= accuracy:
                return sum(self.epoch_seconds[: epoch + 1])
        return None


@dataclass(frozen=True)
class OurRun:
    test_accuracy: float
    fit_seconds: float
    parameters: int


def our_run(epochs: int, data_dir: Path, float32: bool = False) -> OurRun:
    """``resnet_small`` through ``trainer.train``, as a worker runs it."""
    data = lab_sample(data_dir)
    spec = SmallResNetSpec(
        dataset="cifar10",
        sample_fraction=LAB_FRACTION,
        seed=42,
        epochs=epochs,
        hyperparameters={"bfloat16": False} if float32 else {},
    )
    result = train(spec, None, data=data)
    return OurRun(
        test_accuracy(result.model, data.test), result.fit_seconds, result.model.count_params()
    )


def _report_epoch(run: LabRun) -> None:
    print(
        f"lab epoch {len(run.epoch_seconds)}: test accuracy {run.test_accuracy[-1]:.4f}, "
        f"fit so far {sum(run.epoch_seconds):.0f} s",
        flush=True,
    )


def lab_pipeline(epochs: int, data_dir: Path) -> LabRun:
    """The lab's augmented run as the lab wrote it: its ImageDataGenerator into ``fit``."""
    import keras
    import tensorflow as tf

    data = lab_sample(data_dir)
    keras.utils.set_random_seed(42)
    model = float32_model("custom_cnn", LAB_HYPERPARAMETERS, data)
    datagen = tf.keras.preprocessing.image.ImageDataGenerator(
        rotation_range=15,
        width_shift_range=0.1,
        height_shift_range=0.1,
        horizontal_flip=True,
        zoom_range=0.1,
    )
    compile_as_the_lab(model, 1e-3)
    run = LabRun(parameters=model.count_params())

    class Clock(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            run.epoch_seconds.append(time.perf_counter() - self.started)
            run.test_accuracy.append(test_accuracy(model, data.test))
            _report_epoch(run)

    model.fit(
        datagen.flow(data.train.x, data.train.y, batch_size=64, seed=42),
        epochs=epochs,
        callbacks=[Clock()],
        verbose=0,
    )
    return run


def main(argv: list[str] | None = None) -> None:
    parser = side_by_side_arguments(__doc__.split("\n")[0])
    parser.add_argument(
        "--epochs",
        type=int,
        default=SmallResNetSpec.model_fields["epochs"].default,
        help="resnet_small's epochs (default: its recipe's)",
    )
    parser.add_argument("--lab-epochs", type=int, default=LAB_EPOCHS)
    parser.add_argument(
        "--float32", action="store_true", help="Ours in float32 even where bfloat16 is faster."
    )
    args = parser.parse_args(argv)
    command = locked_command("bench.time_to_lab_best", argv)
    data = lab_sample(args.data_dir)
    meter = CpuMeter()
    # Each contender in a fresh process: ours set up as a worker is (trainer.kernels),
    # the lab's with TensorFlow's default kernels for this CPU, as the lab ran.
    ours = in_fresh_process(
        our_run, args.epochs, args.data_dir, args.float32, environment=training_environment()
    )
    ours_accuracy, ours_parameters = ours.test_accuracy, ours.parameters
    print(
        f"ours: resnet_small, {args.epochs} epochs: test accuracy {ours_accuracy:.4f}, "
        f"fit {ours.fit_seconds:.0f} s",
        flush=True,
    )
    lab = in_fresh_process(
        lab_pipeline, args.lab_epochs, args.data_dir, environment=tensorflow_default_environment()
    )
    cpu = meter.stop()

    lab_total = sum(lab.epoch_seconds)
    lab_to_best = lab.seconds_to(LAB_BEST)
    lab_best = max(lab.test_accuracy)
    divisor = lab_to_best if lab_to_best is not None else lab_total
    share = ours.fit_seconds / divisor
    reached = ours_accuracy >= LAB_BEST
    if not reached:
        verdict = f"**missed**: ours reached {ours_accuracy:.3f}, below {LAB_BEST}"
    elif share <= TARGET_SHARE:
        verdict = f"**met**: {share:.3f} of the lab's time (1/{1 / share:.1f})"
    else:
        verdict = f"**missed**: {share:.3f} of the lab's time, goal {TARGET_SHARE:.2f}"
    lab_reach = (
        f"first reached {LAB_BEST} after epoch "
        f"{next(i for i, a in enumerate(lab.test_accuracy, 1) if a >= LAB_BEST)}, "
        f"{lab_to_best:.0f} s of fit"
        if lab_to_best is not None
        else f"never reached {LAB_BEST} in {args.lab_epochs} epochs, so its whole run is the "
        "divisor (it would need longer: the true share is smaller still)"
    )
    lab_row = (
        f"| Lab pipeline, {args.lab_epochs} epochs | best {lab_best:.4f}, "
        f"last {lab.test_accuracy[-1]:.4f} | {lab_total:,.0f} | {lab.parameters:,} |"
    )
    ours_row = (
        f"| `resnet_small`, {args.epochs} epochs | {ours_accuracy:.4f} "
        f"| {ours.fit_seconds:,.0f} | {ours_parameters:,} |"
    )
    if args.float32:
        precision = "float32, as asked (`--float32`), as a CPU without fast bfloat16 trains"
    elif bfloat16_trains_faster():
        precision = "bfloat16 (measured faster on this CPU)"
    else:
        precision = "float32"
    lab_kernels = (
        "oneDNN (TensorFlow's default on this CPU)"
        if onednn_is_tensorflows_default()
        else "Eigen (TensorFlow's default on a CPU without AVX-512-VNNI, AVX-512-BF16 or AMX)"
    )
    body = f"""## Time to the lab's best accuracy (target 2)

{run_context(cpu)}
- **Protocol:** the 25% CIFAR-10 sample ({len(data.train):,} training images, seed 42),
  {len(data.test):,} test images. The lab's pipeline: the 64/128/256 custom CNN with
  the lab's `ImageDataGenerator` (rotation 15°, shifts 0.1, horizontal flips, zoom
  0.1; `datagen.flow` on the NumPy arrays into `model.fit`) in float32 with
  {lab_kernels} kernels, batch 64, Adam 1e-3, {args.lab_epochs} epochs, test
  accuracy after every epoch (outside the timed fit). Ours: `resnet_small` (`resnet`
  at half its widths, its recipe: SGD one-cycle, label smoothing, flips and shifts),
  {args.epochs} epochs, computing in {precision} with oneDNN kernels, as a worker
  does. Each in a fresh process.

| Run | Test accuracy | Fit seconds | Parameters |
|---|---|---|---|
{lab_row}
{ours_row}

The lab's pipeline {lab_reach}. Ours took {share:.3f} of that time: {verdict}.
"""
    publish(KEY, body, command, args)


if __name__ == "__main__":
    main()
