"""Loaded models are frozen out of the garbage collector's scans, and evicted ones freed."""

from __future__ import annotations

import gc
import time
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


def test_an_evicted_model_a_request_still_held_is_freed_once_requests_have_ended(
    tmp_path: Path,
) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    register_two_versions(registry)
    cache = ModelCache(registry, capacity=1, requests_end_within_seconds=0.2)
    in_flight = cache.get(MODEL, 1)  # a request that is still running at the eviction
    first = weakref.ref(in_flight.model)
    cache.get(MODEL, 2)  # evicts version 1; the collection right after cannot free it
    assert first() is not None
    del in_flight  # the request ends: its model is garbage, frozen out of every scan
    deadline = time.monotonic() + 10
    while first() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first() is None, "the evicted model stayed in memory after its last request"
    cache.close()


def test_closing_the_cache_cancels_a_pending_collection(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    register_two_versions(registry)
    cache = ModelCache(registry, capacity=1, requests_end_within_seconds=60)
    in_flight = cache.get(MODEL, 1)
    cache.get(MODEL, 2)
    (pending,) = cache._collections
    cache.close()
    pending.join(5)
    assert not pending.is_alive()
    del in_flight
