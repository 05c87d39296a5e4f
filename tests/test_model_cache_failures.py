"""A version that failed to load is not loaded (or hashed) again for a short while."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import pytest

from service.errors import ModelLoadError
from service.model_cache import ModelCache
from tests.conftest import make_record
from tests.test_batching import CLASSES, INPUT_SHAPE
from tests.test_predict import TINY_CNN, save_model
from trainer.architectures import build_model
from trainer.card import ModelCard
from trainer.errors import CorruptModelError
from trainer.registry import FileModelRegistry
from worker.settings import Settings

MODEL = "broken"


@pytest.fixture
def registry(tmp_path: Path) -> FileModelRegistry:
    registry = FileModelRegistry(tmp_path / "registry")
    model = build_model("custom_cnn", TINY_CNN, INPUT_SHAPE, len(CLASSES))
    record = make_record(class_names=CLASSES, input_shape=list(INPUT_SHAPE))
    for _ in range(2):
        registry.register(MODEL, lambda path: save_model(model, path), record)
    with registry.model_path(MODEL, 2).open("ab") as model_file:
        model_file.write(b"tampered")
    return registry


@pytest.fixture
def hashes(registry: FileModelRegistry, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The versions whose checksum the registry verified, in order."""
    verified: list[int] = []
    original = registry.verified_card

    def counting(model_name: str, version: int) -> ModelCard:
        verified.append(version)
        return original(model_name, version)

    monkeypatch.setattr(registry, "verified_card", counting)
    return verified


def test_a_corrupt_file_is_not_hashed_again_on_every_request(
    registry: FileModelRegistry, hashes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ModelCache(registry, capacity=2, load_failure_seconds=30)
    for _ in range(3):
        with pytest.raises(CorruptModelError, match="sha256") as raised:
            cache.get(MODEL, 2)
        assert raised.value.details == {"model_name": MODEL, "version": 2}
    assert hashes == [2]  # one attempt; the other requests got the remembered error
    # The good version is unaffected.
    assert cache.get(MODEL, 1).version == 1
    # Once the failure is old enough, the next request tries again.
    later = time.monotonic() + 31
    monkeypatch.setattr(time, "monotonic", lambda: later)
    with pytest.raises(CorruptModelError):
        cache.get(MODEL, 2)
    assert hashes == [2, 1, 2]


def test_load_errors_are_remembered_too(
    registry: FileModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []

    def failing_load(path: Path, *args: object, **kwargs: object) -> None:
        loads.append(str(path))
        raise OSError("unreadable")

    monkeypatch.setattr(keras.saving, "load_model", failing_load)
    cache = ModelCache(registry, capacity=2, load_failure_seconds=30)
    for _ in range(2):
        with pytest.raises(ModelLoadError, match="could not be loaded"):
            cache.get(MODEL, 1)
    assert len(loads) == 1
    assert cache.stats().size == 0


def test_zero_seconds_retries_every_time(registry: FileModelRegistry, hashes: list[int]) -> None:
    cache = ModelCache(registry, capacity=2, load_failure_seconds=0)
    for _ in range(2):
        with pytest.raises(CorruptModelError):
            cache.get(MODEL, 2)
    assert hashes == [2, 2]


def test_the_setting_reaches_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from service.deps import Services

    monkeypatch.setenv("DACIAVISION_MODEL_LOAD_FAILURE_SECONDS", "12.5")
    services = Services(Settings(home=tmp_path))
    assert services.model_cache.load_failure_seconds == 12.5
    with pytest.raises(ValueError, match="load_failure_seconds"):
        ModelCache(services.registry, capacity=1, load_failure_seconds=-1)
