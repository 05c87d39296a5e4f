"""Dynamic batching: a loaded model's batch threads run concurrent requests together.

Requests put their images on the model's queue and wait on a future. A batch thread
takes whatever is queued, up to ``max_batch_size`` images, runs it as one model call
and hands each request its rows back. Like TF Serving's batching and Triton's dynamic
batcher, it trades a bounded wait for larger batches, but only when there is traffic
to batch:

* The server was idle (the queue empty and no model call running) when a request
  arrived: that request runs at once, alone. A lone request never waits.
* Otherwise requests are arriving faster than they are served, so the batch may wait
  for more until its oldest request has waited ``max_wait_seconds``, or the batch is
  full.

``threads`` batch threads (TF Serving's ``num_batch_threads``) share the one queue, so
that many model calls of a model may run at once, but only with full batches. A
model call is the traced graph (which releases the interpreter lock) wrapped in
Python that holds the lock to pad the batch, convert it and hand the rows back, and
that often waits for the lock after the graph. With one thread the cores stood idle
through that part; with two, one call's graph runs while the other's Python does: on
2 cores, +12% images/s under 64-image JSON requests (and each call now runs on one
intra-op thread, so two calls are what keeps both cores busy). Part-filled batches
still run one after the other, on the thread that just finished, as with one thread:
two of them side by side computed less per image, and handing a batch to another
thread costs a scheduler wake-up (single-image requests ran 5% slower). The traced
graph is safe to run from several threads: it only reads the model's weights. With
batching off, each request is its own full batch.

A request larger than ``max_batch_size`` is split into batches of that size, queued
together, so that with two batch threads a lone large request runs on both cores
rather than in chunks one after the other on one thread (each call runs on one
intra-op thread); its answer is its parts' rows in order. Its last, part-filled part
starts on a free thread at once, beside the full parts, rather than waiting for the
running call as other part-filled batches do (taking along whatever small requests are
queued behind it): waiting would add a call's time to a request that is already
waiting for its full parts, and the next large request's first part would not fit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass

import numpy as np

from service.inference import Batch

logger = logging.getLogger(__name__)

InferenceFunction = Callable[[Batch], Batch]


@dataclass(frozen=True)
class BatchingOptions:
    enabled: bool = True
    max_batch_size: int = 64
    max_wait_seconds: float = 0.002
    threads: int = 2


@dataclass(frozen=True)
class BatchStats:
    """What the batcher has done since it started; ``largest_batch`` counts images.

    ``requests`` counts submissions: a large request submitted whole counts once, one
    decoded in parts (``part_slices``) once per part.
    """

    requests: int
    images: int
    batches: int
    largest_batch: int
    queued_requests: int  # a large request's queued parts count one by one
    running_batches: int
    running: bool


@dataclass
class _Request:
    images: Batch
    future: Future[Batch]
    enqueued_at: float
    # A large request's parts count as one request in the stats: only its first part.
    counted: bool = True
    # One of a large request's parts: starts on a free thread without waiting for company.
    part: bool = False


class Batcher:
    """Runs ``infer`` on batches gathered from concurrent ``submit`` calls, on its threads."""

    def __init__(self, infer: InferenceFunction, options: BatchingOptions, name: str) -> None:
        if options.max_batch_size < 1 or options.max_wait_seconds < 0 or options.threads < 1:
            raise ValueError(f"invalid batching options {options}")
        self.options = options
        self._infer = infer
        self._queue: deque[_Request] = deque()
        self._queued_images = 0
        lock = threading.RLock()
        self._condition = threading.Condition(lock)  # batch threads wait here for requests
        # One thread at a time gathers a batch under load; it waits here for more, so
        # that a request arriving meanwhile joins its batch and wakes no other thread.
        self._gathering = False
        self._more_arrived = threading.Condition(lock)
        self._closed = False
        # Held around every model call, including the rare ones made after close(): at
        # most ``threads`` calls at once, whichever thread makes them.
        self._call_slots = threading.BoundedSemaphore(options.threads)
        self._requests = self._images = self._batches = self._largest_batch = 0
        self._running_batches = 0
        # Daemon: a batcher whose app never ran its shutdown must not keep Python alive.
        self._threads = [
            threading.Thread(target=self._serve, name=f"batcher {name} {index}", daemon=True)
            for index in range(options.threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, images: Batch, *, part: bool = False) -> Future[Batch]:
        """Queue a float32 batch (N, H, W, C); the future holds its probabilities (N, classes).

        ``part``: the images are one of the ``part_slices`` of a larger request, submitted
        by a caller that decodes such requests in parts.
        """
        now = time.monotonic()
        split = self._split(images)
        parts = [
            _Request(rows, Future(), now, counted=index == 0, part=part or len(split) > 1)
            for index, rows in enumerate(split)
        ]
        with self._condition:
            if not self._closed:
                self._queue.extend(parts)
                self._queued_images += len(images)
                if self._gathering:
                    self._more_arrived.notify()
                elif self._may_start_a_batch():
                    self._condition.notify(len(parts))
                return joined([part.future for part in parts])
        # Closed (the model was evicted) after this request took it from the cache: the
        # request is still answered rather than failed, in the caller's thread unless
        # that thread runs an event loop, which a model call would stall for everyone.
        request = _Request(images, Future(), now)
        if _in_event_loop():
            threading.Thread(target=self._run, args=([request],), daemon=True).start()
        else:
            self._run([request])
        return request.future

    async def predict(self, images: Batch) -> Batch:
        """Probabilities for a batch, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(images))

    def predict_blocking(self, images: Batch) -> Batch:
        """Probabilities for a batch, for callers in worker threads."""
        return self.submit(images).result()

    def part_slices(self, count: int) -> list[slice]:
        """The rows of a request of ``count`` images that queue as separate batches.

        All of them as one, or full batches and the rest: callers that decode a large
        request can decode its parts side by side too, and submit each as it is ready.
        """
        limit = self.options.max_batch_size
        if not self.options.enabled or self.options.threads == 1 or count <= limit:
            return [slice(0, count)]  # one thread runs a large request in chunks as fast
        return [slice(start, min(start + limit, count)) for start in range(0, count, limit)]

    def _split(self, images: Batch) -> list[Batch]:
        return [images[rows] for rows in self.part_slices(len(images))]

    def close(self, timeout: float | None = 10.0) -> None:
        """Answer what is queued, then stop the threads; later submits run in their caller."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            self._more_arrived.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def stats(self) -> BatchStats:
        with self._condition:
            return BatchStats(
                requests=self._requests,
                images=self._images,
                batches=self._batches,
                largest_batch=self._largest_batch,
                queued_requests=len(self._queue),
                running_batches=self._running_batches,
                running=all(thread.is_alive() for thread in self._threads),
            )

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch, counted=True)

    def _next_batch(self) -> list[_Request] | None:
        """The next batch to run, counted as running; None once the batcher is closed."""
        with self._condition:
            found_empty = not self._queue
            while not self._may_start_a_batch():
                if self._closed and not self._queue:
                    return None
                self._condition.wait()
            was_idle = found_empty and self._running_batches == 0
            # Counted before the batch fills: a request arriving meanwhile finds the
            # server busy, so another batch thread lets it gather company too.
            self._running_batches += 1
            batch, size = self._take([], 0)
            if not batch or was_idle or not self.options.enabled or batch[0].part:
                return batch
            # Requests are arriving: let the batch fill until its oldest request has
            # waited max_wait_seconds in all. A part-filled batch then still waits while
            # another call runs, as requests wait behind the model with one thread.
            deadline = batch[0].enqueued_at + self.options.max_wait_seconds
            self._gathering = True
            while not self._closed:
                if self._queue:
                    if size + len(self._queue[0].images) > self.options.max_batch_size:
                        break
                    batch, size = self._take(batch, size)
                    continue
                if size >= self.options.max_batch_size:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 and self._running_batches == 1:  # only this one
                    break
                self._more_arrived.wait(remaining if remaining > 0 else None)
            self._gathering = False
            if self._may_start_a_batch() or (self._closed and not self._queue):
                self._condition.notify_all()  # a full batch left, or threads to stop
            return batch

    def _may_start_a_batch(self) -> bool:
        """Whether a waiting batch thread should take from the queue now (lock held)."""
        if not self._queue or self._gathering:
            return False
        if self._closed or self._running_batches == 0 or self._queue[0].part:
            return True
        full = self.options.max_batch_size if self.options.enabled else 1
        return self._queued_images >= full

    def _take(self, batch: list[_Request], size: int) -> tuple[list[_Request], int]:
        # Whole requests only, up to max_batch_size images; a first request larger than
        # that is taken alone and runs in chunks. Without batching, one request per call.
        limit = self.options.max_batch_size if self.options.enabled else 0
        while self._queue and (not batch or size + len(self._queue[0].images) <= limit):
            request = self._queue.popleft()
            self._queued_images -= len(request.images)
            # A request whose client went away (its future was cancelled) is skipped.
            if request.future.set_running_or_notify_cancel():
                batch.append(request)
                size += len(request.images)
        return batch, size

    def _run(self, batch: list[_Request], *, counted: bool = False) -> None:
        """Run one batch and answer its requests.

        ``counted``: ``_next_batch`` counted it as running. It stops counting when the
        model call is over, before the answers go out: a client that sends its next
        request as soon as it has this answer must find the server idle.
        """
        outcome: Batch | Exception | None = None
        images: Batch = np.empty(0, dtype=np.float32)
        try:
            if batch:
                images = (
                    batch[0].images
                    if len(batch) == 1
                    else np.concatenate([request.images for request in batch])
                )
                with self._call_slots:
                    outcome = self._infer(images)
        except Exception as error:
            logger.warning("a batch of %d images failed", len(images), exc_info=True)
            outcome = error
        with self._condition:
            if counted:
                self._running_batches -= 1
                self._more_arrived.notify()  # a part-filled batch may have waited for this
            if outcome is not None and not isinstance(outcome, Exception):
                self._requests += sum(request.counted for request in batch)
                self._images += len(images)
                self._batches += 1
                self._largest_batch = max(self._largest_batch, len(images))
        if outcome is None:  # every request it took had been cancelled
            return
        if isinstance(outcome, Exception):
            for request in batch:
                request.future.set_exception(outcome)
            return
        start = 0
        for request in batch:
            end = start + len(request.images)
            request.future.set_result(outcome[start:end])
            start = end


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def joined(parts: list[Future[Batch]]) -> Future[Batch]:
    """One future for a request's parts: their rows in order once all are done.

    Where parts failed, it fails with the first failing part's error by position,
    whichever failed first in time. Cancelling it (the client went away) cancels the
    parts not yet running.
    """
    if len(parts) == 1:
        return parts[0]
    whole: Future[Batch] = Future()
    pending = len(parts)
    lock = threading.Lock()

    def settle(_: Future[Batch]) -> None:
        nonlocal pending
        with lock:
            pending -= 1
            if pending:
                return
        try:
            for part in parts:
                if (error := part.exception()) is not None:
                    whole.set_exception(error)
                    return
            whole.set_result(np.concatenate([part.result() for part in parts]))
        except (CancelledError, InvalidStateError):  # the whole was cancelled meanwhile
            pass

    def cancel_parts(future: Future[Batch]) -> None:
        if future.cancelled():
            for part in parts:
                part.cancel()

    for part in parts:
        part.add_done_callback(settle)
    whole.add_done_callback(cancel_parts)
    return whole
