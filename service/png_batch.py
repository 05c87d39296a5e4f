"""Plain PNGs of the model's size decoded without Pillow: one by libspng, many by TensorFlow.

Pillow decodes a 32×32 PNG in ~85 µs, most of it Python that holds the interpreter
lock; a request of 64 such images then spends longer decoding than in the model.
TensorFlow's ``decode_png``, mapped over the whole batch in one traced call, does the
same work in C++ without the lock, about 2.5× faster. PNG is lossless, so the pixels
are the same bytes Pillow gives, as long as nothing else applies: only 8-bit
grayscale or RGB images, not interlaced, exactly the model's size, without
transparency (``tRNS``, which Pillow composites on white) or EXIF (``eXIf``, which may
rotate) take this path. Everything else, and any batch the op fails on, goes through
``decode_image`` one by one, which also words the errors.

A single such PNG (the commonest upload) is decoded by libspng (``pyspng``) on the
event loop: about half Pillow's time, and it keeps the interpreter lock for those
microseconds. Pillow releases the lock around its decoder, and on a loaded server
getting it back means waiting for the batcher thread's Python work: profiled at
concurrency 32, that wait was 12% of the event loop's time. For batches libspng is
no gain: holding the lock for 64 images (~3 ms) stalls the event loop instead.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyspng
from numpy.typing import NDArray

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2}  # channels → PNG colour type: grayscale, truecolour
_CHUNKS_THAT_CHANGE_PIXELS = (b"tRNS", b"eXIf")
# Fewer images than this are not worth the op call.
MIN_BATCH = 8


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


@functools.cache
def _decoder(channels: int) -> Callable[[Any], Any]:
    import tensorflow as tf  # deferred: only processes that serve models decode

    def decode(batch: Any) -> Any:
        return tf.map_fn(
            lambda data: tf.io.decode_png(data, channels=channels),
            batch,
            fn_output_signature=tf.TensorSpec((None, None, channels), tf.uint8),
        )

    return tf.function(  # type: ignore[no-any-return]
        decode, input_signature=[tf.TensorSpec((None,), tf.string)], autograph=False
    )


def decode_plain_png(data: bytes, input_shape: tuple[int, int, int]) -> NDArray[np.float32] | None:
    """One image as float32 (H, W, C) in [0, 1], or None if it cannot take this path."""
    if not is_plain_png(data, input_shape):
        return None
    try:
        pixels = pyspng.load(data)
    except Exception:  # noqa: BLE001 - e.g. a corrupt stream: decode_image words the error
        return None
    if pixels.dtype != np.uint8 or pixels.size != np.prod(input_shape):
        return None
    decoded: NDArray[np.float32] = pixels.astype(np.float32) / np.float32(255.0)
    return decoded.reshape(input_shape)


def decode_plain_pngs(
    images: Sequence[bytes], input_shape: tuple[int, int, int]
) -> NDArray[np.float32] | None:
    """The images as a float32 batch in [0, 1], or None if they cannot all take this path."""
    if len(images) < MIN_BATCH or not all(is_plain_png(data, input_shape) for data in images):
        return None
    try:
        pixels = np.asarray(_decoder(input_shape[2])(np.array(images, dtype=object)))
    except Exception:  # noqa: BLE001 - e.g. a corrupt stream: decode_image words the error
        return None
    if pixels.shape != (len(images), *input_shape):
        return None
    batch: NDArray[np.float32] = pixels.astype(np.float32) / np.float32(255.0)
    return batch
