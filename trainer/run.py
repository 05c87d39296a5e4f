"""One training run end to end: train → evaluate → register a new version.

Shared by the CLI (in-process) and the Celery task (in a worker child), so
both produce identical model cards.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from trainer.errors import TrainingCancelledError
from trainer.evaluate import evaluate
from trainer.registry import FileModelRegistry
from trainer.spec import AnyTrainingSpec
from trainer.train import CancelCheck, ProgressListener, TrainingResult, inference_copy, train


@dataclass(frozen=True)
class RegisteredModel:
    model_name: str
    version: int
    card: dict[str, Any]


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
    return [weak["class_name"] for weak in card["metrics"]["validation"]["weak_classes"]]


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for distribution in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "scikit-learn"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_card(spec: AnyTrainingSpec, result: TrainingResult, job_id: str | None) -> dict[str, Any]:
    """Everything a reader of the model needs: spec, data, metrics, history, timings."""
    data = result.data
    test_report = evaluate(result.model, data.test.x, data.test.y, data.info.class_names)
    validation_report = evaluate(
        result.model, data.validation.x, data.validation.y, data.info.class_names
    )
    last = result.history[-1]
    final_train_accuracy = last.accuracy
    return {
        "job_id": job_id,
        "architecture": spec.architecture,
        "spec": spec.model_dump(mode="json"),
        "dataset": {
            "name": data.info.name,
            "source": data.source,
            "sample_fraction": spec.sample_fraction,
            "seed": spec.seed,
            "train_samples": len(data.train),
            "validation_samples": len(data.validation),
            "test_samples": len(data.test),
        },
        "class_names": list(data.info.class_names),
        "input_shape": list(data.info.input_shape),
        "parameter_count": int(result.model.count_params()),
        "augmentation_target_classes": result.target_classes,
        "metrics": {
            "test": test_report.model_dump(mode="json"),
            "validation": validation_report.model_dump(mode="json"),
            "final_train_accuracy": round(final_train_accuracy, 6),
            "validation_accuracy": validation_report.accuracy,
            "generalization_gap": round(final_train_accuracy - validation_report.accuracy, 6),
        },
        "history": [record.model_dump(mode="json") for record in result.history],
        "timings": {
            "prepare_seconds": result.prepare_seconds,
            "fit_seconds": result.fit_seconds,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "seconds_per_epoch": round(result.fit_seconds / max(1, result.epochs_run), 3),
        },
        "library_versions": _library_versions(),
        "trained_at": datetime.now(UTC).isoformat(),
    }


def train_and_register(
    spec: AnyTrainingSpec,
    *,
    data_dir: Path | None,
    registry: FileModelRegistry,
    job_id: str | None = None,
    progress: Sequence[ProgressListener] = (),
    should_cancel: CancelCheck | None = None,
    verbose: int = 0,
) -> RegisteredModel:
    """Train ``spec``, evaluate once on the test split, register the result as a new version.

    ``should_cancel`` is honoured between every phase (data, each training batch,
    evaluation, registration), not only while Keras trains.
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
    evaluate_started = time.perf_counter()
    card = build_card(spec, result, job_id)
    card["timings"]["evaluate_seconds"] = round(time.perf_counter() - evaluate_started, 3)
    check_cancel("before registration")
    servable = inference_copy(result.model)

    def write_model(path: Path) -> None:
        servable.save(path)
        card["model_file_bytes"] = path.stat().st_size

    version = registry.register(spec.registered_name, write_model, card)
    return RegisteredModel(
        spec.registered_name, version, registry.get_card(spec.registered_name, version)
    )
