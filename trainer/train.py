"""Training: a validated spec in, a trained model with its history and timings out.

Reads top to bottom like a keras-io example: prepare data → build model →
compile → fit with callbacks. No Redis, no HTTP: progress and cancellation
come in as plain callables.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from trainer.architectures import architecture, build_model
from trainer.augmentation import build_augmenter, flips, oversample
from trainer.data import PreparedData, prepare
from trainer.errors import InvalidInputError, TrainingCancelledError, TrainingDivergedError
from trainer.lookahead import Lookahead
from trainer.optimizers import FusedAdam, FusedAdamW, FusedSGD
from trainer.progress import EpochProgress
from trainer.spec import AnyTrainingSpec
from trainer.test_time import with_test_time_augmentation

ProgressListener = Callable[[EpochProgress], None]
CancelCheck = Callable[[], bool]

# Batches per compiled call. Keras spends a few milliseconds of Python per call
# (callbacks, iterator, metric bookkeeping): on a 2-core EPYC a third of the lab's
# 32/64/128 CNN's step, whose 4 epochs took 11 s instead of 17 with the same
# weights and test accuracy (4 gained nothing in one trial, 16 no more than 8). A cancel is
# seen between calls, so a larger value would delay it.
STEPS_PER_EXECUTION = 8


@dataclass
class TrainingResult:
    model: keras.Model
    data: PreparedData
    history: list[EpochProgress]
    fit_seconds: float
    prepare_seconds: float
    stopped_early: bool
    target_classes: list[str] = field(default_factory=list)
    # Early stopping hands back the best epoch's weights, stopped early or not.
    weights_epoch: int | None = None

    @property
    def epochs_run(self) -> int:
        return len(self.history)


class _ProgressCallback(keras.callbacks.Callback):
    """Reports every finished epoch, with its wall time and learning rate."""

    def __init__(self, epochs: int, listeners: Sequence[ProgressListener]) -> None:
        super().__init__()
        self.epochs = epochs
        self.listeners = listeners
        self.history: list[EpochProgress] = []
        self._epoch_started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        loss = float(logs["loss"])
        learning_rate = _current_learning_rate(self.model)
        if not math.isfinite(loss):
            # The weights are NaN or infinite by now: every further epoch is wasted, and
            # the model must not be registered.
            at_rate = "" if learning_rate is None else f" (learning rate {learning_rate:g})"
            raise TrainingDivergedError(
                f"training diverged: the loss was {loss} after epoch {epoch + 1} of "
                f"{self.epochs}{at_rate}; lower learning_rate, e.g. to a tenth"
            )
        record = EpochProgress(
            epoch=epoch + 1,
            epochs=self.epochs,
            loss=loss,
            accuracy=float(logs["accuracy"]),
            val_loss=_finite_or_none(logs.get("val_loss")),
            val_accuracy=_finite_or_none(logs.get("val_accuracy")),
            seconds=round(time.perf_counter() - self._epoch_started, 3),
            learning_rate=learning_rate,
        )
        self.history.append(record)
        for listener in self.listeners:
            listener(record)


class _CancelCallback(keras.callbacks.Callback):
    """Stops training within STEPS_PER_EXECUTION batches once the caller asks for it.

    Keras calls batch hooks once per compiled call, so that is where a cancel is seen.
    """

    def __init__(self, should_cancel: CancelCheck) -> None:
        super().__init__()
        self.should_cancel = should_cancel

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Raising (rather than setting stop_training) also skips the epoch's
        # validation pass, so a cancel takes effect after this very call.
        if self.should_cancel():
            raise TrainingCancelledError("training was cancelled on request")


def _finite_or_none(value: Any) -> float | None:
    # A validation loss can overflow while the training loss is still a number; the
    # epoch is then reported without it rather than not at all.
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _restored_epoch(early_stopping: keras.callbacks.EarlyStopping | None) -> int | None:
    if early_stopping is None or early_stopping.best_weights is None:
        return None
    return int(early_stopping.best_epoch) + 1


def _current_learning_rate(model: keras.Model) -> float | None:
    try:
        return float(tf.convert_to_tensor(model.optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return None


def _learning_rate(spec: AnyTrainingSpec, total_steps: int) -> Any:
    if spec.lr_schedule == "one_cycle":
        # Warm up from lr/25 to lr over the first 25% of steps, then cosine down
        # to lr/1000: the one-cycle policy that lets small nets train fast.
        warmup_steps = max(1, total_steps // 4)
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=spec.learning_rate / 25,
            decay_steps=max(1, total_steps - warmup_steps),
            alpha=1e-3,
            warmup_target=spec.learning_rate,
            warmup_steps=warmup_steps,
        )
    if spec.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(spec.learning_rate, total_steps, alpha=1e-3)
    return spec.learning_rate


def _optimizer(spec: AnyTrainingSpec, total_steps: int) -> keras.optimizers.Optimizer:
    learning_rate = _learning_rate(spec, total_steps)
    if spec.optimizer == "sgd":
        return FusedSGD(
            learning_rate, momentum=0.9, nesterov=True, weight_decay=spec.weight_decay or None
        )
    if spec.optimizer == "adamw":
        return FusedAdamW(learning_rate, weight_decay=spec.weight_decay)
    return FusedAdam(learning_rate)


class _EpochCounter(keras.callbacks.Callback):
    """Tells the input pipeline which epoch it is feeding, for alternating flips.

    Keras starts each epoch's pass over the dataset after ``on_epoch_begin``.
    """

    def __init__(self, epoch: tf.Variable) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch.assign(epoch)


def _training_dataset(
    spec: AnyTrainingSpec, data: PreparedData, target_classes: list[str], epoch: tf.Variable
) -> tf.data.Dataset:
    """Shuffled, batched, augmented and prefetched training batches.

    ``epoch`` is the epoch being fed (see _EpochCounter): alternating flips depend on it.
    """
    target_indices = [data.info.class_names.index(name) for name in target_classes]
    images, labels = oversample(
        data.train.x, data.train.y, target_indices, factor=spec.augmentation.oversample_factor
    )
    images_tensor = tf.constant(images)
    labels_tensor = tf.constant(labels)
    # Augmenting touches every image, or the target classes' alone (originals and copies).
    only_targets = spec.augmentation.augmented_classes == "targets"
    targets_tensor = tf.constant(target_indices, dtype=labels_tensor.dtype)
    # Which images the first epoch flips; later epochs alternate from there.
    first_flips = tf.constant(np.random.default_rng(spec.seed).random(len(labels)) < 0.5)

    def gather(indices: tf.Tensor) -> tuple[tf.Tensor, ...]:
        flipped = tf.math.logical_xor(tf.gather(first_flips, indices), epoch % 2 == 1)
        return (
            tf.gather(images_tensor, indices),
            tf.gather(labels_tensor, indices),
            flipped,
        )

    dataset = (
        tf.data.Dataset.range(len(labels))
        .shuffle(len(labels), seed=spec.seed, reshuffle_each_iteration=True)
        .batch(spec.batch_size)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    )
    if spec.augmentation.enabled:
        augmenter = build_augmenter(spec.augmentation, data.info, seed=spec.seed)
        alternate = spec.augmentation.alternating_flip and flips(spec.augmentation, data.info)

        def augment(x: tf.Tensor, y: tf.Tensor, flipped: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            # An augmenter with nothing random left (alternating flips only) cannot run.
            augmented = augmenter(x, training=True) if augmenter.layers else x
            if alternate:
                mirrored = tf.reverse(augmented, axis=[2])
                augmented = tf.where(
                    flipped[:, tf.newaxis, tf.newaxis, tf.newaxis], mirrored, augmented
                )
            if only_targets:
                touched = tf.reduce_any(y[:, tf.newaxis] == targets_tensor, axis=1)
                augmented = tf.where(touched[:, tf.newaxis, tf.newaxis, tf.newaxis], augmented, x)
            return augmented, y

        dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda x, y, flipped: (x, y))
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_without_autotuning())


def _without_autotuning() -> tf.data.Options:
    # Keras makes a new iterator over the training batches every epoch. With tf.data's
    # autotuning on, dropping the last one sometimes waited for its tuning thread's
    # sleep, which grows as the iterator ages: a float32 whitened_cnn epoch on an AMX
    # Xeon took 40 s instead of 21 s in 8 of 31 epochs, with both cores idle and the
    # main thread in the iterator's destructor (gdb). Without autotuning, AUTOTUNE means
    # one parallel call per core, which kept each epoch at 21 s; none stalled in 12.
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def train(
    spec: AnyTrainingSpec,
    data_dir: Path | None,
    *,
    target_classes: Sequence[str] = (),
    progress: Sequence[ProgressListener] = (),
    should_cancel: CancelCheck | None = None,
    data: PreparedData | None = None,
    verbose: int = 0,
) -> TrainingResult:
    """Train ``spec``'s architecture on its dataset sample; return model, history, timings.

    ``target_classes`` are the resolved class names for targeted augmentation
    (the caller resolves 'weak' against a reference model). Raises
    TrainingCancelledError when ``should_cancel`` turns true. ``verbose=1``
    shows Keras' progress bar for each epoch.
    """
    keras.utils.set_random_seed(spec.seed)
    started = time.perf_counter()
    if data is None:
        data = prepare(
            spec.dataset,
            data_dir,
            sample_fraction=spec.sample_fraction,
            validation_fraction=spec.validation_fraction,
            seed=spec.seed,
        )
    prepare_seconds = time.perf_counter() - started
    # Preparing a large dataset takes a while: honour a cancel that came meanwhile.
    if should_cancel is not None and should_cancel():
        raise TrainingCancelledError("training was cancelled on request (after data preparation)")
    unknown = sorted(set(target_classes) - set(data.info.class_names))
    if unknown:
        raise InvalidInputError(
            f"augmentation target classes {unknown} are not classes of {spec.dataset}; "
            f"expected some of: {', '.join(data.info.class_names)}"
        )

    model = build_model(
        spec.architecture, spec.hyperparameters, data.info.input_shape, data.info.num_classes
    )
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    train_batches = _training_dataset(spec, data, list(target_classes), epoch)
    steps_per_epoch = int(train_batches.cardinality().numpy())
    model.compile(
        optimizer=_optimizer(spec, steps_per_epoch * spec.epochs),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=spec.label_smoothing)
        if spec.label_smoothing
        else keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    if spec.label_smoothing:
        num_classes = data.info.num_classes
        train_batches = train_batches.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
        validation_labels: Any = keras.utils.to_categorical(data.validation.y, num_classes)
    else:
        validation_labels = data.validation.y

    progress_callback = _ProgressCallback(spec.epochs, progress)
    callbacks: list[keras.callbacks.Callback] = [_EpochCounter(epoch), progress_callback]
    if should_cancel is not None:
        callbacks.append(_CancelCallback(should_cancel))
    if spec.lookahead:
        callbacks.append(Lookahead(total_steps=steps_per_epoch * spec.epochs))
    early_stopping = None
    if spec.early_stopping_patience:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=spec.early_stopping_patience, restore_best_weights=True
        )
        callbacks.append(early_stopping)

    fit_started = time.perf_counter()
    adapt = architecture(spec.architecture).adapt
    if adapt is not None:
        # Part of training's time: a fixed first layer fitted to the data is still fitting.
        # Training images only: validation and test stay unseen.
        adapt(model, data.train.x)
    model.fit(
        train_batches,
        epochs=spec.epochs,
        validation_data=(data.validation.x, validation_labels),
        batch_size=spec.batch_size,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=verbose,
    )
    fit_seconds = time.perf_counter() - fit_started
    if spec.test_time_augmentation != "none":
        # Wrapped before evaluation, so the card's figures are those of the model served.
        model = with_test_time_augmentation(model, spec.test_time_augmentation)
    stopped_early = bool(early_stopping and early_stopping.stopped_epoch > 0)
    return TrainingResult(
        model=model,
        data=data,
        history=progress_callback.history,
        fit_seconds=round(fit_seconds, 3),
        prepare_seconds=round(prepare_seconds, 3),
        stopped_early=stopped_early,
        target_classes=list(target_classes),
        weights_epoch=_restored_epoch(early_stopping),
    )


def inference_copy(model: keras.Model) -> keras.Model:
    """The same network and weights without optimizer state: what the registry stores.

    A network nested in another (test-time views wrap the trained one) keeps its compile
    settings in the outer config; they go too, so a saved file never names an optimizer
    that the serving process would have to know.
    """
    clone = keras.Model.from_config(_without_compile_settings(model.get_config()))
    clone.set_weights(model.get_weights())
    return clone


def _without_compile_settings(config: Any) -> Any:
    if isinstance(config, dict):
        return {
            key: None if key == "compile_config" else _without_compile_settings(value)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [_without_compile_settings(value) for value in config]
    return config
