"""A bounded LRU of loaded, warmed Keras models keyed by (model_name, version).

Bounded twice: by how many models it holds and by the bytes of their weights, so a
few large versions cannot take the memory a count sized for small ones allows.

A model enters the cache only after its checksum was verified, it was loaded, its
forward pass was traced for every batch size it will see (``service/inference.py``)
and one prediction ran through its batcher (``service/batching.py``), so a request
never meets a cold or broken model; a failed load leaves the cache as it was, and the
version answers the same error for ``load_failure_seconds`` without another try. Each
loaded model owns its batch threads (``DACIAVISION_BATCH_THREADS``), stopped when the
model leaves the cache or the app shuts down. Keras is imported on the first load,
which keeps importing the service (and forking workers from it) free of TensorFlow.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.batching import Batcher, BatchingOptions
from service.errors import ModelLoadError
from service.inference import CompiledModel, limit_intra_op_threads
from trainer.card import ModelCard
from trainer.errors import CorruptModelError, DaciaVisionError, NotFoundError
from trainer.model_files import load_model
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
    # Runs every call of this model, one at a time, batching concurrent requests.
    batcher: Batcher = field(repr=False)
    # Bytes of the model's weights, what the cache's byte bound counts.
    weight_bytes: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Class probabilities (N, num_classes) for a float32 batch (N, H, W, C) in [0, 1]."""
        return self.batcher.predict_blocking(batch)


@dataclass(frozen=True)
class CacheStats:
    capacity: int
    size: int
    max_bytes: int | None
    bytes: int
    hits: int
    loads: int
    evictions: int
    keys: list[CacheKey]


class ModelCache:
    """Loaded models, least recently used evicted first, until within both bounds.

    At most ``capacity`` models, whose weights take at most ``max_bytes`` together
    (None: no byte bound). A model's size is the bytes of its weights, measured when it
    loads: the memory that grows with the model (traced graphs and its batch threads
    are not counted). A model larger than ``max_bytes`` on its own still loads and
    serves, but it is then the only model kept: the others are evicted when it enters,
    and it is evicted when the next model enters.
    """

    def __init__(
        self,
        registry: FileModelRegistry,
        capacity: int,
        batching: BatchingOptions | None = None,
        *,
        jit_compile: bool = False,
        intra_op_threads: int = 0,
        max_bytes: int | None = None,
        load_failure_seconds: float = 5.0,
        requests_end_within_seconds: float = 120.0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        if load_failure_seconds < 0:
            raise ValueError(f"load_failure_seconds must be >= 0, got {load_failure_seconds}")
        if requests_end_within_seconds < 0:
            raise ValueError(
                f"requests_end_within_seconds must be >= 0, got {requests_end_within_seconds}"
            )
        self.registry = registry
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._bytes = 0
        self.batching = batching or BatchingOptions()
        self.jit_compile = jit_compile
        self.intra_op_threads = intra_op_threads
        self.load_failure_seconds = load_failure_seconds
        # How long a request can still hold a model it took from the cache: the request
        # timeout. An evicted model a request still held is collected after that.
        self.requests_end_within_seconds = requests_end_within_seconds
        self._collections: list[threading.Timer] = []
        # A version that failed to load, until when that failure is answered again without
        # trying: a corrupt 100 MB file is not hashed again on every request.
        self._failures: dict[CacheKey, tuple[float, DaciaVisionError]] = {}
        self._entries: OrderedDict[CacheKey, LoadedModel] = OrderedDict()
        # Guards _entries, _key_locks and the counters; never held while a model loads,
        # so a slow load of one version does not block hits on others.
        self._lock = threading.Lock()
        # One lock per key, so concurrent requests for the same cold version load it once.
        # Kept after eviction: a version number is never reused and a Lock is tiny.
        self._key_locks: dict[CacheKey, threading.Lock] = {}
        # Models load one at a time, as TensorFlow Serving's manager does by default (no
        # load thread pool, num_load_threads=0): a model is weighed only once loaded, so
        # loads of several cold versions at once each held a model beyond the bounds.
        # One at a time, each entering (and evicting) before the next begins, the cache
        # passes its bounds by at most the one model loading.
        self._loading = threading.Lock()
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
                failure = self._failures.get(key)
            if failure is not None and time.monotonic() < failure[0]:
                error = failure[1]
                # A fresh exception each time: raising one object again grows its traceback.
                raise type(error)(error.message, **error.details)
            with self._loading:
                try:
                    loaded = self._load(model_name, version)
                except (ModelLoadError, CorruptModelError) as error:
                    if self.load_failure_seconds > 0:
                        # A copy without the traceback, which holds the frames of the load.
                        remembered = type(error)(error.message, **error.details)
                        until = time.monotonic() + self.load_failure_seconds
                        with self._lock:
                            self._failures[key] = (until, remembered)
                    raise
                with self._lock:
                    self._failures.pop(key, None)
                    evicted = self._insert(key, loaded)
                # Outside the cache lock: closing answers the evicted models' queued
                # requests first. A request that took an evicted model just before is
                # still answered, in its own thread (Batcher.submit); the GC frees that
                # model when the request ends, any other evicted one here, before the
                # next load begins.
                _close_batchers(evicted)
                thaw = bool(evicted)
                evicted_models = [weakref.ref(model.model) for model in evicted]
                del evicted  # or the collection below could not free them
                _freeze_heap(thaw=thaw)
                if any(model() is not None for model in evicted_models):
                    self._collect_later()
            return loaded

    def get_if_loaded(self, model_name: str, version: int) -> LoadedModel | None:
        """The loaded model if it is in the cache, else None; never loads, never blocks long."""
        with self._lock:
            return self._lookup((model_name, version))

    def preload(self, model_name: str, version: int) -> LoadedModel:
        """Load and warm a version before traffic moves to it; ModelLoadError if it cannot be."""
        return self.get(model_name, version)

    def close(self) -> None:
        """Stop every loaded model's batcher (at app shutdown); the cache is empty after."""
        with self._lock:
            closing = list(self._entries.values())
            self._entries.clear()
            self._bytes = 0
            collections, self._collections = self._collections, []
        for collection in collections:
            collection.cancel()
        _close_batchers(closing)

    def _collect_later(self) -> None:
        """Collect once more when every request that could hold an evicted model has ended.

        A request in flight at the eviction keeps its model alive through the collection
        right after, which freezes the model again (``_freeze_heap``); once that request
        ends, the model is garbage the collector no longer scans. Without a second
        collection it stayed in memory until the next eviction, which may never come.
        """
        collection = threading.Timer(
            self.requests_end_within_seconds + 1.0, _freeze_heap, kwargs={"thaw": True}
        )
        collection.daemon = True  # never keeps a stopping process alive
        with self._lock:
            self._collections = [timer for timer in self._collections if timer.is_alive()]
            self._collections.append(collection)
        collection.start()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                capacity=self.capacity,
                size=len(self._entries),
                max_bytes=self.max_bytes,
                bytes=self._bytes,
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

    def _insert(self, key: CacheKey, loaded: LoadedModel) -> list[LoadedModel]:
        """Add a loaded model; the models it evicted, whose batchers the caller closes."""
        self._entries[key] = loaded
        self._entries.move_to_end(key)
        self._bytes += loaded.weight_bytes
        self._loads += 1
        evicted = []
        # The newest model is last, so it stays even when it alone exceeds max_bytes.
        while len(self._entries) > 1 and self._over_bounds():
            oldest = self._entries.popitem(last=False)[1]
            self._bytes -= oldest.weight_bytes
            evicted.append(oldest)
            self._evictions += 1
        return evicted

    def _over_bounds(self) -> bool:
        over_bytes = self.max_bytes is not None and self._bytes > self.max_bytes
        return len(self._entries) > self.capacity or over_bytes

    def _load(self, model_name: str, version: int) -> LoadedModel:
        try:
            return self._load_and_warm(model_name, version)
        except (NotFoundError, CorruptModelError):
            raise  # the version vanished (404) or its files are known broken (corrupt_model)
        except Exception as error:
            message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
            raise ModelLoadError(
                f"model {model_name!r} version {version} could not be loaded: {message}. "
                "Nothing was changed; register a working version or check the registry files",
                model_name=model_name,
                version=version,
            ) from error

    def _load_and_warm(self, model_name: str, version: int) -> LoadedModel:
        limit_intra_op_threads(self.intra_op_threads)
        card = self.registry.verified_card(model_name, version)
        path = self.registry.model_path(model_name, version)
        model = load_model(path)
        input_shape = _input_shape(card, model)
        class_names = tuple(card.class_names)
        compiled = CompiledModel(
            model, input_shape, self.batching.max_batch_size, jit_compile=self.jit_compile
        )
        compiled.warm()
        batcher = Batcher(compiled, self.batching, name=f"{model_name} v{version}")
        weight_bytes = sum(variable.numpy().nbytes for variable in model.weights)
        loaded = LoadedModel(
            model_name, version, class_names, input_shape, model, batcher, weight_bytes
        )
        try:
            # The warm-up takes the path requests take, so it also proves the model runs.
            num_outputs = loaded.predict(np.zeros((1, *input_shape), dtype=np.float32)).shape[-1]
            if not class_names:
                loaded.class_names = tuple(str(index) for index in range(num_outputs))
            elif len(class_names) != num_outputs:
                raise ValueError(
                    f"the card names {len(class_names)} classes but the model outputs {num_outputs}"
                )
        except Exception:
            batcher.close()
            raise
        return loaded


def _freeze_heap(*, thaw: bool) -> None:
    """Move everything alive now out of the garbage collector's reach (``gc.freeze``).

    A loaded model and TensorFlow are hundreds of thousands of long-lived objects, and
    every full collection walked them all: pauses of tens of milliseconds, in the
    middle of requests, which set the tail latency under load. Frozen objects are
    never scanned. After an eviction, everything is thawed and collected once first,
    so that the evicted model's reference cycles can be freed (one still held by a
    request in flight is frozen again, and freed by ``ModelCache._collect_later``).
    """
    if thaw:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def _close_batchers(models: Iterable[LoadedModel]) -> None:
    for loaded in models:
        loaded.batcher.close()


def _input_shape(card: ModelCard, model: Any) -> tuple[int, int, int]:
    if card.input_shape != tuple(model.input_shape[1:]):
        raise ValueError(
            f"the card says input shape {list(card.input_shape)} but the model takes "
            f"{list(model.input_shape[1:])}"
        )
    return card.input_shape
