"""Loaded models are frozen out of the garbage collector's scans, and evicted ones freed."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from service.model_cache import ModelCache
from tests.conftest import make_record
from tests.test_batching import CLASSES, INPUT_SHAPE
from tests.test_predict import TINY_CNN, save_model
from trainer.architectures import build_model
from trainer.registry import FileModelRegistry

MODEL = "frozen"


def register_two_versions(registry: FileModelRegistry) -> None:
    model = build_model("custom_cnn", TINY_CNN, INPUT_SHAPE, len(CLASSES))
    record = make_record(class_names=CLASSES, input_shape=list(INPUT_SHAPE))
    for _ in range(2):
        registry.register(MODEL, lambda path: save_model(model, path), record)


def test_a_load_freezes_the_heap_and_an_eviction_frees_the_evicted_model(
    tmp_path: Path,
) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    register_two_versions(registry)
    cache = ModelCache(registry, capacity=1)
    first = weakref.ref(cache.get(MODEL, 1).model)
    assert gc.get_freeze_count() > 0
    assert first() is not None
    cache.get(MODEL, 2)  # evicts version 1
    assert gc.get_freeze_count() > 0
    assert first() is None, "the evicted model stayed in memory"
    cache.close()
