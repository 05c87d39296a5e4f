"""Dynamic batching, the traced forward pass and admission control, for correctness only.

Whether requests were batched is read from the batcher's counters, never from timings:
a test holds the model call open (a blocking wrapper around CompiledModel.__call__),
lets requests queue behind it, then releases it and counts the model calls.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image

from service.app import create_app
from service.batching import Batcher, BatchingOptions
from service.inference import CompiledModel, bucket_sizes
from service.model_cache import ModelCache
from service.predictions import prepare_and_predict
from tests.conftest import make_record
from tests.test_predict import TINY_CNN, save_model
from trainer.architectures import build_model
from trainer.registry import FileModelRegistry
from worker.settings import Settings

MODEL = "tiny"
INPUT_SHAPE = (12, 12, 3)
CLASSES = ["a", "b", "c", "d"]


def row_sums(batch: NDArray[np.float32]) -> NDArray[np.float32]:
    """A stand-in model whose every output row tells which input row it came from."""
    sums: NDArray[np.float32] = batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)
    return sums


def images(count: int, seed: int) -> NDArray[np.float32]:
    return np.random.default_rng(seed).random((count, *INPUT_SHAPE), dtype=np.float32)


class HeldCalls:
    """Wraps a model function so that its first ``held`` calls block until ``release``."""

    def __init__(self, function: Callable[[Any], Any], held: int = 1) -> None:
        self.function = function
        self.held = held
        self.entered = threading.Event()
        self.released = threading.Event()
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls <= self.held:
            self.entered.set()
            assert self.released.wait(timeout=30)
        return self.function(*args)

    def release(self) -> None:
        self.released.set()


def assert_each_gets_its_rows(
    futures: list[Future[NDArray[np.float32]]], inputs: list[NDArray[np.float32]]
) -> None:
    for future, batch in zip(futures, inputs, strict=True):
        np.testing.assert_array_equal(future.result(timeout=30), row_sums(batch))


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)


# --- The batcher on its own, with a stand-in model ---------------------------------------


def test_queued_requests_run_as_one_batch_and_get_their_own_rows() -> None:
    held = HeldCalls(row_sums)
    batcher = Batcher(
        held, BatchingOptions(max_batch_size=8, max_wait_seconds=0, threads=1), "test"
    )
    try:
        first = batcher.submit(images(1, seed=0))
        assert held.entered.wait(timeout=30)
        inputs = [images(count, seed) for seed, count in enumerate([1, 2, 3], start=1)]
        queued = [batcher.submit(batch) for batch in inputs]
        wait_for(lambda: batcher.stats().queued_requests == 3, "three queued requests")
        held.release()
        assert_each_gets_its_rows(queued, inputs)
        assert first.result(timeout=30).shape == (1, 1)
        stats = batcher.stats()
        assert (stats.batches, stats.requests, stats.images) == (2, 4, 7)
        assert stats.largest_batch == 6  # the three queued requests, in one call
    finally:
        held.release()
        batcher.close()


def test_batches_respect_the_maximum_and_large_requests_run_alone() -> None:
    held = HeldCalls(row_sums)
    batcher = Batcher(
        held, BatchingOptions(max_batch_size=4, max_wait_seconds=0, threads=1), "test"
    )
    try:
        batcher.submit(images(1, seed=0))
        assert held.entered.wait(timeout=30)
        inputs = [images(count, seed) for seed, count in enumerate([2, 2, 2, 9], start=1)]
        futures = [batcher.submit(batch) for batch in inputs]
        wait_for(lambda: batcher.stats().queued_requests == 4, "four queued requests")
        held.release()
        assert_each_gets_its_rows(futures, inputs)
        # 1, then 2+2, then 2 (a third would pass 4), then the 9-image request alone.
        assert batcher.stats().batches == 4
    finally:
        held.release()
        batcher.close()


def test_without_batching_each_request_is_its_own_call() -> None:
    held = HeldCalls(row_sums)
    batcher = Batcher(held, BatchingOptions(enabled=False, threads=1), "test")
    try:
        batcher.submit(images(1, seed=0))
        assert held.entered.wait(timeout=30)
        futures = [batcher.submit(images(1, seed)) for seed in range(1, 4)]
        wait_for(lambda: batcher.stats().queued_requests == 3, "three queued requests")
        held.release()
        for future in futures:
            future.result(timeout=30)
        stats = batcher.stats()
        assert (stats.batches, stats.largest_batch) == (4, 1)
    finally:
        held.release()
        batcher.close()


def test_a_lone_request_on_an_idle_server_does_not_wait_for_a_batch() -> None:
    batcher = Batcher(row_sums, BatchingOptions(max_batch_size=64, max_wait_seconds=5), "test")
    try:
        for seed in range(3):  # each arrives at an idle batcher
            started = time.monotonic()
            batcher.submit(images(1, seed)).result(timeout=30)
            assert time.monotonic() - started < 2.5, "an idle batcher waited to fill a batch"
        assert batcher.stats().batches == 3
    finally:
        batcher.close()


def test_two_batch_threads_run_two_model_calls_at_once() -> None:
    both_inside = threading.Barrier(2, timeout=30)

    def meet_then_sum(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        both_inside.wait()  # passes only if the second call starts before the first ends
        return row_sums(batch)

    # A batch holds one request: two requests are two calls, whenever they arrive.
    options = BatchingOptions(max_batch_size=2, max_wait_seconds=0, threads=2)
    batcher = Batcher(meet_then_sum, options, "test")
    try:
        inputs = [images(2, seed=0), images(2, seed=1)]
        futures = [batcher.submit(batch) for batch in inputs]
        assert_each_gets_its_rows(futures, inputs)
        assert batcher.stats().batches == 2
    finally:
        batcher.close()


def test_a_full_batch_runs_beside_the_running_call() -> None:
    held = HeldCalls(row_sums)
    options = BatchingOptions(max_batch_size=4, max_wait_seconds=30, threads=2)
    batcher = Batcher(held, options, "test")
    try:
        first = batcher.submit(images(1, seed=0))
        assert held.entered.wait(timeout=30)
        inputs = [images(1, seed) for seed in range(1, 5)]
        futures = []
        for batch in inputs:
            futures.append(batcher.submit(batch))
            time.sleep(0.01)  # one at a time, as separate clients' requests arrive
        assert_each_gets_its_rows(futures, inputs)
        stats = batcher.stats()
        assert (stats.batches, stats.largest_batch, stats.running_batches) == (1, 4, 1)
        held.release()
        assert first.result(timeout=30).shape == (1, 1)
        assert batcher.stats().running_batches == 0
    finally:
        held.release()
        batcher.close()


def test_a_part_filled_batch_waits_for_the_running_call_not_beside_it() -> None:
    held = HeldCalls(row_sums)
    options = BatchingOptions(max_batch_size=4, max_wait_seconds=0, threads=2)
    batcher = Batcher(held, options, "test")
    try:
        first = batcher.submit(images(1, seed=0))
        assert held.entered.wait(timeout=30)
        inputs = [images(1, seed) for seed in (1, 2)]
        futures = [batcher.submit(batch) for batch in inputs]
        time.sleep(0.3)  # time enough for the idle second thread to run them, wrongly
        assert not any(future.done() for future in futures)
        assert batcher.stats().queued_requests == 2
        held.release()
        assert_each_gets_its_rows(futures, inputs)
        assert first.result(timeout=30).shape == (1, 1)
        stats = batcher.stats()
        assert (stats.batches, stats.largest_batch) == (2, 2)  # the held call, then both
    finally:
        held.release()
        batcher.close()


def meeting_in_pairs(shapes: list[int]) -> Callable[[NDArray[np.float32]], NDArray[np.float32]]:
    """A stand-in model whose calls return only in pairs: two calls must run at once."""
    both_inside = threading.Barrier(2, timeout=10)

    def meet_then_sum(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        shapes.append(len(batch))
        both_inside.wait()
        return row_sums(batch)

    return meet_then_sum


# 8 images: two full batches; 6: a full one and a part-filled rest, which does not wait
# for the full one's call (as other part-filled batches do), although max_wait is long.
@pytest.mark.parametrize(("count", "parts"), [(8, [4, 4]), (6, [2, 4])])
def test_a_lone_large_request_runs_its_parts_side_by_side(count: int, parts: list[int]) -> None:
    shapes: list[int] = []
    options = BatchingOptions(max_batch_size=4, max_wait_seconds=30, threads=2)
    batcher = Batcher(meeting_in_pairs(shapes), options, "test")
    try:
        batch = images(count, seed=0)
        np.testing.assert_array_equal(batcher.predict_blocking(batch), row_sums(batch))
        stats = batcher.stats()
        assert sorted(shapes) == parts
        assert (stats.requests, stats.images, stats.batches) == (1, count, 2)
    finally:
        batcher.close()


def test_parts_submitted_one_by_one_run_side_by_side_as_a_split_request() -> None:
    shapes: list[int] = []
    options = BatchingOptions(max_batch_size=4, max_wait_seconds=30, threads=2)
    batcher = Batcher(meeting_in_pairs(shapes), options, "test")
    try:
        full, rest = images(4, seed=1), images(3, seed=2)
        futures = [batcher.submit(full, part=True), batcher.submit(rest, part=True)]
        assert_each_gets_its_rows(futures, [full, rest])
        assert sorted(shapes) == [3, 4]
    finally:
        batcher.close()


def test_a_large_request_keeps_its_rows_in_order_across_its_parts() -> None:
    options = BatchingOptions(max_batch_size=4, max_wait_seconds=0, threads=2)
    batcher = Batcher(row_sums, options, "test")
    try:
        for count in (5, 9, 13):  # full batches and a remainder
            batch = images(count, seed=count)
            np.testing.assert_array_equal(batcher.predict_blocking(batch), row_sums(batch))
        assert batcher.stats().requests == 3
    finally:
        batcher.close()


def test_a_failing_part_fails_the_large_request_and_the_rest_still_runs() -> None:
    def broken_on_the_second_half(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        if batch[0, 0, 0, 0] < 0:
            raise RuntimeError("model exploded")
        return row_sums(batch)

    options = BatchingOptions(max_batch_size=4, max_wait_seconds=0, threads=2)
    batcher = Batcher(broken_on_the_second_half, options, "test")
    try:
        batch = images(8, seed=0)
        batch[4:] *= -1
        with pytest.raises(RuntimeError, match="model exploded"):
            batcher.predict_blocking(batch)
        healthy = images(8, seed=1)
        np.testing.assert_array_equal(batcher.predict_blocking(healthy), row_sums(healthy))
    finally:
        batcher.close()


def test_cancelling_a_large_request_skips_its_parts_not_yet_running() -> None:
    held = HeldCalls(row_sums, held=2)
    options = BatchingOptions(max_batch_size=4, max_wait_seconds=0, threads=2)
    batcher = Batcher(held, options, "test")
    try:
        first = batcher.submit(images(4, seed=0))  # holds one batch thread
        assert held.entered.wait(timeout=30)
        # Four parts: the other thread takes one and is held too, three wait in the queue.
        large = batcher.submit(images(16, seed=1))
        wait_for(
            lambda: (batcher.stats().running_batches, batcher.stats().queued_requests) == (2, 3),
            "two held calls and three queued parts",
        )
        assert large.cancel()
        held.release()
        assert first.result(timeout=30).shape == (4, 1)
        wait_for(lambda: batcher.stats().running_batches == 0, "the running calls to end")
        stats = batcher.stats()
        assert stats.queued_requests == 0
        assert stats.images == 4 + 4  # the held call and the part already running
    finally:
        held.release()
        batcher.close()


def test_a_cancelled_request_takes_its_queued_model_call_with_it() -> None:
    # A request the server gave up on (its timeout under overload): its part is running
    # from decoding on and cannot be cancelled, so its queued model call is cancelled
    # instead, and the batch threads never compute an answer nobody waits for.
    held = HeldCalls(row_sums, held=2)
    batcher = Batcher(held, BatchingOptions(max_batch_size=4, max_wait_seconds=0, threads=2), "t")
    decode_pool = ThreadPoolExecutor(2)
    try:
        blockers = [batcher.submit(images(4, seed=seed)) for seed in (0, 1)]
        wait_for(lambda: batcher.stats().running_batches == 2, "both batch threads held")

        async def give_up_on_a_request() -> None:
            request = asyncio.create_task(
                prepare_and_predict(decode_pool, [lambda: images(4, seed=2)], batcher)
            )
            queued = lambda: batcher.stats().queued_requests == 1  # noqa: E731
            await asyncio.to_thread(wait_for, queued, "the request's model call queued")
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request

        asyncio.run(give_up_on_a_request())
        held.release()
        assert_each_gets_its_rows(blockers, [images(4, seed=0), images(4, seed=1)])
        wait_for(lambda: batcher.stats().running_batches == 0, "the held calls to end")
        assert held.calls == 2  # the abandoned request's call never ran
        assert batcher.stats().queued_requests == 0
    finally:
        held.release()
        batcher.close()
        decode_pool.shutdown()


def test_a_failing_batch_fails_each_of_its_requests() -> None:
    def broken(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        raise RuntimeError("model exploded")

    batcher = Batcher(broken, BatchingOptions(), "test")
    try:
        with pytest.raises(RuntimeError, match="model exploded"):
            batcher.predict_blocking(images(2, seed=0))
        assert batcher.stats().running  # the thread survives a failed batch
    finally:
        batcher.close()


def test_a_closed_batcher_stops_its_thread_and_still_answers() -> None:
    batcher = Batcher(row_sums, BatchingOptions(), "test")
    assert batcher.stats().running
    batcher.close()
    assert not batcher.stats().running
    # A request that took the model just before it was evicted is answered, not failed.
    batch = images(3, seed=1)
    np.testing.assert_array_equal(batcher.predict_blocking(batch), row_sums(batch))


def test_a_closed_batcher_never_runs_the_model_on_the_event_loop() -> None:
    # The model call of a request that took its model just before the eviction would
    # stall every other connection for its duration if it ran on the loop's thread.
    threads: list[int] = []

    def recording(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        threads.append(threading.get_ident())
        return row_sums(batch)

    batcher = Batcher(recording, BatchingOptions(), "test")
    batcher.close()
    batch = images(3, seed=1)

    async def predict_on_the_loop() -> tuple[NDArray[np.float32], int]:
        return await batcher.predict(batch), threading.get_ident()

    answer, loop_thread = asyncio.run(predict_on_the_loop())
    np.testing.assert_array_equal(answer, row_sums(batch))
    assert threads and loop_thread not in threads


# --- The traced forward pass -------------------------------------------------------------


def test_bucket_sizes_are_powers_of_two_up_to_the_maximum() -> None:
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(64) == (1, 2, 4, 8, 16, 32, 64)
    assert bucket_sizes(48) == (1, 2, 4, 8, 16, 32, 48)
    with pytest.raises(ValueError):
        bucket_sizes(0)


@pytest.fixture(scope="module")
def tiny_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_model("custom_cnn", TINY_CNN, INPUT_SHAPE, len(CLASSES))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_the_compiled_path_matches_the_plain_model_call(
    tiny_model: keras.Model, jit_compile: bool
) -> None:
    compiled = CompiledModel(tiny_model, INPUT_SHAPE, max_batch_size=8, jit_compile=jit_compile)
    compiled.warm()
    for count in (1, 3, 8, 19):  # exact bucket, padded, the maximum, in chunks
        batch = images(count, seed=count)
        expected = np.asarray(tiny_model(batch, training=False))
        result = compiled(batch)
        assert result.shape == (count, len(CLASSES))
        np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)


# --- Through the app ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model: keras.Model) -> Path:
    home = tmp_path_factory.mktemp("home")
    registry = FileModelRegistry(home / "registry")
    record = make_record(class_names=CLASSES, input_shape=list(INPUT_SHAPE))
    registry.register(MODEL, lambda path: save_model(tiny_model, path), record)
    return home


def make_client(home: Path, **settings: Any) -> TestClient:
    # No `with`: these tests need no lifespan; test_the_batcher_stops_with_the_app does.
    return TestClient(create_app(Settings(home=home, **settings)))


def cache_of(client: TestClient) -> ModelCache:
    cache: ModelCache = client.app.state.services.model_cache  # type: ignore[attr-defined]
    return cache


@pytest.fixture
def hold_model_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], HeldCalls]]:
    """Installs a HeldCalls around every loaded model's call; after the warm-ups, then."""
    installed: list[HeldCalls] = []

    def hold() -> HeldCalls:
        held = HeldCalls(CompiledModel.__call__)  # type: ignore[arg-type]

        def held_call(self: CompiledModel, batch: NDArray[np.float32]) -> Any:
            return held(self, batch)

        monkeypatch.setattr(CompiledModel, "__call__", held_call)
        installed.append(held)
        return held

    yield hold
    for held in installed:
        held.release()


def pixel_body(seed: int) -> dict[str, Any]:
    pixels = np.random.default_rng(seed).integers(0, 256, INPUT_SHAPE).tolist()
    return {"instances": [pixels]}


def ranking(body: dict[str, Any]) -> list[list[str]]:
    return [[entry["label"] for entry in row["top_k"]] for row in body["predictions"]]


def probabilities(body: dict[str, Any]) -> list[list[float]]:
    return [[entry["probability"] for entry in row["top_k"]] for row in body["predictions"]]


def assert_same_answers(body: dict[str, Any], expected: dict[str, Any]) -> None:
    # The same classes in the same order; the probabilities agree to float32 rounding
    # (batches of different sizes may use differently blocked CPU kernels).
    assert ranking(body) == ranking(expected)
    np.testing.assert_allclose(probabilities(body), probabilities(expected), rtol=0, atol=1e-6)


def batched_by_two_and_alone(home: Path) -> tuple[TestClient, TestClient]:
    """A client whose model runs batches of at most two, and one without batching."""
    client = make_client(home, max_batch_size=2, max_batch_wait_seconds=0)
    alone = make_client(home, batching=False, batch_threads=1)
    for each in (client, alone):
        cache_of(each).preload(MODEL, 1)
    return client, alone


def test_concurrent_requests_are_batched_and_answer_as_unbatched_ones(
    home: Path, hold_model_calls: Callable[[], HeldCalls]
) -> None:
    # One batch thread: the requests then queue behind the held call.
    batched = make_client(home, max_batch_wait_seconds=0, batch_threads=1)
    unbatched = make_client(home, batching=False)
    for client in (batched, unbatched):
        cache_of(client).preload(MODEL, 1)
    bodies = [pixel_body(seed) for seed in range(5)]
    params = {"model_name": MODEL, "top_k": str(len(CLASSES))}
    batcher = cache_of(batched).get(MODEL, 1).batcher
    before = batcher.stats()
    held_model_calls = hold_model_calls()

    with ThreadPoolExecutor(len(bodies)) as pool:
        first = pool.submit(batched.post, "/predict", params=params, json=bodies[0])
        assert held_model_calls.entered.wait(timeout=30)
        rest = [pool.submit(batched.post, "/predict", params=params, json=b) for b in bodies[1:]]
        wait_for(lambda: batcher.stats().queued_requests == 4, "four queued requests")
        held_model_calls.release()
        responses = [first.result(), *(future.result() for future in rest)]

    after = batcher.stats()
    assert after.batches - before.batches == 2  # the held call, then the four together
    assert after.largest_batch == 4
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200
        alone = unbatched.post("/predict", params=params, json=body).json()
        assert_same_answers(response.json(), alone)
    assert cache_of(unbatched).get(MODEL, 1).batcher.stats().largest_batch == 1


def test_model_calls_side_by_side_answer_as_calls_one_at_a_time(home: Path) -> None:
    # Two batch threads (the default) run full batches at once through one traced graph.
    client, alone = batched_by_two_and_alone(home)
    params = {"model_name": MODEL, "top_k": str(len(CLASSES))}
    bodies = [
        {"instances": np.random.default_rng(seed).integers(0, 256, (2, *INPUT_SHAPE)).tolist()}
        for seed in range(24)
    ]
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda b: client.post("/predict", params=params, json=b), bodies))
    stats = cache_of(client).get(MODEL, 1).batcher.stats()
    assert stats.largest_batch == 2 and stats.running_batches == 0
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200
        expected = alone.post("/predict", params=params, json=body).json()
        assert_same_answers(response.json(), expected)


def png(pixels: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_large_request_runs_in_parts_and_answers_in_order(home: Path) -> None:
    # Seven images with batches of two: four parts, decoded and run side by side.
    client, alone = batched_by_two_and_alone(home)
    params = {"model_name": MODEL, "top_k": str(len(CLASSES))}
    pixels = np.random.default_rng(7).integers(0, 256, (7, *INPUT_SHAPE), dtype=np.uint8)
    pngs = [png(image) for image in pixels]
    b64_body = {"instances": [{"b64": base64.b64encode(data).decode()} for data in pngs]}
    expected = alone.post("/predict", params=params, json=b64_body).json()
    before = cache_of(client).get(MODEL, 1).batcher.stats()
    responses = {
        "b64": client.post("/predict", params=params, json=b64_body),
        "pixels": client.post("/predict", params=params, json={"instances": pixels.tolist()}),
        "uploads": client.post(
            "/predict",
            params=params,
            files=[("files", (f"{index}.png", data)) for index, data in enumerate(pngs)],
        ),
    }
    for kind, response in responses.items():
        assert response.status_code == 200, (kind, response.text)
        assert_same_answers(response.json(), expected)
    filenames = [row["filename"] for row in responses["uploads"].json()["predictions"]]
    assert filenames == [f"{index}.png" for index in range(7)]
    stats = cache_of(client).get(MODEL, 1).batcher.stats()
    # Each request's seven images ran as four batches of at most two, not as one call.
    assert (stats.batches - before.batches, stats.largest_batch) == (3 * 4, 2)


def test_a_large_request_names_its_first_bad_instance_whichever_part_fails_first(
    home: Path,
) -> None:
    client = make_client(home, max_batch_size=2)
    cache_of(client).preload(MODEL, 1)
    good = np.zeros(INPUT_SHAPE, dtype=np.uint8).tolist()
    wrong_shape = np.zeros((11, 12, 3), dtype=np.uint8).tolist()
    instances = [good] * 7
    instances[5] = wrong_shape  # in the third part
    response = client.post("/predict", params={"model_name": MODEL}, json={"instances": instances})
    assert response.status_code == 422, response.text
    assert "instances[5] has shape [11, 12, 3]" in response.json()["detail"]["message"]
    instances[1] = wrong_shape  # in the first part as well: the first by position wins
    response = client.post("/predict", params={"model_name": MODEL}, json={"instances": instances})
    assert response.status_code == 422, response.text
    assert "instances[1] has shape [11, 12, 3]" in response.json()["detail"]["message"]


def test_an_idle_server_answers_without_waiting_for_a_batch(home: Path) -> None:
    client = make_client(home, max_batch_wait_seconds=5)
    cache_of(client).preload(MODEL, 1)
    for seed in range(3):
        started = time.monotonic()
        response = client.post("/predict", params={"model_name": MODEL}, json=pixel_body(seed))
        assert response.status_code == 200
        assert time.monotonic() - started < 2.5, "a lone request waited for a batch to fill"


@pytest.mark.parametrize(
    "path",
    ["/predict?model_name=tiny", "/v1/models/tiny:predict", "/v1/models/tiny/versions/1:predict"],
)
def test_past_the_queue_depth_requests_get_503_with_retry_after(
    home: Path, hold_model_calls: Callable[[], HeldCalls], path: str
) -> None:
    client = make_client(home, predict_max_pending=1)
    cache_of(client).preload(MODEL, 1)
    held_model_calls = hold_model_calls()
    body = pixel_body(0)
    if path.startswith("/v1"):
        body = {"instances": (np.asarray(body["instances"]) / 255).tolist()}
    with ThreadPoolExecutor(1) as pool:
        admitted = pool.submit(client.post, path, json=body)
        assert held_model_calls.entered.wait(timeout=30)
        refused = client.post(path, json=body)
        held_model_calls.release()
        assert admitted.result().status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    detail = refused.json()["detail"]
    assert detail["code"] == "overloaded" and detail["max_pending"] == 1
    assert "DACIAVISION_PREDICT_MAX_PENDING=1" in detail["message"]
    if path.startswith("/v1"):  # TF Serving clients read the top-level "error" string
        assert refused.json()["error"] == detail["message"]
    # The refused request did not hold a place: the next one is admitted.
    assert client.post(path, json=body).status_code == 200


def test_the_batcher_stops_with_the_app(home: Path) -> None:
    app = create_app(Settings(home=home))
    with TestClient(app) as client:
        response = client.post("/predict", params={"model_name": MODEL}, json=pixel_body(1))
        assert response.status_code == 200
        loaded = cache_of(client).get_if_loaded(MODEL, 1)
        assert loaded is not None and loaded.batcher.stats().running
    assert not loaded.batcher.stats().running
    assert cache_of(client).stats().size == 0


def test_an_evicted_model_stops_its_batcher(home: Path) -> None:
    registry = FileModelRegistry(home / "registry")
    cache = ModelCache(registry, capacity=1, batching=BatchingOptions(max_batch_size=4))
    first = cache.get(MODEL, 1)
    assert first.batcher.stats().running
    keras.utils.set_random_seed(4)
    other = build_model("custom_cnn", TINY_CNN, INPUT_SHAPE, len(CLASSES))
    record = make_record(class_names=CLASSES, input_shape=list(INPUT_SHAPE))
    version = registry.register("other", lambda path: save_model(other, path), record)
    second = cache.get("other", version)  # evicts tiny version 1
    assert not first.batcher.stats().running and second.batcher.stats().running
    assert first.predict(images(2, seed=5)).shape == (2, len(CLASSES))  # still answers
    cache.close()
    assert not second.batcher.stats().running
