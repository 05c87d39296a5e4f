"""Plain PNGs of the model's size decoded by libspng, without Pillow.

Pillow decodes a 32×32 PNG in ~85 µs, most of it Python that holds the interpreter
lock; a request of 64 such images then spends longer decoding than in the model.
libspng decodes one in ~45 µs of C. PNG is lossless, so the pixels are the same bytes
Pillow gives, as long as nothing else applies: only 8-bit grayscale or RGB images, not
interlaced, exactly the model's size, without transparency (``tRNS``, which Pillow
composites on white) or EXIF (``eXIf``, which may rotate) take this path. Everything
else, and any image libspng refuses, goes through ``decode_image``, which also words
the errors. So does everything when pyspng's build does not export libspng's C API:
``pyspng.load`` decodes a zlib stream with a wrong Adler-32 checksum, or with a
corrupted deflate byte, where Pillow refuses it, so it is no substitute.

A single such PNG (the commonest upload) is decoded on the event loop with the
interpreter lock held: Pillow releases the lock around its decoder, and on a loaded
server getting it back means waiting for the batcher thread's Python work (profiled at
concurrency 32, that wait was 12% of the event loop's time). A batch is decoded on a
decoding thread with the lock released around each image (``service/spng.py``), so
the event loop goes on meanwhile. Before, batches went through TensorFlow's
``decode_png`` mapped over the batch: on an AMX Xeon 7.7 ms of CPU for 64 images
against libspng's 2.9 ms, more than the model's own 6.2 ms.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from service import spng

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2}  # channels → PNG colour type: grayscale, truecolour
_CHUNKS_THAT_CHANGE_PIXELS = (b"tRNS", b"eXIf")


def is_plain_png(data: bytes, input_shape: tuple[int, int, int]) -> bool:
    """Whether ``data`` is a PNG this module decodes exactly as Pillow would."""
    height, width, channels = input_shape
    if not data.startswith(_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return False
    png_width, png_height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if (png_height, png_width, depth, color, interlace) != (
        height,
        width,
        8,
        _COLOR_TYPES.get(channels),
        0,
    ):
        return False
    offset = 8
    while offset + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind in _CHUNKS_THAT_CHANGE_PIXELS:
            return False
        if kind == b"IEND":
            return True
        offset += 12 + length
    return False


def decode_plain_png(data: bytes, input_shape: tuple[int, int, int]) -> NDArray[np.float32] | None:
    """One image as float32 (H, W, C) in [0, 1], or None if it cannot take this path.

    Keeps the interpreter lock: for the event loop.
    """
    pixels = _decode([data], input_shape, lock=True)
    return None if pixels is None else _scaled(pixels[0])


def decode_plain_pngs(
    images: Sequence[bytes], input_shape: tuple[int, int, int]
) -> NDArray[np.float32] | None:
    """The images as a float32 batch in [0, 1], or None if they cannot all take this path.

    Releases the interpreter lock while each image decodes: for the decoding threads.
    """
    pixels = _decode(images, input_shape, lock=False)
    return None if pixels is None else _scaled(pixels)


def _decode(
    images: Sequence[bytes], input_shape: tuple[int, int, int], *, lock: bool
) -> NDArray[np.uint8] | None:
    library = spng.library()
    if library is None or not images or not all(is_plain_png(d, input_shape) for d in images):
        return None
    pixels = np.empty((len(images), *input_shape), dtype=np.uint8)
    image_bytes = pixels[0].nbytes
    # Read once: each ``.ctypes`` access builds a helper object, with the lock held.
    first_address = pixels.ctypes.data
    for index, data in enumerate(images):
        address = first_address + index * image_bytes
        if not library.decode_into(data, address, image_bytes, input_shape[2], lock=lock):
            return None  # e.g. a corrupt stream: decode_image words the error
    return pixels


def _scaled(pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
    scaled: NDArray[np.float32] = pixels.astype(np.float32) / np.float32(255.0)
    return scaled
