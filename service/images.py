"""Turn request inputs (image bytes, base64 strings, pixel arrays) into model batches.

Every function returns float32 in [0, 1] shaped like the model's input (H, W, C), the
same scaling ``trainer.data.normalize`` applies to training images, so the service
feeds models exactly what they were trained on.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pybase64
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from service.png_batch import decode_plain_png, decode_plain_pngs
from trainer.errors import InvalidInputError

ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
ACCEPTED_FORMATS_TEXT = "PNG, JPEG, BMP or GIF (first frame)"
PixelRange = Literal["0-255", "0-1"]
InputShape = tuple[int, int, int]
Batch = NDArray[np.float32]

_MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}
_PIXEL_MAXIMUM: dict[str, float] = {"0-255": 255.0, "0-1": 1.0}
_WHITE = (255, 255, 255, 255)
_ORIENTATION = 0x0112  # the EXIF tag
_PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def _target_mode(input_shape: InputShape) -> str:
    channels = input_shape[2]
    if channels not in _MODE_FOR_CHANNELS:
        raise InvalidInputError(
            f"this model takes {channels}-channel input, which images cannot be converted to; "
            "send pixel arrays instead",
            input_shape=list(input_shape),
        )
    return _MODE_FOR_CHANNELS[channels]


def _to_eight_bits(image: Image.Image) -> Image.Image:
    # Pillow converts 16-bit grayscale (PNG's I;16) to L by clipping at 255, which turns
    # most of the picture white; scale the full 16-bit range down instead.
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
        return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))
    return image


def _flatten_transparency(image: Image.Image) -> Image.Image:
    # Composite on white rather than drop the alpha channel: the model then sees the image
    # as every viewer shows it, while a plain convert() exposes whatever colours happen to
    # be stored under fully transparent pixels (often black, sometimes editor leftovers).
    has_alpha = image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info
    if not has_alpha:
        return image
    background = Image.new("RGBA", image.size, _WHITE)
    return Image.alpha_composite(background, image.convert("RGBA"))


def decode_image(
    data: bytes, input_shape: InputShape, *, description: str = "the image"
) -> NDArray[np.float32]:
    """Decode PNG/JPEG/BMP/GIF bytes into a float32 (H, W, C) array in [0, 1]."""
    height, width, _ = input_shape
    target_mode = _target_mode(input_shape)
    plain = decode_plain_png(data, input_shape)
    if plain is not None:
        return plain
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        _check_pixel_count(image, description)
        # JPEG can decode straight to a smaller scale (DCT scaling): much faster for photos.
        # A square request keeps both sides large enough even if EXIF then rotates the image.
        image.draft(target_mode, (max(width, height),) * 2)
        # Phones store rotation as EXIF metadata; apply it so the model sees the upright image.
        # Looked up first: exif_transpose copies the image even when there is nothing to do.
        if image.getexif().get(_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        image = _flatten_transparency(_to_eight_bits(image))
        if image.mode != target_mode:  # convert() to the same mode would only copy
            image = image.convert(target_mode)
        # Stretch to the model's size, as training images were; reducing_gap first shrinks
        # by whole factors (BOX), then LANCZOS antialiases the rest: fast and sharp.
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own guard; its warning arrives as an exception where warnings are errors.
        raise _too_many_pixels(description, str(error)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise _unreadable(description) from None
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return pixels.reshape(input_shape)


def _unreadable(description: str) -> UnsupportedMediaTypeError:
    # Pillow's own text names the in-memory file object and its heap address: leave it out.
    return UnsupportedMediaTypeError(
        f"{description} is not a readable image (or is truncated or corrupt); "
        f"send {ACCEPTED_FORMATS_TEXT}",
        accepted_formats=list(ACCEPTED_FORMATS),
    )


# Pillow's text: "Image size (3600000000 pixels) exceeds limit of 178956970 pixels, ..."
_BOMB_SIZE = re.compile(r"Image size \((\d+) pixels\)")


def image_pixels(data: bytes, description: str) -> int:
    """Width × height from the image's header; nothing is decoded."""
    # A PNG keeps its size at a fixed place, in the IHDR chunk that must come first: read
    # there, the commonest upload skips Pillow's format detection, a few times the cost.
    if data.startswith(_PNG_HEADER, 0) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        if 0 < width < 2**31 and 0 < height < 2**31:  # as the PNG specification bounds them
            return int(width) * int(height)
    try:
        with warnings.catch_warnings():
            # Pillow warns (an error where warnings are errors) past its own limit;
            # the budget below is the check that counts, so read the size regardless.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                return int(image.width) * int(image.height)
    except Image.DecompressionBombError as error:
        # Past twice Pillow's own limit it refuses to open the file, but says its size:
        # the caller then refuses it against the service's limit, as any other.
        claimed = _BOMB_SIZE.search(str(error))
        if claimed is None:
            raise _too_many_pixels(description, str(error)) from None
        return int(claimed.group(1))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise _unreadable(description) from None


def check_pixel_budget(
    images: Sequence[tuple[str, bytes]], max_image_pixels: int, max_request_pixels: int
) -> int:
    """The pixels of all images together; PayloadTooLargeError (413) when there are too many.

    Read from the headers before anything is decoded: a 70 KB PNG can claim 16
    megapixels, and models here take 28×28 or 32×32 inputs.
    """
    total = 0
    for description, data in images:
        pixels = image_pixels(data, description)
        if pixels > max_image_pixels:
            raise PayloadTooLargeError(
                f"{description} has {pixels} pixels; each image may have at most "
                f"{max_image_pixels}. Downscale it (the models take small images anyway)",
                pixels=pixels,
                max_pixels=max_image_pixels,
            )
        total += pixels
        if total > max_request_pixels:
            raise PayloadTooLargeError(
                f"the images of this request have more than {max_request_pixels} pixels "
                "together; send fewer or smaller images per request",
                max_request_pixels=max_request_pixels,
            )
    return total


def _check_pixel_count(image: Image.Image, description: str) -> None:
    # A few kilobytes of PNG can claim gigapixels; refuse before decoding, not after.
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise _too_many_pixels(description, f"{image.width}x{image.height} pixels")


def _too_many_pixels(description: str, received: str) -> PayloadTooLargeError:
    limit = Image.MAX_IMAGE_PIXELS
    return PayloadTooLargeError(
        f"{description} is too large to decode ({received}); at most {limit} pixels are "
        "accepted, as a guard against decompression bombs. Downscale the image",
        max_pixels=limit,
    )


def decode_base64(text: Any, index: int) -> bytes:
    """Bytes of a base64 string (standard or URL-safe alphabet, padding optional)."""
    if not isinstance(text, str):
        raise InvalidInputError(
            f"instances[{index}].b64 must be a base64 string, got {type(text).__name__}",
            index=index,
        )
    try:
        # Padded standard base64, what every encoder writes by default: one SIMD call
        # (pybase64 validates as strictly as base64.b64decode). The forgiving path below
        # costs several string copies, a millisecond for a request of 64 small images.
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            f"instances[{index}].b64 is not valid base64 (received {len(text)} characters "
            f"starting {text[:16]!r}); encode the image file's bytes with base64",
            index=index,
        ) from None


def pixels_to_array(
    instance: Any, index: int, input_shape: InputShape, pixel_range: PixelRange
) -> NDArray[np.float32]:
    """One JSON pixel array → float32 (H, W, C) in [0, 1]; strict about shape and range."""
    expected = _shape_text(input_shape)
    try:
        pixels = np.asarray(instance, dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidInputError(
            f"instances[{index}] is not a rectangular array of numbers; expected shape {expected}",
            index=index,
            expected_shape=list(input_shape),
        ) from None
    if pixels.shape == input_shape[:2] and input_shape[2] == 1:
        pixels = pixels[..., np.newaxis]
    if pixels.shape != input_shape:
        raise InvalidInputError(
            f"instances[{index}] has shape {list(pixels.shape)}; this model expects {expected}",
            index=index,
            received_shape=list(pixels.shape),
            expected_shape=list(input_shape),
        )
    maximum = _PIXEL_MAXIMUM[pixel_range]
    if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > maximum:
        raise InvalidInputError(
            f"instances[{index}] has values from {pixels.min()} to {pixels.max()}, outside "
            f"pixel_range {pixel_range}; scale the values or set pixel_range",
            index=index,
            pixel_range=pixel_range,
        )
    return (pixels / maximum).astype(np.float32)


def pixels_to_batch(
    instances: Sequence[Any], input_shape: InputShape, pixel_range: PixelRange = "0-255"
) -> Batch:
    """JSON pixel arrays → a float32 (N, H, W, C) batch in [0, 1]."""
    arrays = [
        pixels_to_array(instance, index, input_shape, pixel_range)
        for index, instance in enumerate(instances)
    ]
    return np.stack(arrays) if arrays else np.zeros((0, *input_shape), dtype=np.float32)


def instance_files(instances: Sequence[Any], max_image_bytes: int) -> dict[int, bytes]:
    """The bytes of the ``{"b64": ...}`` instances by index, each within the size limit."""
    files: dict[int, bytes] = {}
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and "b64" in instance:
            files[index] = decode_base64(instance["b64"], index)
            check_upload_size(len(files[index]), max_image_bytes, f"instances[{index}]")
    return files


def instances_to_batch(
    instances: Sequence[Any],
    files: dict[int, bytes],
    input_shape: InputShape,
    pixel_range: PixelRange,
    rows: slice | None = None,
) -> Batch:
    """JSON instances → one batch: ``files`` (from ``instance_files``) or pixel arrays.

    ``rows``: only those instances (errors still name their index in the request).
    """
    first, stop = (0, len(instances)) if rows is None else (rows.start, rows.stop)
    if all(index in files for index in range(first, stop)):
        # Plain PNGs of the model's size: one compiled call without the GIL, the same pixels.
        batch = decode_plain_pngs([files[index] for index in range(first, stop)], input_shape)
        if batch is not None:
            return batch
    arrays = []
    for index in range(first, stop):
        if index in files:
            description = f"instances[{index}]"
            arrays.append(decode_image(files[index], input_shape, description=description))
        else:
            arrays.append(pixels_to_array(instances[index], index, input_shape, pixel_range))
    return np.stack(arrays) if arrays else np.zeros((0, *input_shape), dtype=np.float32)


def check_upload_size(size: int, max_bytes: int, description: str) -> None:
    """PayloadTooLargeError (413) if one image is larger than the service accepts."""
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"{description} is {size} bytes; each image may be at most {max_bytes} bytes. "
            "Downscale or recompress it",
            size=size,
            max_bytes=max_bytes,
        )


def _shape_text(input_shape: InputShape) -> str:
    height, width, channels = input_shape
    alternative = f" or [{height}, {width}]" if channels == 1 else ""
    return f"[{height}, {width}, {channels}]{alternative}"
