"""Dynamic batching: one inference thread per loaded model runs concurrent requests together.

Requests put their images on the model's queue and wait on a future. The inference
thread takes whatever is queued, up to ``max_batch_size`` images, runs it as one
model call and hands each request its rows back. Like TF Serving's batching and
Triton's dynamic batcher, it trades a bounded wait for larger batches, but only
when there is traffic to batch:

* The thread found the queue empty and slept until a request arrived: the server
  was idle, so that request runs at once, alone. A lone request never waits.
* The queue already held requests when the model became free: they are arriving
  faster than they are served, so the batch may wait for more until its oldest
  request has waited ``max_wait_seconds``, or the batch is full.

One thread per model also serialises the model's calls: Keras layers are not
documented as safe to call from several threads, and one CPU inference already
uses every core (TensorFlow's intra-op threads), so parallel calls would only
compete. With batching off, each request is still its own model call on the same
thread, which keeps the two modes' numbers comparable.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from service.inference import Batch

logger = logging.getLogger(__name__)

InferenceFunction = Callable[[Batch], Batch]
ExtraT = TypeVar("ExtraT")


@dataclass(frozen=True)
class BatchingOptions:
    enabled: bool = True
    max_batch_size: int = 64
    max_wait_seconds: float = 0.002


@dataclass(frozen=True)
class BatchStats:
    """What the batcher has done since it started; ``largest_batch`` counts images."""

    requests: int
    images: int
    batches: int
    largest_batch: int
    queued_requests: int
    running: bool


@dataclass
class _Request:
    images: Batch
    future: Future[Batch]
    enqueued_at: float


class Batcher:
    """Runs ``infer`` on batches gathered from concurrent ``submit`` calls, on its own thread."""

    def __init__(self, infer: InferenceFunction, options: BatchingOptions, name: str) -> None:
        if options.max_batch_size < 1 or options.max_wait_seconds < 0:
            raise ValueError(f"invalid batching options {options}")
        self.options = options
        self._infer = infer
        self._queue: deque[_Request] = deque()
        self._condition = threading.Condition()
        self._closed = False
        # Held around every model call, including the rare ones made after close().
        self._call_lock = threading.Lock()
        self._requests = self._images = self._batches = self._largest_batch = 0
        # Daemon: a batcher whose app never ran its shutdown must not keep Python alive.
        self._thread = threading.Thread(target=self._serve, name=f"batcher {name}", daemon=True)
        self._thread.start()

    def submit(self, images: Batch) -> Future[Batch]:
        """Queue a float32 batch (N, H, W, C); the future holds its probabilities (N, classes)."""
        future: Future[Batch] = Future()
        with self._condition:
            if not self._closed:
                self._queue.append(_Request(images, future, time.monotonic()))
                self._condition.notify()
                return future
        # Closed (the model was evicted) after this request took it from the cache: the
        # request is still answered, in the caller's thread, rather than failed.
        self._run([_Request(images, future, time.monotonic())])
        return future

    async def predict(self, images: Batch) -> Batch:
        """Probabilities for a batch, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(images))

    def predict_blocking(self, images: Batch) -> Batch:
        """Probabilities for a batch, for callers in worker threads."""
        return self.submit(images).result()

    def close(self, timeout: float | None = 10.0) -> None:
        """Answer what is queued, then stop the thread; later submits run in their caller."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def stats(self) -> BatchStats:
        with self._condition:
            return BatchStats(
                requests=self._requests,
                images=self._images,
                batches=self._batches,
                largest_batch=self._largest_batch,
                queued_requests=len(self._queue),
                running=self._thread.is_alive(),
            )

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _next_batch(self) -> list[_Request] | None:
        with self._condition:
            was_idle = not self._queue
            while not self._queue:
                if self._closed:
                    return None
                self._condition.wait()
            batch, size = self._take([], 0)
            if (
                not batch
                or was_idle
                or not self.options.enabled
                or self.options.max_wait_seconds == 0
            ):
                return batch
            # Requests are arriving: let the batch fill, but only until its oldest request
            # has waited max_wait_seconds in all.
            deadline = batch[0].enqueued_at + self.options.max_wait_seconds
            while size < self.options.max_batch_size and not self._closed:
                if self._queue:
                    if size + len(self._queue[0].images) > self.options.max_batch_size:
                        break
                    batch, size = self._take(batch, size)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            return batch

    def _take(self, batch: list[_Request], size: int) -> tuple[list[_Request], int]:
        # Whole requests only, up to max_batch_size images; a first request larger than
        # that is taken alone and runs in chunks. Without batching, one request per call.
        limit = self.options.max_batch_size if self.options.enabled else 0
        while self._queue and (not batch or size + len(self._queue[0].images) <= limit):
            request = self._queue.popleft()
            # A request whose client went away (its future was cancelled) is skipped.
            if request.future.set_running_or_notify_cancel():
                batch.append(request)
                size += len(request.images)
        return batch, size

    def _run(self, batch: list[_Request]) -> None:
        if not batch:
            return
        images = batch[0].images if len(batch) == 1 else np.concatenate([r.images for r in batch])
        try:
            with self._call_lock:
                probabilities = self._infer(images)
        except Exception as error:
            logger.warning("a batch of %d images failed", len(images), exc_info=True)
            for request in batch:
                request.future.set_exception(error)
            return
        with self._condition:
            self._requests += len(batch)
            self._images += len(images)
            self._batches += 1
            self._largest_batch = max(self._largest_batch, len(images))
        start = 0
        for request in batch:
            end = start + len(request.images)
            request.future.set_result(probabilities[start:end])
            start = end


async def prepare_and_predict(
    executor: Executor, prepare: Callable[[], tuple[Batch, ExtraT]], batcher: Batcher
) -> tuple[Batch, ExtraT]:
    """Run ``prepare`` (decoding) on ``executor``, its batch on ``batcher``; await both.

    The decoding thread hands its batch straight to the batcher, so the event loop
    wakes once, when the probabilities are ready: each hand-over between threads
    costs a scheduler wake-up, milliseconds on a machine whose cores are all busy.
    Returns the probabilities and whatever else ``prepare`` returned beside the batch.
    """
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[tuple[Batch, ExtraT]] = loop.create_future()

    def fail(error: BaseException) -> None:
        if not answer.done():  # the request may have been cancelled meanwhile
            answer.set_exception(error)

    def succeed(result: tuple[Batch, ExtraT]) -> None:
        if not answer.done():
            answer.set_result(result)

    def prepare_then_submit() -> None:
        try:
            images, extra = prepare()
        except Exception as error:  # noqa: BLE001 - raised again in the awaiting request
            loop.call_soon_threadsafe(fail, error)
            return

        def deliver(inference: Future[Batch]) -> None:
            if inference.cancelled():
                return
            if (error := inference.exception()) is not None:
                loop.call_soon_threadsafe(fail, error)
            else:
                loop.call_soon_threadsafe(succeed, (inference.result(), extra))

        batcher.submit(images).add_done_callback(deliver)

    executor.submit(prepare_then_submit)
    return await answer
