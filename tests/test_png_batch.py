"""Plain PNGs decoded by the compiled kernel (with or without the GIL) give Pillow's pixels.

Anything it refuses goes through Pillow, which gives the same pixels or words the error.
"""

from __future__ import annotations

import base64
import io
import struct
import textwrap
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service import png_kernel
from service.errors import UnsupportedMediaTypeError
from service.images import decode_base64, decode_image, instance_files, instances_to_batch
from service.png_batch import decode_plain_png, decode_plain_pngs
from tests.conftest import ClientFactory
from trainer.errors import InvalidInputError

SHAPE = (12, 12, 3)


def png(seed: int, mode: str = "RGB", size: int = 12, **options: Any) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}.get(mode, 3)
    pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8).squeeze()
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def paeth(left: int, up: int, up_left: int) -> int:
    estimate = left + up - up_left
    distances = [abs(estimate - left), abs(estimate - up), abs(estimate - up_left)]
    return [left, up, up_left][distances.index(min(distances))]


def encode(
    pixels: np.ndarray, methods: list[int], idat_parts: int = 1, extra: bytes = b""
) -> bytes:
    """A PNG written by hand: row ``y`` filtered with ``methods[y]``, the stream split in parts."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels).astype(int)
    filtered = bytearray()
    for y, method in enumerate(methods):
        above = rows[y - 1] if y > 0 else np.zeros_like(rows[0])
        filtered.append(method)
        for x, value in enumerate(rows[y]):
            left = rows[y][x - channels] if x >= channels else 0
            up, up_left = above[x], (above[x - channels] if x >= channels else 0)
            predictors = [0, left, up, (left + up) >> 1, paeth(left, up, up_left)]
            predictor = predictors[method] if method < len(predictors) else 0
            filtered.append((value - predictor) % 256)
    stream = zlib.compress(bytes(filtered))
    size = -(-len(stream) // idat_parts)
    parts = [stream[start : start + size] for start in range(0, len(stream), size)]
    header = struct.pack(">IIBBBBB", width, height, 8, {1: 0, 3: 2}[channels], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
        + b"".join(chunk(b"IDAT", part) for part in parts)
        + chunk(b"IEND", b"")
    )


def pillow(images: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
    mode = {1: "L", 3: "RGB"}[shape[2]]
    pixels = [np.asarray(Image.open(io.BytesIO(data)).convert(mode)) for data in images]
    return np.stack(pixels).reshape(len(images), *shape).astype(np.float32) / np.float32(255.0)


@pytest.mark.parametrize(("mode", "shape"), [("RGB", SHAPE), ("L", (12, 12, 1))])
def test_the_pixels_are_pillows(mode: str, shape: tuple[int, int, int]) -> None:
    images = [png(seed, mode) for seed in range(11)]
    batch = decode_plain_pngs(images, shape)
    assert batch is not None and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, pillow(images, shape))
    b64 = [{"b64": base64.b64encode(data).decode()} for data in images]
    files = instance_files(b64, 10**6)
    np.testing.assert_array_equal(instances_to_batch(b64, files, shape, "0-255"), batch)
    # One at a time (with the GIL, as an upload is decoded) gives the same pixels again.
    for data, expected in zip(images, batch, strict=True):
        single = decode_plain_png(data, shape)
        assert single is not None and single.dtype == np.float32 and single.shape == shape
        np.testing.assert_array_equal(single, expected)
        np.testing.assert_array_equal(decode_image(data, shape), expected)


def test_scaling_to_the_unit_interval_is_numpys_division_bit_for_bit() -> None:
    # The event loop scales a decoded upload in compiled code that keeps the GIL; a
    # reciprocal multiply would differ in the last bit for some values.
    every_value = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    scaled = png_kernel.to_unit_interval(every_value)
    expected = every_value.astype(np.float32) / np.float32(255.0)
    assert scaled.dtype == np.float32 and scaled.shape == every_value.shape
    assert scaled.tobytes() == expected.tobytes()
    reciprocal = every_value.astype(np.float32) * (np.float32(1.0) / np.float32(255.0))
    assert reciprocal.tobytes() != expected.tobytes()  # so the check above can tell them apart


@pytest.mark.parametrize("channels", [1, 3])
def test_every_filter_method_and_split_streams_give_pillows_pixels(channels: int) -> None:
    rng = np.random.default_rng(channels)
    # Smooth pictures as well as noise: Average and Paeth predict differently on each.
    ramps = np.add.outer(np.arange(12), np.arange(12)) * 9
    smooth = np.repeat(ramps[:, :, None], channels, axis=2).astype(np.uint8)
    pictures = [rng.integers(0, 256, (12, 12, channels), dtype=np.uint8), smooth]
    shape = (12, 12, channels)
    images = [
        encode(picture, [(row + shift) % 5 for row in range(12)], idat_parts=parts)
        for picture in pictures
        for shift in range(5)  # each method on the first row too, which has no row above
        for parts in (1, 3)
    ]
    # An ancillary chunk Pillow ignores does not change the path or the pixels.
    images.append(encode(smooth, [4] * 12, extra=chunk(b"tEXt", b"Comment\0hello")))
    batch = decode_plain_pngs(images, shape)
    assert batch is not None
    np.testing.assert_array_equal(batch, pillow(images, shape))
    expected = np.stack([pictures[0]] * 10 + [pictures[1]] * 11).astype(np.float32) / 255
    np.testing.assert_array_equal(batch, expected)


def test_anything_pillow_would_change_is_refused_and_pillow_decodes_it() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    plain = png(0)
    assert decode_plain_png(plain, SHAPE) is not None
    jpeg = io.BytesIO()
    Image.new("RGB", (12, 12)).save(jpeg, format="JPEG")
    smooth = np.full((12, 12, 3), 7, dtype=np.uint8)
    refused = [
        png(0, transparency=(0, 0, 0)),  # tRNS: composited on white
        png(0, exif=exif),  # may be rotated
        png(0, size=13),  # resized
        png(0, "P"),  # palette
        png(0, "RGBA"),
        png(0, "L"),  # converted to RGB
        plain[:40],  # no IEND
        plain[:-12],  # no IEND either
        jpeg.getvalue(),
        encode(smooth, [0] * 12, extra=chunk(b"PLTE", bytes(range(3)))),  # a critical chunk
        encode(smooth, [5] * 12),  # no such filter method
    ]
    for data in refused:
        assert decode_plain_png(data, SHAPE) is None
        # One odd image sends the whole request through Pillow.
        assert decode_plain_pngs([plain, data], SHAPE) is None
    assert decode_plain_pngs([], SHAPE) is None
    mixed = [png(seed) for seed in range(4)] + [png(9, transparency=(0, 0, 0))]
    b64 = [{"b64": base64.b64encode(data).decode()} for data in mixed]
    np.testing.assert_array_equal(
        instances_to_batch(b64, instance_files(b64, 10**6), SHAPE, "0-255"),
        np.stack([decode_image(data, SHAPE) for data in mixed]),
    )


def with_wrong_adler32(data: bytes) -> bytes:
    """``data`` with its zlib stream's Adler-32 checksum flipped and the IDAT CRC still right."""
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    stream = bytearray(data[start + 8 : start + 8 + length])
    stream[-1] ^= 0xFF  # the last byte of the Adler-32 that ends the stream
    chunk = b"IDAT" + bytes(stream)
    checksum = struct.pack(">I", zlib.crc32(chunk))
    return data[: start + 4] + chunk + checksum + data[start + 12 + length :]


def test_a_wrong_checksum_is_refused_as_by_pillow() -> None:
    bad_adler = with_wrong_adler32(png(3))
    bad_crc = bytearray(png(4))
    bad_crc[bad_crc.index(b"IEND") - 1] ^= 0xFF  # the last byte of the IDAT chunk's CRC
    for bad in (bad_adler, bytes(bad_crc)):
        assert decode_plain_pngs([png(1), bad], SHAPE) is None
        assert decode_plain_png(bad, SHAPE) is None
    with pytest.raises(UnsupportedMediaTypeError, match="is not a readable"):
        decode_image(bad_adler, SHAPE, description="file 'x.png'")


def test_a_corrupt_stream_gets_pillows_error() -> None:
    good = [png(seed) for seed in range(8)]
    data = bytearray(png(99))
    data[45:60] = b"\0" * 15  # inside IDAT: the header and the chunk list still look fine
    assert decode_plain_pngs([*good, bytes(data)], SHAPE) is None
    assert decode_plain_png(bytes(data), SHAPE) is None
    with pytest.raises(UnsupportedMediaTypeError, match=r"file 'x.png' is not a readable"):
        decode_image(bytes(data), SHAPE, description="file 'x.png'")
    b64 = [{"b64": base64.b64encode(d).decode()} for d in [*good, bytes(data)]]
    with pytest.raises(UnsupportedMediaTypeError, match=r"instances\[8\] is not a readable"):
        instances_to_batch(b64, instance_files(b64, 10**6), SHAPE, "0-255")


@pytest.mark.parametrize(
    "spelling",
    [
        lambda data: base64.b64encode(data).decode(),  # the strict one-call path
        lambda data: base64.urlsafe_b64encode(data).decode().rstrip("="),
        lambda data: "\n".join(textwrap.wrap(base64.b64encode(data).decode(), 76)),  # MIME
    ],
)
def test_every_base64_spelling_gives_the_same_bytes(spelling: Callable[[bytes], str]) -> None:
    data = bytes(range(256)) * 3 + b"\xfb\xff"  # both alphabets' last two characters
    assert decode_base64(spelling(data), 0) == data
    with pytest.raises(InvalidInputError, match=r"instances\[3\].b64 is not valid base64"):
        decode_base64(spelling(data)[:-6] + "*!", 3)


def test_the_service_compiles_the_decoder_before_it_takes_requests(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Compiling beside requests let numba's catch_warnings() swap the process-wide filter
    # list under a request's (it broke route building in the fuzz tests' collection).
    compiled = threading.Event()

    def slow_warm_up() -> None:
        time.sleep(0.5)
        compiled.set()

    monkeypatch.setattr(png_kernel, "warm_up", slow_warm_up)
    client = make_client()
    assert compiled.is_set(), "the app answered before the decoder was compiled"
    assert client.get("/health/live").status_code == 200
