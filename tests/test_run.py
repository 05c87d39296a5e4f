"""train_and_register's helpers: resolving 'weak' targets from a reference model, and
measuring the training split's accuracy."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tests.conftest import make_record
from trainer import run as run_module
from trainer.data import Split
from trainer.errors import ModelNotFoundError
from trainer.evaluate import WeakClass
from trainer.registry import FileModelRegistry
from trainer.run import resolve_target_classes, training_split_accuracy
from trainer.spec import parse_training_spec
from trainer.spec_base import TrainingSpecBase


def _register_reference(registry: FileModelRegistry, weak_on_validation: list[str]) -> int:
    def weak(names: list[str]) -> list[WeakClass]:
        return [WeakClass(class_name=name, f1=0.4, below_macro_f1_by=0.2) for name in names]

    record = make_record()
    record.metrics.validation.weak_classes = weak(weak_on_validation)
    # The test report names other classes: they must not be used.
    record.metrics.test.weak_classes = weak(["truck"])
    return registry.register("reference", lambda path: path.write_bytes(b"model"), record)


def test_weak_means_the_reference_models_weak_validation_classes(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    _register_reference(registry, ["cat", "bird"])
    version = _register_reference(registry, ["dog"])
    registry.set_alias("reference", "production", version - 1)

    def spec(reference: dict[str, object]) -> TrainingSpecBase:
        return parse_training_spec(
            {
                "dataset": "cifar10",
                "augmentation": {"target_classes": "weak", "reference_model": reference},
            }
        )

    assert resolve_target_classes(spec({"model_name": "reference"}), registry) == ["cat", "bird"]
    latest = spec({"model_name": "reference", "version": version})
    assert resolve_target_classes(latest, registry) == ["dog"]
    with pytest.raises(ModelNotFoundError):
        resolve_target_classes(spec({"model_name": "missing"}), registry)


def test_named_targets_are_used_as_given(tmp_path: Path) -> None:
    spec = parse_training_spec(
        {"dataset": "cifar10", "augmentation": {"target_classes": ["cat", "dog"]}}
    )
    assert resolve_target_classes(spec, FileModelRegistry(tmp_path)) == ["cat", "dog"]


def _labelled_by_brightness(count: int, wrong: int) -> tuple[keras.Model, Split]:
    """A real Keras model that reads a class off each image's brightness, and ``count``
    images of which the first ``wrong`` carry a label it will not predict."""
    classes = 10
    inputs = keras.Input((4, 4, 1))
    brightness = keras.layers.GlobalAveragePooling2D()(inputs)
    # Logit k = k·x − k²/2 peaks at the class k nearest to x.
    scores = keras.layers.Dense(classes)(brightness)
    model = keras.Model(inputs, scores)
    ks = np.arange(classes, dtype=np.float32)
    model.layers[-1].set_weights([ks[np.newaxis, :], -(ks**2) / 2])
    shown = np.arange(count) % classes
    images = np.broadcast_to(shown[:, None, None, None], (count, 4, 4, 1)).astype(np.float32)
    labels = shown.copy()
    labels[:wrong] = (labels[:wrong] + 1) % classes
    return model, Split(images, labels)


def test_a_small_training_split_is_measured_whole() -> None:
    model, split = _labelled_by_brightness(400, wrong=100)
    assert training_split_accuracy(model, split, seed=1) == (0.75, 400)


def test_a_large_training_split_is_measured_on_a_seeded_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run_module, "TRAIN_ACCURACY_IMAGES", 1000)
    model, split = _labelled_by_brightness(20_000, wrong=5_000)
    accuracy, samples = training_split_accuracy(model, split, seed=1)
    assert samples == 1000
    # 0.75 on the whole split; a random 1,000 of it lands within 4 standard errors.
    assert abs(accuracy - 0.75) < 4 * (0.75 * 0.25 / 1000) ** 0.5
    assert training_split_accuracy(model, split, seed=1) == (accuracy, 1000)
