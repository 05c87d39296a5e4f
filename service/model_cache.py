"""A bounded LRU of loaded, warmed Keras models keyed by (model_name, version).

A model enters the cache only after its checksum was verified, it was loaded and one
prediction ran, so a request never meets a cold or broken model; a failed load leaves
the cache as it was. Keras is imported on the first load, which keeps importing the
service (and forking workers from it) free of TensorFlow.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import ModelLoadError
from trainer.card import ModelCard
from trainer.errors import NotFoundError
from trainer.registry import FileModelRegistry

CacheKey = tuple[str, int]


@dataclass
class LoadedModel:
    """A warmed model and what a request needs to know about its inputs and outputs."""

    model_name: str
    version: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    model: Any = field(repr=False)
    # One call at a time per model: Keras layers are not documented as safe to call from
    # several threads, and one CPU inference already uses all cores (intra-op threads).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Class probabilities (N, num_classes) for a float32 batch (N, H, W, C) in [0, 1]."""
        # Calling the model directly, as Keras advises for batches that fit in memory:
        # predict() and predict_on_batch() retrace a tf.function for every new batch size.
        with self._lock:
            probabilities = self.model(batch, training=False)
        return np.asarray(probabilities, dtype=np.float32)


@dataclass(frozen=True)
class CacheStats:
    capacity: int
    size: int
    hits: int
    loads: int
    evictions: int
    keys: list[CacheKey]


class ModelCache:
    """Loaded models, at most ``capacity`` of them, least recently used evicted first."""

    def __init__(self, registry: FileModelRegistry, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.registry = registry
        self.capacity = capacity
        self._entries: OrderedDict[CacheKey, LoadedModel] = OrderedDict()
        # Guards _entries, _key_locks and the counters; never held while a model loads,
        # so a slow load of one version does not block hits on others.
        self._lock = threading.Lock()
        # One lock per key, so concurrent requests for the same cold version load it once.
        # Kept after eviction: a version number is never reused and a Lock is tiny.
        self._key_locks: dict[CacheKey, threading.Lock] = {}
        self._hits = 0
        self._loads = 0
        self._evictions = 0

    def get(self, model_name: str, version: int) -> LoadedModel:
        """The loaded model for a resolved version, loading and warming it on first use."""
        key = (model_name, version)
        with self._lock:
            if (cached := self._lookup(key)) is not None:
                return cached
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                # Another request may have loaded it while this one waited for key_lock.
                if (cached := self._lookup(key)) is not None:
                    return cached
            loaded = self._load(model_name, version)
            with self._lock:
                self._insert(key, loaded)
            return loaded

    def preload(self, model_name: str, version: int) -> LoadedModel:
        """Load and warm a version before traffic moves to it; ModelLoadError if it cannot be."""
        return self.get(model_name, version)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                capacity=self.capacity,
                size=len(self._entries),
                hits=self._hits,
                loads=self._loads,
                evictions=self._evictions,
                keys=list(self._entries),
            )

    def _lookup(self, key: CacheKey) -> LoadedModel | None:
        loaded = self._entries.get(key)
        if loaded is not None:
            self._entries.move_to_end(key)
            self._hits += 1
        return loaded

    def _insert(self, key: CacheKey, loaded: LoadedModel) -> None:
        self._entries[key] = loaded
        self._entries.move_to_end(key)
        self._loads += 1
        while len(self._entries) > self.capacity:
            # An evicted model still serves requests holding it; the GC frees it after them.
            self._entries.popitem(last=False)
            self._evictions += 1

    def _load(self, model_name: str, version: int) -> LoadedModel:
        try:
            return self._load_and_warm(model_name, version)
        except NotFoundError:
            raise  # the version vanished: a 404, not a broken model
        except Exception as error:
            message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
            raise ModelLoadError(
                f"model {model_name!r} version {version} could not be loaded: {message}. "
                "Nothing was changed; register a working version or check the registry files",
                model_name=model_name,
                version=version,
            ) from error

    def _load_and_warm(self, model_name: str, version: int) -> LoadedModel:
        import keras  # deferred: TensorFlow loads only in the process that serves models

        self.registry.verify_checksum(model_name, version)
        card = self.registry.get_card(model_name, version)
        path = self.registry.model_path(model_name, version)
        # safe_mode refuses lambda layers and other code embedded in the file.
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        input_shape = _input_shape(card, model)
        class_names = tuple(card.class_names)
        loaded = LoadedModel(model_name, version, class_names, input_shape, model)
        # The warm-up takes the path requests take, so it also proves the model runs.
        num_outputs = loaded.predict(np.zeros((1, *input_shape), dtype=np.float32)).shape[-1]
        if not class_names:
            loaded.class_names = tuple(str(index) for index in range(num_outputs))
        elif len(class_names) != num_outputs:
            raise ValueError(
                f"the card names {len(class_names)} classes but the model outputs {num_outputs}"
            )
        return loaded


def _input_shape(card: ModelCard, model: Any) -> tuple[int, int, int]:
    if card.input_shape != tuple(model.input_shape[1:]):
        raise ValueError(
            f"the card says input shape {list(card.input_shape)} but the model takes "
            f"{list(model.input_shape[1:])}"
        )
    return card.input_shape
