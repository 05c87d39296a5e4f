"""POST /predict: classify uploaded images or JSON instances with one model version."""

from __future__ import annotations

import functools
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.batching import prepare_and_predict
from service.deps import (
    DecodePoolDep,
    ModelCacheDep,
    ModelVersion,
    PredictLimiterDep,
    QueryModelVersionDep,
    SettingsDep,
)
from service.errors import (
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    error_responses,
    quoted,
)
from service.images import (
    ACCEPTED_FORMATS_TEXT,
    Batch,
    InputShape,
    PixelRange,
    check_pixel_budget,
    check_upload_size,
    decode_base64,
    decode_image,
    instances_to_batch,
)
from service.model_cache import LoadedModel, ModelCache
from service.monitoring import record_predictions
from trainer.errors import InvalidInputError
from worker.settings import Settings

router = APIRouter(tags=["predict"])

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
UPLOAD_FIELDS = ("files", "file")
DEFAULT_TOP_K = 3
# Text fields a multipart form may carry besides its files.
UPLOAD_FIELD_LIMIT = 16
BodyT = TypeVar("BodyT", bound=BaseModel)


class PredictRequest(BaseModel):
    """JSON body of /predict."""

    model_config = ConfigDict(extra="forbid")

    instances: list[Any] = Field(
        min_length=1,
        description='Each instance is `{"b64": "<base64 of a PNG/JPEG/BMP/GIF file>"}` or a '
        "pixel array of the model's input shape [H, W, C] (or [H, W] for one channel).",
    )
    pixel_range: PixelRange = Field(
        "0-255", description="Value range of pixel arrays; ignored for b64 images."
    )


class LabelProbability(BaseModel):
    label: str = Field(examples=["cat"])
    probability: float = Field(examples=[0.91])


class Prediction(BaseModel):
    label: str = Field(description="The most probable class.", examples=["cat"])
    class_index: int = Field(description="Index of `label` in the model's class_names.")
    confidence: float = Field(description="Probability of `label`.", examples=[0.91])
    top_k: list[LabelProbability] = Field(description="The k most probable classes, best first.")
    filename: str | None = Field(None, description="The uploaded file's name (uploads only).")


class PredictResponse(BaseModel):
    model_name: str
    version: int
    predictions: list[Prediction]


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


PredictInputs = PredictRequest | list[Upload]


async def read_inputs(request: Request, settings: Settings) -> PredictInputs:
    """Parse the body by its content type: multipart uploads or JSON instances.

    The body limit (service/limits.py) has bounded the request; here each file is
    bounded while it streams, and every image's pixel count is read from its header
    before anything is decoded. Parsing and header reads run in worker threads.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == MULTIPART_TYPE:
        uploads = await _read_uploads(request, settings)
        images = [(f"file {upload.filename!r}", upload.data) for upload in uploads]
        await run_in_threadpool(_check_pixels, images, settings)
        return uploads
    if content_type == JSON_TYPE:
        parsed = await read_json_body(request, settings, PredictRequest)
        check_instance_count(len(parsed.instances), settings)
        await run_in_threadpool(check_instance_pixels, parsed.instances, settings)
        return parsed
    raise UnsupportedMediaTypeError(
        f"content type {quoted(content_type, 100) or 'none'!r} is not accepted; send "
        f"{MULTIPART_TYPE} with image files in the field 'files', or {JSON_TYPE} with "
        '{"instances": [...]}',
        accepted_content_types=[MULTIPART_TYPE, JSON_TYPE],
    )


def _check_pixels(images: list[tuple[str, bytes]], settings: Settings) -> None:
    check_pixel_budget(images, settings.max_image_pixels, settings.max_request_pixels)


def check_instance_pixels(instances: list[Any], settings: Settings) -> None:
    """The pixel budget of the base64 images among JSON instances (headers only)."""
    images = [
        (f"instances[{index}]", decode_base64(instance["b64"], index))
        for index, instance in enumerate(instances)
        if isinstance(instance, dict) and "b64" in instance
    ]
    for description, data in images:
        check_upload_size(len(data), settings.max_upload_bytes, description)
    _check_pixels(images, settings)


class _BoundedMultiPartParser(MultiPartParser):
    """Starlette's parser, refusing a file as soon as it grows past the per-file limit.

    Starlette would spool the whole part to disk before anyone could look at its size.
    """

    def __init__(self, *args: Any, max_file_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_file_bytes = max_file_bytes
        self.file_too_large: str | None = None
        self._file_bytes = 0
        self._counted_part: object = None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is not None:
            if part is not self._counted_part:
                self._counted_part, self._file_bytes = part, 0
            self._file_bytes += end - start
            if self._file_bytes > self.max_file_bytes:
                self.file_too_large = part.file.filename
                raise MultiPartException("file too large")
        super().on_part_data(data, start, end)


async def _read_uploads(request: Request, settings: Settings) -> list[Upload]:
    parser = _BoundedMultiPartParser(
        request.headers,
        request.stream(),
        max_files=settings.max_instances,
        max_fields=UPLOAD_FIELD_LIMIT,
        max_file_bytes=settings.max_upload_bytes,
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        if parser.file_too_large is not None:
            raise PayloadTooLargeError(
                f"file {quoted(parser.file_too_large, 100)!r} is larger than "
                f"{settings.max_upload_bytes} bytes, the most each image may have; downscale "
                "or recompress it",
                max_bytes=settings.max_upload_bytes,
            ) from None
        if error.message.startswith("Too many files"):
            raise _too_many(f"more than {settings.max_instances}", settings) from None
        raise InvalidInputError(f"malformed multipart body: {error.message}") from None
    try:
        files = [value for field in UPLOAD_FIELDS for value in form.getlist(field)]
        uploads = [await _read_upload(value, settings) for value in files]
    finally:
        await form.close()
    if not uploads:
        fields = sorted(set(form.keys()))[:UPLOAD_FIELD_LIMIT]
        raise InvalidInputError(
            f"the form has no image files; send them in the field 'files' (or 'file'), "
            f"fields received: {quoted(fields) or 'none'}",
            fields=quoted(fields),
        )
    return uploads


async def _read_upload(value: Any, settings: Settings) -> Upload:
    if not isinstance(value, UploadFile):
        raise InvalidInputError("the fields 'files' and 'file' must hold files, not text")
    description = f"file {quoted(value.filename, 100)!r}"
    check_upload_size(value.size or 0, settings.max_upload_bytes, description)
    data = await value.read(settings.max_upload_bytes + 1)
    check_upload_size(len(data), settings.max_upload_bytes, description)
    return Upload(value.filename, data)


async def read_json_body(request: Request, settings: Settings, schema: type[BodyT]) -> BodyT:
    """Read a JSON body (bounded by the body limit) and validate it in a worker thread."""
    body = await request.body()
    return await run_in_threadpool(_validate_json, schema, body)


def _validate_json(schema: type[BodyT], body: bytes) -> BodyT:
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_context=False)
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in errors]
        ) from None


def check_instance_count(count: int, settings: Settings) -> None:
    """PayloadTooLargeError (413) past the per-request limit on inputs."""
    if count > settings.max_instances:
        raise _too_many(str(count), settings)


def _too_many(received: str, settings: Settings) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{received} inputs in one request; at most {settings.max_instances} are accepted, "
        "split them over several requests",
        max_instances=settings.max_instances,
    )


async def loaded_model(cache: ModelCache, model_name: str, version: int) -> LoadedModel:
    """The cached model at once, or loaded in a worker thread: a load takes seconds."""
    loaded = cache.get_if_loaded(model_name, version)
    if loaded is None:
        loaded = await run_in_threadpool(cache.get, model_name, version)
    return loaded


def decode_inputs(
    inputs: PredictInputs, input_shape: InputShape, max_upload_bytes: int
) -> tuple[Batch, list[str | None]]:
    """The inputs as one float32 batch, and the uploaded file names (None for JSON)."""
    if isinstance(inputs, PredictRequest):
        batch = instances_to_batch(
            inputs.instances, input_shape, inputs.pixel_range, max_upload_bytes
        )
        return batch, [None] * len(batch)
    arrays = [
        decode_image(upload.data, input_shape, description=f"file {upload.filename!r}")
        for upload in inputs
    ]
    return np.stack(arrays), [upload.filename for upload in inputs]


async def predict_inputs(
    cache: ModelCache,
    model_version: ModelVersion,
    inputs: PredictInputs,
    top_k: int | None,
    max_upload_bytes: int,
    decode_pool: Executor,
) -> dict[str, Any]:
    """Decode the inputs, run them through the model's batcher, rank the classes.

    Returns the PredictResponse as plain JSON data: building and re-validating
    pydantic objects per class and image cost more than the model call for small images.
    """
    loaded = await loaded_model(cache, model_version.model_name, model_version.version)
    k = _check_top_k(top_k, loaded)
    # Decoding is CPU-bound: its own threads, while the batcher's thread runs the model
    # on other requests' images. Pillow and TensorFlow both release the GIL.
    probabilities, filenames = await prepare_and_predict(
        decode_pool,
        functools.partial(decode_inputs, inputs, loaded.input_shape, max_upload_bytes),
        loaded.batcher,
    )
    return {
        "model_name": loaded.model_name,
        "version": loaded.version,
        "predictions": [
            _prediction(row, loaded.class_names, k, filename)
            for row, filename in zip(probabilities, filenames, strict=True)
        ],
    }


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
    probabilities: NDArray[np.float32], class_names: tuple[str, ...], k: int, filename: str | None
) -> dict[str, Any]:
    """One Prediction as JSON data (the schema documents it; see predict_inputs)."""
    # Stable sort: ties keep class order, so equal probabilities rank the same every time.
    ranked = np.argsort(-probabilities, kind="stable")[:k].tolist()
    values = probabilities.tolist()
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


# A 1x1 black PNG: small enough to paste into the docs' "Try it out".
_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)
_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
_JSON_EXAMPLES = {
    "base64": {"summary": "Image files, base64", "value": {"instances": [{"b64": _PNG_B64}]}},
    "pixels": {
        "summary": "Pixels 0-255, 2x2x1",
        "value": {"instances": [[[[0], [255]], [[9], [0]]]]},
    },
    "unit": {
        "summary": "Pixels 0-1, 2x2",
        "value": {"instances": [[[0, 1], [1, 0]]], "pixel_range": "0-1"},
    },
}
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            MULTIPART_TYPE: {"schema": {"type": "object", "properties": {"files": _FILES}}},
            JSON_TYPE: {"schema": PredictRequest.model_json_schema(), "examples": _JSON_EXAMPLES},
        },
    }
}

TopKQuery = Annotated[
    int | None,
    Query(ge=1, description="Classes ranked per prediction, 1 to the number of classes "
          f"(default {DEFAULT_TOP_K}, or fewer if the model has fewer classes)."),
]  # fmt: skip


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    summary="Classify images",
    description=(
        "Classifies images with one model version (a number, an alias such as `production`, "
        "or empty for `production` if set, else the latest version).\n\n"
        f"* `{MULTIPART_TYPE}`: one or more files in the field `files` (or `file`), "
        f"{ACCEPTED_FORMATS_TEXT}, any size and colour mode; they are converted to the "
        "model's channels (transparency composited on white) and resized to its input.\n"
        f'* `{JSON_TYPE}`: `{{"instances": [...]}}`, each `{{"b64": "..."}}` or a pixel array '
        'of the input shape, with `"pixel_range"` `"0-255"` (default) or `"0-1"`.\n\n'
        "Per-file and per-request limits answer 413; past the server's queue depth it "
        "answers 503 with `Retry-After`."
    ),
    responses=error_responses(404, 413, 415, 422, 503),
    openapi_extra=_OPENAPI_BODY,
)
async def predict(
    request: Request,
    model_version: QueryModelVersionDep,
    cache: ModelCacheDep,
    settings: SettingsDep,
    limiter: PredictLimiterDep,
    decode_pool: DecodePoolDep,
    top_k: TopKQuery = None,
) -> Response:
    """Classify uploaded images or JSON instances with one model version."""
    with limiter.admit():
        inputs = await read_inputs(request, settings)
        body = await predict_inputs(
            cache, model_version, inputs, top_k, settings.max_upload_bytes, decode_pool
        )
    record_predictions(body["model_name"], body["version"], len(body["predictions"]))
    return JSONResponse(body)
