"""Plain PNGs of the model's size decoded without Pillow, to the same pixels.

Pillow decodes a 32×32 PNG in ~85 µs, most of it Python that holds the interpreter
lock; a request of 64 such images then spends longer decoding than in the model. PNG
is lossless, so any correct decoder gives the bytes Pillow gives, as long as nothing
else applies: only 8-bit grayscale or RGB images, not interlaced, exactly the model's
size, without transparency (``tRNS``, which Pillow composites on white) or EXIF
(``eXIf``, which may rotate) take this path, decoded by ``service/png_kernel.py``
(compiled with numba, inflated by libdeflate) in one call per batch. Everything else,
and any image that decoder refuses (a wrong CRC or Adler-32 among them), goes through
``decode_image``, which also words the errors.

A single such PNG (the commonest upload) is decoded on the event loop with the
interpreter lock held, and scaled to [0, 1] with it held too: on a loaded server
getting the lock back means waiting for the batcher thread's Python work (profiled at
concurrency 32, that wait was 12% of the event loop's time in decoding, then 10% in
NumPy's scaling). A batch is decoded on a decoding thread with the lock released for
the whole batch, so the event loop and the model's thread go on meanwhile. Before,
batches went through TensorFlow's ``decode_png`` mapped over the batch (on an AMX Xeon
7.7 ms of CPU for 64 images, more than the model's own 6.2 ms), then through libspng
image by image (2.9 ms, with Python between images holding the lock).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from service import png_kernel


def decode_plain_png(data: bytes, input_shape: tuple[int, int, int]) -> NDArray[np.float32] | None:
    """One image as float32 (H, W, C) in [0, 1], or None if it cannot take this path.

    Keeps the interpreter lock: for the event loop.
    """
    pixels = png_kernel.decode_pngs([data], input_shape, lock=True)
    return None if pixels is None else png_kernel.to_unit_interval(pixels[0])


def decode_plain_pngs(
    images: Sequence[bytes], input_shape: tuple[int, int, int]
) -> NDArray[np.float32] | None:
    """The images as a float32 batch in [0, 1], or None if they cannot all take this path.

    Releases the interpreter lock for the whole batch: for the decoding threads.
    """
    pixels = png_kernel.decode_pngs(list(images), input_shape, lock=False)
    if pixels is None:
        return None
    scaled: NDArray[np.float32] = pixels.astype(np.float32) / np.float32(255.0)
    return scaled
