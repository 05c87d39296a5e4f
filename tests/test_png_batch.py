"""Plain PNGs decoded by libspng (with or without the GIL) give Pillow's pixels and errors."""

from __future__ import annotations

import base64
import io
import struct
import textwrap
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service import spng
from service.errors import UnsupportedMediaTypeError
from service.images import decode_base64, decode_image, instance_files, instances_to_batch
from service.png_batch import decode_plain_png, decode_plain_pngs, is_plain_png
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


def pillow(images: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
    mode = {1: "L", 3: "RGB"}[shape[2]]
    pixels = [np.asarray(Image.open(io.BytesIO(data)).convert(mode)) for data in images]
    return np.stack(pixels).reshape(len(images), *shape).astype(np.float32) / np.float32(255.0)


@pytest.mark.parametrize(("mode", "shape"), [("RGB", SHAPE), ("L", (12, 12, 1))])
def test_the_pixels_are_pillows(mode: str, shape: tuple[int, int, int]) -> None:
    # The installed pyspng exports libspng's C API: batches decode without the GIL.
    assert spng.library() is not None
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


def test_anything_pillow_would_change_is_not_plain() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    assert is_plain_png(png(0), SHAPE)
    assert not is_plain_png(png(0, transparency=(0, 0, 0)), SHAPE)  # tRNS: composited
    assert not is_plain_png(png(0, exif=exif), SHAPE)  # may be rotated
    assert not is_plain_png(png(0, size=13), SHAPE)  # resized
    assert not is_plain_png(png(0, "P"), SHAPE)  # palette
    assert not is_plain_png(png(0, "RGBA"), SHAPE)
    assert not is_plain_png(png(0, "L"), SHAPE)  # converted to RGB
    assert not is_plain_png(png(0)[:40], SHAPE)  # no IEND
    jpeg = io.BytesIO()
    Image.new("RGB", (12, 12)).save(jpeg, format="JPEG")
    assert not is_plain_png(jpeg.getvalue(), SHAPE)
    # One odd image sends the whole request through Pillow, which gives the same pixels.
    images = [png(seed) for seed in range(8)] + [png(9, transparency=(0, 0, 0))]
    assert decode_plain_pngs(images, SHAPE) is None
    assert decode_plain_png(images[-1], SHAPE) is None
    assert decode_plain_pngs([], SHAPE) is None


def with_wrong_adler32(data: bytes) -> bytes:
    """``data`` with its zlib stream's Adler-32 checksum flipped and the IDAT CRC still right."""
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    stream = bytearray(data[start + 8 : start + 8 + length])
    stream[-1] ^= 0xFF  # the last byte of the Adler-32 that ends the stream
    chunk = b"IDAT" + bytes(stream)
    checksum = struct.pack(">I", zlib.crc32(chunk))
    return data[: start + 4] + chunk + checksum + data[start + 12 + length :]


def test_without_libspngs_symbols_batches_go_through_pillow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = [png(seed) for seed in range(5)]
    expected = decode_plain_pngs(images, SHAPE)
    monkeypatch.setattr(spng, "library", lambda: None)  # a pyspng built without them
    assert decode_plain_pngs(images, SHAPE) is None
    assert decode_plain_png(images[0], SHAPE) is None
    b64 = [{"b64": base64.b64encode(data).decode()} for data in images]
    np.testing.assert_array_equal(
        instances_to_batch(b64, instance_files(b64, 10**6), SHAPE, "0-255"), expected
    )
    # pyspng.load would decode this one; Pillow refuses it, as the libspng path does.
    bad = [*b64, {"b64": base64.b64encode(with_wrong_adler32(images[0])).decode()}]
    with pytest.raises(UnsupportedMediaTypeError, match=r"instances\[5\] is not a readable"):
        instances_to_batch(bad, instance_files(bad, 10**6), SHAPE, "0-255")


def test_a_wrong_adler32_is_refused_by_libspng_as_by_pillow() -> None:
    bad = with_wrong_adler32(png(3))
    assert is_plain_png(bad, SHAPE)
    assert decode_plain_pngs([png(1), bad], SHAPE) is None
    assert decode_plain_png(bad, SHAPE) is None
    with pytest.raises(UnsupportedMediaTypeError, match="is not a readable"):
        decode_image(bad, SHAPE, description="file 'x.png'")


def test_a_corrupt_stream_gets_pillows_error() -> None:
    good = [png(seed) for seed in range(8)]
    data = bytearray(png(99))
    data[45:60] = b"\0" * 15  # inside IDAT: the header and the chunk list still look fine
    assert is_plain_png(bytes(data), SHAPE)
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
