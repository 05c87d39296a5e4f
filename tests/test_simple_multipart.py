"""The fast path for one small uploaded file, and the full parser behind it for the rest."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import bodies
from service.multipart import SIMPLE_MULTIPART_MAX_BYTES, multipart_boundary, parse_single_file
from tests.conftest import ClientFactory, make_record
from tests.test_batching import CLASSES, INPUT_SHAPE
from tests.test_predict import TINY_CNN, b64, error_code, save_model
from trainer.architectures import build_model
from trainer.registry import FileModelRegistry

MODEL = "uploads"
BOUNDARY = b"b0undary"
DISPOSITION = b'Content-Disposition: form-data; name="files"; '
PARAMS = {"model_name": MODEL, "top_k": str(len(CLASSES))}


def png(seed: int, size: int = 12) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def form(*parts: bytes, closing: bytes = b"--b0undary--\r\n") -> bytes:
    return b"".join(b"--b0undary\r\n" + part + b"\r\n" for part in parts) + closing


def file_part(data: bytes, headers: bytes | None = None) -> bytes:
    headers = headers or (
        b'Content-Disposition: form-data; name="files"; filename="a.png"\r\nContent-Type: image/png'
    )
    return headers + b"\r\n\r\n" + data


def test_one_file_part_is_cut_out() -> None:
    data = png(0) + b"\r\n--b0und"  # data may hold anything but CRLF + the whole delimiter
    part = parse_single_file(form(file_part(data)), BOUNDARY)
    assert part is not None
    assert (part.field, part.filename, part.data) == ("files", "a.png", data)
    # No CRLF after the closing delimiter, no Content-Type, lower-case header names.
    bare = form(
        file_part(data, b'content-disposition: form-data; name="file"; filename="b c.png"'),
        closing=b"--b0undary--",
    )
    part = parse_single_file(bare, BOUNDARY)
    assert part is not None and (part.field, part.filename) == ("file", "b c.png")
    assert multipart_boundary(b"multipart/form-data; boundary=b0undary") == BOUNDARY
    assert multipart_boundary(b'multipart/form-data; boundary="b0undary"') == BOUNDARY
    assert multipart_boundary(b"multipart/form-data") is None


@pytest.mark.parametrize(
    "body",
    [
        form(file_part(b"x"), file_part(b"y")),  # two parts
        form(b'Content-Disposition: form-data; name="note"\r\n\r\nhello'),  # a text field
        form(file_part(b"x"), closing=b""),  # no closing delimiter
        form(file_part(b"x"), closing=b"--b0undary--\r\ntrailing"),
        b"--other\r\n" + file_part(b"x") + b"\r\n--other--\r\n",  # another boundary
        form(file_part(b"x", b'Content-Disposition: form-data; name="files"; filename="a\\"b"')),
        form(file_part(b"x", DISPOSITION + 'filename="é"'.encode())),
        form(file_part(b"x", b'Content-Disposition: form-data; name="files"; filename=""')),
        form(file_part(b"x", b'Content-Disposition: form-data; name="files"')),  # no file name
        form(file_part(b"x", b"Content-Type: image/png")),  # no disposition
        form(
            file_part(
                b"x",
                b'Content-Disposition: form-data; name="files"; filename="a.png"\r\n'
                b"Content-Transfer-Encoding: base64",
            )
        ),
        form(b'Content-Disposition: form-data; name="files"; filename="a.png"'),  # no blank line
        b"",
    ],
)
def test_anything_else_is_left_to_the_full_parser(body: bytes) -> None:
    assert parse_single_file(body, BOUNDARY) is None


@pytest.fixture
def home(tmp_path: Path) -> Path:
    registry = FileModelRegistry(tmp_path / "registry")
    model = build_model("custom_cnn", TINY_CNN, INPUT_SHAPE, len(CLASSES))
    record = make_record(class_names=CLASSES, input_shape=list(INPUT_SHAPE))
    registry.register(MODEL, lambda path: save_model(model, path), record)
    return tmp_path


def probabilities(response: Any) -> list[list[float]]:
    assert response.status_code == 200, response.text
    return [
        [entry["probability"] for entry in sorted(p["top_k"], key=lambda e: e["label"])]
        for p in response.json()["predictions"]
    ]


def post_form(client: TestClient, body: bytes, **settings: Any) -> Any:
    headers = {"content-type": "multipart/form-data; boundary=b0undary"}
    return client.post("/predict", params=PARAMS, content=body, headers=headers)


def test_fast_and_full_paths_predict_the_same(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()
    image = png(1)
    full = client.post(
        "/predict", params=PARAMS, files={"files": ("a.png", image)}, data={"note": "hi"}
    )  # a text field: the full parser
    as_json = client.post("/predict", params=PARAMS, json={"instances": [b64(image)]})

    def no_full_parser(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a single small file went through the full parser")

    monkeypatch.setattr(bodies._BoundedMultiPartParser, "parse", no_full_parser)
    fast = client.post("/predict", params=PARAMS, files={"files": ("a.png", image)})
    assert fast.json()["predictions"][0]["filename"] == "a.png"
    assert probabilities(fast) == probabilities(full) == probabilities(as_json)


def test_malformed_small_bodies_get_a_clear_4xx(make_client: ClientFactory) -> None:
    client = make_client()
    truncated = post_form(client, form(file_part(png(2)), closing=b"--b0und"))
    assert (truncated.status_code, error_code(truncated)) == (422, "invalid_input")
    assert "malformed multipart body" in truncated.json()["detail"]["message"]
    text_only = post_form(client, form(b'Content-Disposition: form-data; name="files"\r\n\r\nx'))
    assert (text_only.status_code, error_code(text_only)) == (422, "invalid_input")
    not_an_image = post_form(client, form(file_part(b"GIF89a garbage")))
    assert (not_an_image.status_code, error_code(not_an_image)) == (415, "unsupported_media_type")
    assert "file 'a.png' is not a readable image" in not_an_image.json()["detail"]["message"]
    headers = {"content-type": "multipart/form-data"}  # no boundary
    no_boundary = client.post("/predict", params=PARAMS, content=form(b"x"), headers=headers)
    assert no_boundary.status_code in (400, 422)


def test_limits_apply_on_both_paths(make_client: ClientFactory) -> None:
    client = make_client(max_upload_bytes=2048)
    small_over_limit = form(file_part(png(3, size=64)))  # read whole, then refused
    assert 2048 < len(small_over_limit) <= SIMPLE_MULTIPART_MAX_BYTES
    refused = post_form(client, small_over_limit)
    assert (refused.status_code, error_code(refused)) == (413, "payload_too_large")
    assert "file 'a.png' is" in refused.json()["detail"]["message"]
    # A body too large for the fast path streams through the full parser, which refuses
    # the file as soon as it passes the limit.
    large = form(file_part(png(4) + b"\0" * (SIMPLE_MULTIPART_MAX_BYTES + 1)))
    streamed = post_form(client, large)
    assert (streamed.status_code, error_code(streamed)) == (413, "payload_too_large")
    assert "file 'a.png' is larger than 2048 bytes" in streamed.json()["detail"]["message"]
