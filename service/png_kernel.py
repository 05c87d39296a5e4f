"""The PNG decoder of ``service/png_batch.py``: a whole batch in one compiled call.

Decoding through a C library image by image leaves Python work per image (a header
check, four ctypes calls) done with the interpreter lock held, which the event loop
and the model's thread wait for: profiled on a 64-image JSON request, the lock was held
58% of the time. Here numba compiles the chunk walk, the CRC and the unfiltering, and
libdeflate (exported by the ``deflate`` package's extension module) inflates, so a
batch is one call that releases the lock from the first image to the last.

Only what decodes to the same pixels as Pillow is accepted: 8-bit grayscale or RGB,
not interlaced, exactly the model's size, no ``tRNS`` (Pillow composites it on white)
or ``eXIf`` (it may rotate), no other critical chunk (``PLTE`` included), every chunk's
CRC and the zlib stream's Adler-32 right, the stream exactly the image's size. Anything
else is refused, and the caller decodes it with Pillow, which also words the errors.

The libdeflate functions are bound by symbol name (``ExternalFunction``), not by
address, so numba can cache the compiled code on disk: a later start loads it in a
fraction of a second instead of compiling for about two.
"""

from __future__ import annotations

import threading

import llvmlite.binding
import numba
import numpy as np
from deflate import _deflate
from numba import types
from numpy.typing import NDArray

# The symbols resolve in every process that imports this module, before any compile.
llvmlite.binding.load_library_permanently(_deflate.__file__)

# Pointers are passed as pointer-sized integers: the same bits in the x86-64 and
# AArch64 calling conventions, and numba hands out array addresses as integers.
_alloc_decompressor = types.ExternalFunction("libdeflate_alloc_decompressor", types.uintp())
_free_decompressor = types.ExternalFunction("libdeflate_free_decompressor", types.void(types.uintp))
_zlib_decompress = types.ExternalFunction(
    "libdeflate_zlib_decompress",
    types.intc(types.uintp, types.uintp, types.uintp, types.uintp, types.uintp, types.uintp),
)
_crc32 = types.ExternalFunction(
    "libdeflate_crc32", types.uint32(types.uint32, types.uintp, types.uintp)
)

_SIGNATURE = np.frombuffer(b"\x89PNG\r\n\x1a\n", dtype=np.uint8)
_COLOR_TYPES = {1: 0, 3: 2}  # channels → PNG colour type: grayscale, truecolour
_compile_lock = threading.Lock()


@numba.njit(cache=True)
def _big_endian(data: NDArray[np.uint8], at: int) -> np.int64:
    return (
        (np.int64(data[at]) << 24)
        | (np.int64(data[at + 1]) << 16)
        | (np.int64(data[at + 2]) << 8)
        | np.int64(data[at + 3])
    )


@numba.njit(cache=True)
def _is_type(data: NDArray[np.uint8], at: int, a: int, b: int, c: int, d: int) -> bool:
    return data[at] == a and data[at + 1] == b and data[at + 2] == c and data[at + 3] == d


@numba.njit(cache=True)
def _inflate(
    data: NDArray[np.uint8],
    height: int,
    width: int,
    color_type: int,
    stream: NDArray[np.uint8],
    filtered: NDArray[np.uint8],
    decompressor: int,
) -> bool:
    """Walk the chunks, checking each, and inflate the IDAT stream into ``filtered``."""
    size = data.size
    if size < 8 + 25 + 12:
        return False
    for index in range(8):
        if data[index] != _SIGNATURE[index]:
            return False
    position, stream_size, seen_header = 8, 0, False
    while True:
        if position + 12 > size:
            return False  # no IEND
        length = _big_endian(data, position)
        kind = position + 4
        end = kind + 4 + length
        if length > 0x7FFFFFFF or end + 4 > size:
            return False
        checksum = _crc32(np.uint32(0), data[kind:].ctypes.data, length + 4)
        if np.int64(checksum) != _big_endian(data, end):
            return False
        if _is_type(data, kind, 73, 72, 68, 82):  # IHDR
            fields = kind + 4
            if seen_header or length != 13:
                return False
            if _big_endian(data, fields) != width or _big_endian(data, fields + 4) != height:
                return False
            # depth 8, the colour type, compression 0, filter method 0, not interlaced
            if data[fields + 8] != 8 or data[fields + 9] != color_type:
                return False
            if data[fields + 10] != 0 or data[fields + 11] != 0 or data[fields + 12] != 0:
                return False
            seen_header = True
        elif not seen_header:
            return False  # IHDR must come first
        elif _is_type(data, kind, 73, 68, 65, 84):  # IDAT
            stream[stream_size : stream_size + length] = data[kind + 4 : end]
            stream_size += length
        elif _is_type(data, kind, 73, 69, 78, 68):  # IEND
            break
        elif _is_type(data, kind, 116, 82, 78, 83) or _is_type(data, kind, 101, 88, 73, 102):
            return False  # tRNS or eXIf: Pillow's pixels would differ
        elif (data[kind] & 32) == 0:
            return False  # another critical chunk (PLTE, or one this decoder does not know)
        position = end + 4
    # No room for more output than the image: a stream that is longer or shorter fails.
    result = _zlib_decompress(
        decompressor,
        stream.ctypes.data,
        stream_size,
        filtered.ctypes.data,
        filtered.size,
        0,
    )
    return result == 0


@numba.njit(cache=True)
def _paeth(left: int, up: int, up_left: int) -> int:
    estimate = left + up - up_left
    distance_left, distance_up = abs(estimate - left), abs(estimate - up)
    distance_up_left = abs(estimate - up_left)
    if distance_left <= distance_up and distance_left <= distance_up_left:
        return left
    if distance_up <= distance_up_left:
        return up
    return up_left


@numba.njit(cache=True)
def _unfilter(
    filtered: NDArray[np.uint8], pixels: NDArray[np.uint8], row_bytes: int, step: int
) -> bool:
    """Undo each row's PNG filter (``step`` bytes per pixel) into ``pixels``.

    One loop per filter method rather than a test per byte: this is the decoder's
    hottest code after inflating.
    """
    rows = filtered.size // (row_bytes + 1)
    for row in range(rows):
        start = row * (row_bytes + 1) + 1
        method = filtered[start - 1]
        line = row * row_bytes
        above = line - row_bytes
        if method == 0 or (method == 2 and row == 0):
            for column in range(row_bytes):
                pixels[line + column] = filtered[start + column]
        elif method == 1 or (method == 4 and row == 0):  # Paeth with no row above is Sub
            for column in range(row_bytes):
                left = np.int64(pixels[line + column - step]) if column >= step else 0
                pixels[line + column] = (np.int64(filtered[start + column]) + left) & 255
        elif method == 2:
            for column in range(row_bytes):
                value = np.int64(filtered[start + column]) + np.int64(pixels[above + column])
                pixels[line + column] = value & 255
        elif method == 3:
            for column in range(row_bytes):
                left = np.int64(pixels[line + column - step]) if column >= step else 0
                up = np.int64(pixels[above + column]) if row > 0 else 0
                value = np.int64(filtered[start + column]) + ((left + up) >> 1)
                pixels[line + column] = value & 255
        elif method == 4:
            for column in range(step):  # no left neighbour: Paeth picks the one above
                value = np.int64(filtered[start + column]) + np.int64(pixels[above + column])
                pixels[line + column] = value & 255
            for column in range(step, row_bytes):
                left = np.int64(pixels[line + column - step])
                up = np.int64(pixels[above + column])
                up_left = np.int64(pixels[above + column - step])
                value = np.int64(filtered[start + column]) + _paeth(left, up, up_left)
                pixels[line + column] = value & 255
        else:
            return False
    return True


@numba.njit(cache=True)
def _decode_all(
    buffer: NDArray[np.uint8],
    offsets: NDArray[np.int64],
    pixels: NDArray[np.uint8],
    height: int,
    width: int,
    channels: int,
    color_type: int,
) -> int:
    """Decode each PNG of ``buffer`` into a row of ``pixels``; the count before a refusal."""
    row_bytes = width * channels
    filtered = np.empty(height * (row_bytes + 1), dtype=np.uint8)
    stream = np.empty(buffer.size, dtype=np.uint8)
    decompressor = _alloc_decompressor()
    if decompressor == 0:
        return 0
    count = offsets.size - 1
    for index in range(count):
        data = buffer[offsets[index] : offsets[index + 1]]
        if not _inflate(data, height, width, color_type, stream, filtered, decompressor):
            count = index
            break
        if not _unfilter(filtered, pixels[index], row_bytes, channels):
            count = index
            break
    _free_decompressor(decompressor)
    return count


# Two entry points to one body: the decoding threads let go of the interpreter lock;
# the event loop keeps it, because getting it back after a 20 µs decode can mean
# waiting for the model thread's Python work.
@numba.njit(nogil=True, cache=True)
def _decode_releasing_lock(
    buffer: NDArray[np.uint8],
    offsets: NDArray[np.int64],
    pixels: NDArray[np.uint8],
    height: int,
    width: int,
    channels: int,
    color_type: int,
) -> int:
    return _decode_all(buffer, offsets, pixels, height, width, channels, color_type)


@numba.njit(cache=True)
def _decode_holding_lock(
    buffer: NDArray[np.uint8],
    offsets: NDArray[np.int64],
    pixels: NDArray[np.uint8],
    height: int,
    width: int,
    channels: int,
    color_type: int,
) -> int:
    return _decode_all(buffer, offsets, pixels, height, width, channels, color_type)


@numba.njit(cache=True)
def _divide_by_255(pixels: NDArray[np.uint8], scaled: NDArray[np.float32]) -> None:
    for index in range(pixels.size):
        scaled[index] = np.float32(pixels[index]) / np.float32(255.0)


def to_unit_interval(pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
    """``pixels / 255`` in float32, as NumPy divides, keeping the interpreter lock.

    NumPy lets go of the lock for arrays past a few hundred elements, and the event loop
    then waits to get it back while the model's threads run their Python: profiled at
    concurrency 32 with single PNGs, that wait was a tenth of the event loop's time.
    """
    contiguous = np.ascontiguousarray(pixels)
    scaled = np.empty(contiguous.shape, dtype=np.float32)
    _divide_by_255(contiguous.reshape(-1), scaled.reshape(-1))
    return scaled


def decode_pngs(
    images: list[bytes], input_shape: tuple[int, int, int], *, lock: bool
) -> NDArray[np.uint8] | None:
    """The images as a uint8 (N, H, W, C) batch, or None if any is refused (or none given).

    ``lock=False`` releases the interpreter lock for the whole batch.
    """
    height, width, channels = input_shape
    if not images or channels not in _COLOR_TYPES:
        return None
    buffer = np.frombuffer(b"".join(images), dtype=np.uint8)
    offsets = np.zeros(len(images) + 1, dtype=np.int64)
    np.cumsum([len(data) for data in images], out=offsets[1:])
    pixels = np.empty((len(images), height * width * channels), dtype=np.uint8)
    decode = _decode_holding_lock if lock else _decode_releasing_lock
    decoded = decode(buffer, offsets, pixels, height, width, channels, _COLOR_TYPES[channels])
    if decoded != len(images):
        return None
    return pixels.reshape(len(images), height, width, channels)


def warm_up() -> None:
    """Compile (or load from numba's cache) the entry points, once per process.

    Called when the service starts, so the first request does not pay for it.
    """
    with _compile_lock:
        for lock in (True, False):
            decode_pngs([b""], (1, 1, 1), lock=lock)
        to_unit_interval(np.zeros(1, dtype=np.uint8))
