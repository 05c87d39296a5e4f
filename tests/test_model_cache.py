"""The model cache's two bounds, count and bytes, with real small saved Keras models.

The models are untrained (only their size matters here): a small CNN of about
16 kB of weights and a wide one of about 200 kB, saved and registered as the
service would find them.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.model_cache import ModelCache
from tests.conftest import ClientFactory, make_record
from trainer.architectures import build_model
from trainer.architectures.custom_cnn import CustomCnnHyperparameters
from trainer.card import ModelCard
from trainer.registry import FileModelRegistry
from worker.settings import Settings

SMALL = CustomCnnHyperparameters(filters1=8, filters2=8, dense_units=16)
WIDE = CustomCnnHyperparameters(filters1=8, filters2=8, dense_units=256)
FLOAT32_BYTES = 4


def _register(
    registry: FileModelRegistry, name: str, hyperparameters: CustomCnnHyperparameters
) -> None:
    """Register an untrained CNN as version 1 of ``name``."""
    model = build_model("custom_cnn", hyperparameters, (28, 28, 1), 10)
    record = make_record(class_names=[str(digit) for digit in range(10)], input_shape=[28, 28, 1])

    def save(path: Path) -> None:
        # Keras calls np.array() on TF variables, which warns under NumPy 2 (Keras' issue).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            model.save(path)

    registry.register(name, save, record)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> FileModelRegistry:
    registry = FileModelRegistry(tmp_path_factory.mktemp("home") / "registry")
    for name in ("a", "b", "c"):
        _register(registry, name, SMALL)
    _register(registry, "wide", WIDE)
    return registry


def _sizes() -> tuple[int, int]:
    small = build_model("custom_cnn", SMALL, (28, 28, 1), 10).count_params()
    wide = build_model("custom_cnn", WIDE, (28, 28, 1), 10).count_params()
    return int(small) * FLOAT32_BYTES, int(wide) * FLOAT32_BYTES


def test_a_loaded_model_weighs_its_weights(registry: FileModelRegistry) -> None:
    small, wide = _sizes()
    cache = ModelCache(registry, capacity=4)
    assert cache.get("a", 1).weight_bytes == small
    assert cache.get("wide", 1).weight_bytes == wide > 10 * small
    stats = cache.stats()
    assert stats.bytes == small + wide and stats.max_bytes is None
    cache.close()
    assert cache.stats().bytes == 0


def test_a_load_reads_the_card_once_the_one_its_file_was_checked_against(
    registry: FileModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[str, int]] = []
    read_card = registry.get_card

    def counting(model_name: str, version: int) -> ModelCard:
        reads.append((model_name, version))
        return read_card(model_name, version)

    monkeypatch.setattr(registry, "get_card", counting)
    cache = ModelCache(registry, capacity=4)
    loaded = cache.get("b", 1)
    assert reads == [("b", 1)]
    assert loaded.class_names == tuple(str(digit) for digit in range(10))
    cache.close()


def test_least_recently_used_models_leave_until_under_the_byte_bound(
    registry: FileModelRegistry,
) -> None:
    small, _ = _sizes()
    # Room for two small models, well under the count bound.
    bound = 2 * small + small // 2
    cache = ModelCache(registry, capacity=10, max_bytes=bound)
    first = cache.get("a", 1)
    cache.get("b", 1)
    cache.get("a", 1)  # a is now more recently used than b
    cache.get("c", 1)
    stats = cache.stats()
    assert stats.keys == [("a", 1), ("c", 1)]
    assert stats.bytes == 2 * small <= bound
    assert stats.evictions == 1
    assert cache.get("a", 1) is first  # kept, not reloaded
    cache.close()


def test_a_model_larger_than_the_byte_bound_serves_alone(registry: FileModelRegistry) -> None:
    small, wide = _sizes()
    cache = ModelCache(registry, capacity=10, max_bytes=3 * small)
    cache.get("a", 1)
    cache.get("b", 1)
    big = cache.get("wide", 1)
    assert cache.stats().keys == [("wide", 1)] and cache.stats().bytes == wide > 3 * small
    probabilities = big.predict(np.zeros((2, 28, 28, 1), dtype=np.float32))
    assert probabilities.shape == (2, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert big.batcher.stats().running

    cache.get("c", 1)  # the next model evicts it
    assert cache.stats().keys == [("c", 1)] and cache.stats().bytes == small
    assert not big.batcher.stats().running
    cache.close()


def test_the_count_bound_still_holds_under_a_loose_byte_bound(
    registry: FileModelRegistry,
) -> None:
    cache = ModelCache(registry, capacity=2, max_bytes=1024**3)
    for name in ("a", "b", "c"):
        cache.get(name, 1)
    assert cache.stats().keys == [("b", 1), ("c", 1)]
    cache.close()


class WatchedCache(ModelCache):
    """A cache that counts the models it holds at once: entered, or still loading."""

    def __init__(self, *arguments: object, **options: object) -> None:
        super().__init__(*arguments, **options)  # type: ignore[arg-type]
        self._watch = threading.Lock()
        self.loading = 0
        self.most_loading = 0
        self.most_held = 0

    def _load_and_warm(self, model_name: str, version: int):  # type: ignore[no-untyped-def]
        with self._watch:
            self.loading += 1
            self.most_loading = max(self.most_loading, self.loading)
            self.most_held = max(self.most_held, self.loading + self.stats().size)
        try:
            time.sleep(0.2)  # a slow disk, so that loads asked for at once would overlap
            return super()._load_and_warm(model_name, version)
        finally:
            with self._watch:
                self.loading -= 1


def test_cold_versions_asked_for_at_once_load_one_at_a_time(
    registry: FileModelRegistry,
) -> None:
    small, _ = _sizes()
    cache = WatchedCache(registry, capacity=10, max_bytes=small)  # room for one
    names = ("a", "b", "c", "wide")
    loaded: dict[str, object] = {}
    threads = [
        threading.Thread(target=lambda name=name: loaded.update({name: cache.get(name, 1)}))
        for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(loaded) == sorted(names)  # every request got its model
    assert cache.most_loading == 1
    # The one entered and the one loading, never four models past a bound of one.
    assert cache.most_held <= 2
    assert cache.stats().size == 1
    cache.close()


def test_the_setting_bounds_the_apps_cache(make_client: ClientFactory) -> None:
    client: TestClient = make_client(model_cache_max_bytes=123_456, model_cache_size=3)
    cache: ModelCache = client.app.state.services.model_cache  # type: ignore[attr-defined]
    assert (cache.capacity, cache.max_bytes) == (3, 123_456)


def test_a_byte_bound_below_one_is_refused(registry: FileModelRegistry) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        ModelCache(registry, capacity=1, max_bytes=0)


def test_the_setting_sets_the_apps_intra_op_threads(make_client: ClientFactory) -> None:
    client: TestClient = make_client(inference_intra_op_threads=3)
    cache: ModelCache = client.app.state.services.model_cache  # type: ignore[attr-defined]
    assert cache.intra_op_threads == 3


def test_a_serving_process_runs_each_op_on_the_threads_set(registry: FileModelRegistry) -> None:
    # A fresh process: TensorFlow fixes its threads when it runs its first op, which in
    # this one an earlier test may have done.
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "from pathlib import Path\n"
        "from service.model_cache import ModelCache\n"
        "from trainer.registry import FileModelRegistry\n"
        "cache = ModelCache(FileModelRegistry(Path(sys.argv[1])), capacity=1, intra_op_threads=1)\n"
        "loaded = cache.get('a', 1)\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),\n"
        "      loaded.predict(np.zeros((2, 28, 28, 1), np.float32)).shape)\n"
        "cache.close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(registry.root)],
        capture_output=True, text=True, check=True, timeout=180,
    )  # fmt: skip
    assert result.stdout.split("\n")[-2] == "1 (2, 10)"


def test_a_negative_thread_count_is_refused_with_its_bounds() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Settings(inference_intra_op_threads=-1)
