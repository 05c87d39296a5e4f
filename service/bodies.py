"""Reading request bodies within their limits: JSON off the event loop, bounded uploads.

The body limit (service/limits.py) has bounded each request before it gets here;
these helpers bound what is inside it — bytes per file, files and instances per
request, pixels per image read from headers — before anything is decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.errors import PayloadTooLargeError, UnsupportedMediaTypeError, quoted
from service.images import PixelRange, check_pixel_budget, check_upload_size, instance_files
from service.multipart import SIMPLE_MULTIPART_MAX_BYTES, multipart_boundary, parse_single_file
from service.schemas_predict import PredictRequest
from trainer.errors import InvalidInputError
from worker.settings import Settings

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
UPLOAD_FIELDS = ("files", "file")
# Text fields a multipart form may carry besides its files.
UPLOAD_FIELD_LIMIT = 16
# Uploads this small have their headers read on the event loop: microseconds, where a
# hop to a worker thread and back costs far more on a busy machine.
INLINE_FILES = 8
BodyT = TypeVar("BodyT", bound=BaseModel)
ResultT = TypeVar("ResultT")
# JSON bodies past this size are parsed at most LARGE_JSON_PARSES at a time per process.
LARGE_JSON_BYTES = 1 << 20
LARGE_JSON_PARSES = 2
# anyio creates a limiter's events when a caller first waits: one serves every loop.
_LARGE_JSON_LIMITER = anyio.CapacityLimiter(LARGE_JSON_PARSES)


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


@dataclass(frozen=True)
class Uploads:
    """The files of a multipart /predict body, and their pixels together (from headers)."""

    files: list[Upload]
    pixels: int


@dataclass(frozen=True)
class Instances:
    """The JSON instances of a body, with the bytes of its base64 images decoded once."""

    instances: list[Any]
    files: dict[int, bytes]
    pixel_range: PixelRange


PredictInputs = Instances | Uploads


async def read_predict_inputs(request: Request, settings: Settings) -> PredictInputs:
    """Parse a /predict body by its content type: multipart uploads or JSON instances.

    Each file is bounded while it streams, and every image's pixel count is read from
    its header before anything is decoded. Parsing and header reads run in threads.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == MULTIPART_TYPE:
        uploads = await _read_uploads(request, settings)
        images = [(f"file {upload.filename!r}", upload.data) for upload in uploads]
        small = sum(len(upload.data) for upload in uploads) <= SIMPLE_MULTIPART_MAX_BYTES
        if small and len(uploads) <= INLINE_FILES:
            pixels = _check_pixels(images, settings)
        else:
            pixels = await run_in_threadpool(_check_pixels, images, settings)
        return Uploads(uploads, pixels)
    if content_type == JSON_TYPE:
        # Parsed, base64-decoded and checked in one worker-thread call: each hop to a
        # thread and back costs the event loop a wake-up and the interpreter lock twice.
        return await _parse_off_loop(_parse_predict_json, await request.body(), settings)
    raise UnsupportedMediaTypeError(
        f"content type {quoted(content_type, 100) or 'none'!r} is not accepted; send "
        f"{MULTIPART_TYPE} with image files in the field 'files', or {JSON_TYPE} with "
        '{"instances": [...]}',
        accepted_content_types=[MULTIPART_TYPE, JSON_TYPE],
    )


async def read_json_body(request: Request, settings: Settings, schema: type[BodyT]) -> BodyT:
    """Read a JSON body (bounded by the body limit) and validate it in a worker thread."""
    body = await request.body()
    return await _parse_off_loop(_validate_json, schema, body)


async def _parse_off_loop(parse: Callable[..., ResultT], *arguments: Any) -> ResultT:
    """``parse(*arguments)`` in a worker thread; large bodies a few at a time.

    A JSON body of numbers takes about ten times its size in Python objects while it
    is parsed: many large ones at once could take gigabytes. The wait for a turn
    holds no thread, and bodies the size of real requests (64 images as PNG are
    about 200 KB) never wait.
    """
    size = max((len(argument) for argument in arguments if isinstance(argument, bytes)), default=0)
    if size <= LARGE_JSON_BYTES:
        return await run_in_threadpool(parse, *arguments)
    return await anyio.to_thread.run_sync(parse, *arguments, limiter=_LARGE_JSON_LIMITER)


def _validate_json(schema: type[BodyT], body: bytes) -> BodyT:
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_context=False)
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in errors]
        ) from None


def _parse_predict_json(body: bytes, settings: Settings) -> Instances:
    parsed = _validate_json(PredictRequest, body)
    return _checked_instances(parsed.instances, parsed.pixel_range, settings)


def check_instance_count(count: int, settings: Settings) -> None:
    """PayloadTooLargeError (413) past the per-request limit on inputs."""
    if count > settings.max_instances:
        raise _too_many(str(count), settings)


async def read_instances(
    instances: list[Any], pixel_range: PixelRange, settings: Settings
) -> Instances:
    """JSON instances within the limits on count, bytes and pixels (headers only)."""
    return await run_in_threadpool(_checked_instances, instances, pixel_range, settings)


def _checked_instances(
    instances: list[Any], pixel_range: PixelRange, settings: Settings
) -> Instances:
    check_instance_count(len(instances), settings)
    files = instance_files(instances, settings.max_upload_bytes)
    _check_pixels([(f"instances[{index}]", data) for index, data in files.items()], settings)
    return Instances(instances, files, pixel_range)


def _check_pixels(images: list[tuple[str, bytes]], settings: Settings) -> int:
    return check_pixel_budget(images, settings.max_image_pixels, settings.max_request_pixels)


def _too_many(received: str, settings: Settings) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{received} inputs in one request; at most {settings.max_instances} are accepted, "
        "split them over several requests",
        max_instances=settings.max_instances,
    )


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

    def close_unfinished_files(self, form: Any) -> bool:
        """Close the files of parts the body ended inside of; True if there were any.

        Starlette leaves such a part's spooled file out of the form, and open.
        """
        kept = {id(value.file) for _, value in form.multi_items() if isinstance(value, UploadFile)}
        unfinished = [file for file in self._files_to_close_on_error if id(file) not in kept]
        for file in unfinished:
            file.close()
        return bool(unfinished)


async def _read_uploads(request: Request, settings: Settings) -> list[Upload]:
    if (simple := await _read_single_small_upload(request, settings)) is not None:
        return [simple]
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
    if parser.close_unfinished_files(form):
        await form.close()
        raise InvalidInputError(
            "malformed multipart body: it ends inside a part, before the closing boundary; "
            "send the whole form"
        )
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


async def _read_single_small_upload(request: Request, settings: Settings) -> Upload | None:
    """The one file of a small single-file form (service/multipart.py), else None.

    Only a body whose declared length is small is read whole, so the per-file limit is
    checked after reading at most that much; longer or chunked bodies stream through
    the full parser, which refuses a file as soon as it grows past the limit. When the
    body is not this simple, the full parser reads it again from the request.
    """
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > SIMPLE_MULTIPART_MAX_BYTES:
        return None
    boundary = multipart_boundary(request.headers.get("content-type", "").encode("latin-1"))
    if boundary is None:
        return None
    part = parse_single_file(await request.body(), boundary)
    if part is None or part.field not in UPLOAD_FIELDS:
        return None
    description = f"file {quoted(part.filename, 100)!r}"
    check_upload_size(len(part.data), settings.max_upload_bytes, description)
    return Upload(part.filename, part.data)


async def _read_upload(value: Any, settings: Settings) -> Upload:
    if not isinstance(value, UploadFile):
        raise InvalidInputError("the fields 'files' and 'file' must hold files, not text")
    description = f"file {quoted(value.filename, 100)!r}"
    check_upload_size(value.size or 0, settings.max_upload_bytes, description)
    data = await value.read(settings.max_upload_bytes + 1)
    check_upload_size(len(data), settings.max_upload_bytes, description)
    return Upload(value.filename, data)
