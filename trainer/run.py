"""One training run end to end: train → evaluate → register a new version.

Shared by the CLI (in-process) and the Celery task (in a worker child), so
both produce identical model cards.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np

from trainer.card import (
    CardMetrics,
    DatasetSample,
    InferenceTiming,
    LayerSummary,
    ModelCard,
    Timings,
    TrainingRecord,
)
from trainer.data import Split
from trainer.errors import TrainingCancelledError
from trainer.evaluate import evaluate, evaluate_predictions, predict_probabilities
from trainer.files import utc_timestamp
from trainer.registry import FileModelRegistry
from trainer.spec import AnyTrainingSpec
from trainer.test_time import images_per_batch
from trainer.train import CancelCheck, ProgressListener, TrainingResult, inference_copy, train

# The training split's accuracy is a diagnostic, set against validation's to show how
# closely the model fits its own images: a random sample of this many of them estimates
# it within about a point (95%). The whole split took 140 s after a 290 s training on
# the 25% CIFAR-10 sample (whitened_cnn, ten test-time views per image), and would take
# ten minutes on all of CIFAR-10.
TRAIN_ACCURACY_IMAGES = 2_500


@dataclass(frozen=True)
class RegisteredModel:
    model_name: str
    version: int
    card: ModelCard


def resolve_target_classes(spec: AnyTrainingSpec, registry: FileModelRegistry) -> list[str]:
    """Class names to oversample; 'weak' reads them from the reference model's card.

    The weak classes come from the reference's *validation* report, so that
    choosing what to augment never looks at the test set.
    """
    targets = spec.augmentation.target_classes
    if targets != "weak":
        return list(targets)
    reference = spec.augmentation.reference_model
    assert reference is not None  # the spec validator guarantees it
    version = registry.resolve(reference.model_name, reference.version)
    card = registry.get_card(reference.model_name, version)
    return [weak.class_name for weak in card.metrics.validation.weak_classes]


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for distribution in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "scikit-learn"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _layers(model: Any) -> list[LayerSummary]:
    summaries = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            # A network inside a wrapper (test-time augmentation): list its own layers.
            summaries.extend(_layers(layer))
            continue
        summaries.append(
            LayerSummary(
                name=layer.name,
                layer_type=type(layer).__name__,
                output_shape=list(getattr(layer.output, "shape", ())),
                parameters=int(layer.count_params()),
            )
        )
    return summaries


def _dtype_policies(model: Any) -> set[str]:
    policies = set()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            policies |= _dtype_policies(layer)
        else:
            policies.add(layer.dtype_policy.name)
    return policies


def _compute_precision(model: Any) -> Literal["float32", "mixed_bfloat16"]:
    return "mixed_bfloat16" if "mixed_bfloat16" in _dtype_policies(model) else "float32"


def _inference_timing(model: Any, input_shape: tuple[int, ...]) -> InferenceTiming:
    """Median single-image latency and batch throughput of the traced forward pass.

    Traced as a server runs it (one graph per batch size), not the eager call, whose
    Python overhead dwarfs the work of a small model.
    """
    import tensorflow as tf

    forward = tf.function(lambda images: model(images, training=False))
    # 256 inputs to the network: 25 images with ten test-time views.
    batch_size = images_per_batch(model, 256)
    single = tf.zeros((1, *input_shape), dtype=tf.float32)
    batch = tf.zeros((batch_size, *input_shape), dtype=tf.float32)
    forward(single)  # the first calls trace; time the ones after
    forward(batch)
    latencies = []
    for _ in range(50):
        started = time.perf_counter()
        forward(single).numpy()
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(3):
        forward(batch).numpy()
    batch_seconds = (time.perf_counter() - started) / 3
    return InferenceTiming(
        batch1_milliseconds=round(1000 * statistics.median(latencies), 3),
        batch_size=batch_size,
        images_per_second=round(batch_size / batch_seconds, 1),
    )


def training_split_accuracy(model: Any, train: Split, seed: int) -> tuple[float, int]:
    """The model's accuracy on its training split, or on ``TRAIN_ACCURACY_IMAGES`` of it
    drawn at random with ``seed``; and how many images it was measured on."""
    rows = np.arange(len(train))
    if len(rows) > TRAIN_ACCURACY_IMAGES:
        chosen = np.random.default_rng(seed).choice(rows, TRAIN_ACCURACY_IMAGES, replace=False)
        rows = np.sort(chosen)
    predicted = predict_probabilities(model, train.x[rows]).argmax(axis=1)
    return float(np.mean(predicted == train.y[rows])), len(rows)


def build_record(
    spec: AnyTrainingSpec, result: TrainingResult, job_id: str | None
) -> TrainingRecord:
    """Everything a reader of the model needs: spec, data, metrics, history, timings."""
    data = result.data
    evaluate_started = time.perf_counter()
    test_probabilities = predict_probabilities(result.model, data.test.x)
    test_report = evaluate_predictions(data.test.y, test_probabilities, data.info.class_names)
    validation_report = evaluate(
        result.model, data.validation.x, data.validation.y, data.info.class_names
    )
    # The training split as validation is measured: the history's accuracy ran with dropout
    # and augmentation on, so it cannot tell whether the model fits its images too well.
    train_accuracy, train_accuracy_samples = training_split_accuracy(
        result.model, data.train, spec.seed
    )
    evaluate_seconds = time.perf_counter() - evaluate_started
    weights_epoch = result.weights_epoch or result.epochs_run
    final_train_accuracy = result.history[weights_epoch - 1].accuracy
    return TrainingRecord(
        job_id=job_id,
        architecture=spec.architecture,
        spec=spec,
        dataset=DatasetSample(
            name=data.info.name,
            source=data.source,
            sample_fraction=spec.sample_fraction,
            seed=spec.seed,
            train_samples=len(data.train),
            validation_samples=len(data.validation),
            test_samples=len(data.test),
        ),
        class_names=list(data.info.class_names),
        input_shape=data.info.input_shape,
        parameter_count=int(result.model.count_params()),
        augmentation_target_classes=result.target_classes,
        metrics=CardMetrics(
            test=test_report,
            validation=validation_report,
            final_train_accuracy=round(final_train_accuracy, 6),
            validation_accuracy=validation_report.accuracy,
            generalization_gap=round(final_train_accuracy - validation_report.accuracy, 6),
            train_accuracy=round(train_accuracy, 6),
            train_accuracy_samples=train_accuracy_samples,
        ),
        history=result.history,
        timings=Timings(
            prepare_seconds=result.prepare_seconds,
            fit_seconds=result.fit_seconds,
            epochs_run=result.epochs_run,
            stopped_early=result.stopped_early,
            weights_epoch=weights_epoch,
            seconds_per_epoch=round(result.fit_seconds / max(1, result.epochs_run), 3),
            evaluate_seconds=round(evaluate_seconds, 3),
        ),
        library_versions=_library_versions(),
        trained_at=utc_timestamp(),
        layers=_layers(result.model),
        test_predictions=[int(label) for label in test_probabilities.argmax(axis=1)],
        inference=_inference_timing(result.model, data.info.input_shape),
        compute_precision=_compute_precision(result.model),
    )


def train_and_register(
    spec: AnyTrainingSpec,
    *,
    data_dir: Path | None,
    registry: FileModelRegistry,
    job_id: str | None = None,
    progress: Sequence[ProgressListener] = (),
    should_cancel: CancelCheck | None = None,
    confirm_publish: Callable[[], object] | None = None,
    verbose: int = 0,
) -> RegisteredModel:
    """Train ``spec``, evaluate once on the test split, register the result as a new version.

    ``should_cancel`` is honoured between every phase (data, each training batch,
    evaluation, registration), not only while Keras trains. ``confirm_publish`` runs
    right before the version is published, to stop it by raising: the worker asks the
    job store itself there, whose answer a background poll may not have brought yet.
    """

    def check_cancel(phase: str) -> None:
        if should_cancel is not None and should_cancel():
            raise TrainingCancelledError(f"training was cancelled on request ({phase})")

    check_cancel("before preparing the data")
    target_classes = resolve_target_classes(spec, registry)
    result = train(
        spec,
        data_dir,
        target_classes=target_classes,
        progress=progress,
        should_cancel=should_cancel,
        verbose=verbose,
    )
    check_cancel("before evaluation")
    record = build_record(spec, result, job_id)
    check_cancel("before registration")
    servable = inference_copy(result.model)

    def check_cancel_before_publishing() -> None:
        # Saving takes seconds: whatever came meanwhile stops the version now or never.
        check_cancel("before publishing")
        if confirm_publish is not None:
            confirm_publish()

    version = registry.register(
        spec.registered_name, servable.save, record, check_cancel_before_publishing
    )
    return RegisteredModel(
        spec.registered_name, version, registry.get_card(spec.registered_name, version)
    )
