"""From read inputs to ranked classes: decode, run through the model's batcher, rank.

Shared by /predict and the TensorFlow Serving routes, so both decode on the same
threads and batch on the same model thread.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Executor, Future
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from service.batching import Batcher, joined
from service.bodies import Instances, PredictInputs, Uploads
from service.images import Batch, InputShape, decode_image, instances_to_batch
from service.model_cache import LoadedModel, ModelCache
from service.responses import check_finite
from service.schemas_predict import DEFAULT_TOP_K
from trainer.errors import InvalidInputError

# Uploads with at most this many pixels in all are decoded on the event loop: a 32×32
# PNG decodes in tens of microseconds, less than a hop to a decoding thread and back.
INLINE_DECODE_MAX_PIXELS = 4 * 64 * 64


async def loaded_model(cache: ModelCache, model_name: str, version: int) -> LoadedModel:
    """The cached model at once, or loaded in a worker thread: a load takes seconds."""
    loaded = cache.get_if_loaded(model_name, version)
    if loaded is None:
        loaded = await run_in_threadpool(cache.get, model_name, version)
    return loaded


def decode_inputs(inputs: PredictInputs, input_shape: InputShape, rows: slice) -> Batch:
    """The inputs' ``rows`` as one float32 batch."""
    if isinstance(inputs, Instances):
        return instances_to_batch(
            inputs.instances, inputs.files, input_shape, inputs.pixel_range, rows
        )
    arrays = [
        decode_image(upload.data, input_shape, description=f"file {upload.filename!r}")
        for upload in inputs.files[rows]
    ]
    # One image (the commonest upload) as a view: np.stack would copy it, letting go of
    # the GIL, which the event loop then waits to get back (see service/png_batch.py).
    return arrays[0][np.newaxis] if len(arrays) == 1 else np.stack(arrays)


def _count(inputs: PredictInputs) -> int:
    return len(inputs.instances) if isinstance(inputs, Instances) else len(inputs.files)


async def _decode_and_predict(
    inputs: PredictInputs, loaded: LoadedModel, decode_pool: Executor
) -> Batch:
    """Probabilities for every input, decoded in the parts the batcher runs as batches."""
    if isinstance(inputs, Uploads) and inputs.pixels <= INLINE_DECODE_MAX_PIXELS:
        images = decode_inputs(inputs, loaded.input_shape, slice(0, len(inputs.files)))
        return await loaded.batcher.predict(images)
    # Decoding is CPU-bound: its own threads, while the batcher's threads run the model
    # on other requests' images. Pillow and service/png_kernel.py release the GIL.
    decoders = [
        functools.partial(decode_inputs, inputs, loaded.input_shape, rows)
        for rows in loaded.batcher.part_slices(_count(inputs))
    ]
    return await prepare_and_predict(decode_pool, decoders, loaded.batcher)


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
    probabilities = await _decode_and_predict(inputs, loaded, decode_pool)
    check_finite(probabilities, loaded.model_name, loaded.version)
    filenames: list[str | None] = (
        [None] * len(probabilities)
        if isinstance(inputs, Instances)
        else [upload.filename for upload in inputs.files]
    )
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
    probabilities = await _decode_and_predict(inputs, loaded, decode_pool)
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
    executor: Executor, decoders: Sequence[Callable[[], Batch]], batcher: Batcher
) -> Batch:
    """Run each decoder on ``executor``, its batch on ``batcher``; their rows in order.

    Each decoding thread hands its batch straight to the batcher, so a large request's
    first part computes while the next decodes, and the event loop wakes once, when
    every part is answered: each hand-over between threads costs a scheduler wake-up,
    milliseconds on a machine whose cores are all busy. The parts are joined as the
    batcher joins a large request's (``joined``): the first failing part's error by
    position.
    """
    parts: list[Future[Batch]] = [Future() for _ in decoders]
    several = len(decoders) > 1
    # A part is running from its decoding on, so cancelling the request cannot cancel
    # it: its model calls are cancelled here instead, or a request timed out under
    # overload would leave its work queued ahead of live requests.
    abandoned = threading.Event()
    submitted: list[Future[Batch]] = []

    def decode_then_submit(decode: Callable[[], Batch], part: Future[Batch]) -> None:
        if not part.set_running_or_notify_cancel():
            return  # the request was cancelled before this part was decoded
        try:
            images = decode()
        except Exception as error:  # noqa: BLE001 - raised again in the awaiting request
            part.set_exception(error)
            return
        inference = batcher.submit(images, part=several)
        submitted.append(inference)
        if abandoned.is_set():  # after the append: one of the two sides cancels it
            inference.cancel()
        inference.add_done_callback(functools.partial(_pass_on, part))

    for decode, part in zip(decoders, parts, strict=True):
        executor.submit(decode_then_submit, decode, part)
    try:
        return await asyncio.wrap_future(joined(parts))
    except asyncio.CancelledError:
        abandoned.set()
        for future in [*parts, *submitted]:
            future.cancel()
        raise


def _pass_on(part: Future[Batch], inference: Future[Batch]) -> None:
    """Settle a running ``part`` as its model call settled."""
    if inference.cancelled():
        # The request was abandoned; a running future cannot be cancelled, only failed.
        part.set_exception(CancelledError("the request was cancelled"))
        return
    if (error := inference.exception()) is not None:
        part.set_exception(error)
    else:
        part.set_result(inference.result())
