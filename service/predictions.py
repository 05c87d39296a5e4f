"""From read inputs to ranked classes: decode, run through the model's batcher, rank.

Shared by /predict and the TensorFlow Serving routes, so both decode on the same
threads and batch on the same model thread.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

import numpy as np
from fastapi.concurrency import run_in_threadpool

from service.batching import Batcher
from service.bodies import Instances, PredictInputs, Uploads
from service.images import Batch, InputShape, decode_image, instances_to_batch
from service.model_cache import LoadedModel, ModelCache
from service.responses import check_finite
from trainer.errors import InvalidInputError

DEFAULT_TOP_K = 3
# Uploads with at most this many pixels in all are decoded on the event loop: a 32×32
# PNG decodes in tens of microseconds, less than a hop to a decoding thread and back.
INLINE_DECODE_MAX_PIXELS = 4 * 64 * 64
ExtraT = TypeVar("ExtraT")


async def loaded_model(cache: ModelCache, model_name: str, version: int) -> LoadedModel:
    """The cached model at once, or loaded in a worker thread: a load takes seconds."""
    loaded = cache.get_if_loaded(model_name, version)
    if loaded is None:
        loaded = await run_in_threadpool(cache.get, model_name, version)
    return loaded


def decode_inputs(inputs: PredictInputs, input_shape: InputShape) -> tuple[Batch, list[str | None]]:
    """The inputs as one float32 batch, and the uploaded file names (None for JSON)."""
    if isinstance(inputs, Instances):
        batch = instances_to_batch(inputs.instances, inputs.files, input_shape, inputs.pixel_range)
        return batch, [None] * len(batch)
    arrays = [
        decode_image(upload.data, input_shape, description=f"file {upload.filename!r}")
        for upload in inputs.files
    ]
    return np.stack(arrays), [upload.filename for upload in inputs.files]


async def predict_inputs(
    cache: ModelCache,
    model_name: str,
    version: int,
    inputs: PredictInputs,
    top_k: int | None,
    decode_pool: Executor,
) -> dict[str, Any]:
    """Decode the inputs, run them through the model's batcher, rank the classes.

    Returns the PredictResponse as plain JSON data: building and re-validating
    pydantic objects per class and image cost more than the model call for small images.
    """
    loaded = await loaded_model(cache, model_name, version)
    k = _check_top_k(top_k, loaded)
    decode = functools.partial(decode_inputs, inputs, loaded.input_shape)
    if isinstance(inputs, Uploads) and inputs.pixels <= INLINE_DECODE_MAX_PIXELS:
        images, filenames = decode()
        probabilities = await loaded.batcher.predict(images)
    else:
        # Decoding is CPU-bound: its own threads, while the batcher's thread runs the model
        # on other requests' images. Pillow and service/png_kernel.py release the GIL.
        probabilities, filenames = await prepare_and_predict(decode_pool, decode, loaded.batcher)
    check_finite(probabilities, loaded.model_name, loaded.version)
    # Ranked and converted for all rows at once: per-row NumPy calls cost more than the
    # model call for a 64-image batch. Stable sort: ties keep class order, every time.
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :k].tolist()
    return {
        "model_name": loaded.model_name,
        "version": loaded.version,
        "predictions": [
            _prediction(row, order, loaded.class_names, filename)
            for row, order, filename in zip(probabilities.tolist(), ranked, filenames, strict=True)
        ],
    }


async def predict_probabilities(
    cache: ModelCache,
    model_name: str,
    version: int,
    inputs: Instances,
    decode_pool: Executor,
) -> list[list[float]]:
    """Probabilities per instance (pixels or b64 files), as TF Serving answers."""
    loaded = await loaded_model(cache, model_name, version)

    def decode() -> tuple[Batch, None]:
        batch = instances_to_batch(
            inputs.instances, inputs.files, loaded.input_shape, inputs.pixel_range
        )
        return batch, None

    probabilities, _ = await prepare_and_predict(decode_pool, decode, loaded.batcher)
    check_finite(probabilities, loaded.model_name, loaded.version)
    rows: list[list[float]] = probabilities.tolist()
    return rows


def _check_top_k(top_k: int | None, loaded: LoadedModel) -> int:
    if top_k is None:
        return min(DEFAULT_TOP_K, loaded.num_classes)
    if top_k > loaded.num_classes:
        raise InvalidInputError(
            f"top_k is {top_k} but model {loaded.model_name!r} version {loaded.version} has "
            f"{loaded.num_classes} classes; use 1 to {loaded.num_classes}",
            top_k=top_k,
            num_classes=loaded.num_classes,
        )
    return top_k


def _prediction(
    values: list[float], ranked: list[int], class_names: tuple[str, ...], filename: str | None
) -> dict[str, Any]:
    """One Prediction as JSON data (the schema documents it; see predict_inputs)."""
    best = ranked[0]
    prediction: dict[str, Any] = {
        "label": class_names[best],
        "class_index": best,
        "confidence": values[best],
        "top_k": [{"label": class_names[index], "probability": values[index]} for index in ranked],
    }
    if filename is not None:  # response_model_exclude_none, as the schema says
        prediction["filename"] = filename
    return prediction


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
