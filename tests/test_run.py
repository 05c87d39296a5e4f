"""train_and_register's helpers: resolving 'weak' targets from a reference model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_record
from trainer.errors import ModelNotFoundError
from trainer.evaluate import WeakClass
from trainer.registry import FileModelRegistry
from trainer.run import resolve_target_classes
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
