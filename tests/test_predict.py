"""/predict and the TF Serving routes, through the real app, registry and Keras models.

One small CNN is trained for a few seconds on scikit-learn's digits and registered,
so a wrong preprocessing step shows up as a wrong class, not just a shape mismatch.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image

from service import bodies
from service.app import create_app
from service.errors import ModelLoadError, PayloadTooLargeError, UnsupportedMediaTypeError
from service.images import check_pixel_budget, decode_image, pixels_to_batch
from service.model_cache import ModelCache
from service.monitoring import TELEMETRY
from tests.conftest import make_record
from trainer.architectures import build_model
from trainer.architectures.custom_cnn import CustomCnnHyperparameters
from trainer.data import PreparedData, prepare
from trainer.errors import CorruptModelError, InvalidInputError
from trainer.registry import FileModelRegistry
from trainer.train import inference_copy
from worker.settings import Settings

DIGITS = "digits"
RGB = "rgb"
SWITCH = "switch"
TINY_CNN = CustomCnnHyperparameters(filters1=8, filters2=8, dense_units=16, dropout_rate=0.1)
RGB_CLASSES = ["red", "green", "blue"]

ClientFactory = Callable[..., TestClient]


@pytest.fixture(scope="module")
def digits() -> PreparedData:
    return prepare(DIGITS, None)


@pytest.fixture(scope="module")
def digits_model(digits: PreparedData) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model("custom_cnn", TINY_CNN, (28, 28, 1), 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.train.x, digits.train.y, epochs=8, batch_size=32, verbose=0)
    return inference_copy(model)


def save_model(model: keras.Model, path: Path) -> None:
    # Keras 3.15 calls np.array() on TF variables, whose __array__ lacks NumPy 2's `copy`
    # keyword: a DeprecationWarning inside Keras that this project cannot fix. Ignored
    # here only, for this one message.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "__array__ implementation doesn't accept a copy keyword", DeprecationWarning
        )
        model.save(path)


def _register(
    registry: FileModelRegistry, name: str, model: keras.Model, classes: list[str]
) -> int:
    record = make_record(class_names=classes, input_shape=list(model.input_shape[1:]))
    return registry.register(name, lambda path: save_model(model, path), record)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, digits_model: keras.Model) -> Path:
    home = tmp_path_factory.mktemp("home")
    registry = FileModelRegistry(home / "registry")
    digit_classes = [str(digit) for digit in range(10)]
    for _ in range(2):  # versions 1 and 2 of "digits" and of "switch": the same weights
        _register(registry, DIGITS, digits_model, digit_classes)
        _register(registry, SWITCH, digits_model, digit_classes)
    keras.utils.set_random_seed(1)
    _register(registry, RGB, build_model("custom_cnn", TINY_CNN, (16, 16, 3), 3), RGB_CLASSES)
    return home


@pytest.fixture(scope="module")
def make_client(home: Path) -> ClientFactory:
    def make(**settings: Any) -> TestClient:
        # No `with`: the lifespan's job-recovery loop has nothing to do in these tests.
        return TestClient(create_app(Settings(home=home, **settings)))

    return make


@pytest.fixture(scope="module")
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


@pytest.fixture(scope="module")
def registry(home: Path) -> FileModelRegistry:
    return FileModelRegistry(home / "registry")


@pytest.fixture(scope="module")
def test_pixels(digits: PreparedData) -> NDArray[np.uint8]:
    """The digits test images as uint8 (N, 28, 28): exactly what normalize() scaled."""
    return np.asarray((digits.test.x[..., 0] * 255).round(), dtype=np.uint8)


@pytest.fixture(scope="module")
def expected(digits_model: keras.Model, digits: PreparedData) -> NDArray[np.float32]:
    return np.asarray(digits_model.predict(digits.test.x, verbose=0))


@pytest.fixture(scope="module")
def confident(expected: NDArray[np.float32], digits: PreparedData) -> int:
    """A test image the model classifies correctly with a wide margin."""
    correct = expected.argmax(axis=1) == digits.test.y
    return int(np.flatnonzero(correct & (expected.max(axis=1) > 0.9))[0])


def encode(image: Image.Image, image_format: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def all_probabilities(response: Any) -> NDArray[np.float64]:
    """Probabilities per class from a /predict response asked with top_k=10."""
    rows = []
    for prediction in response.json()["predictions"]:
        row = np.zeros(10)
        for entry in prediction["top_k"]:
            row[int(entry["label"])] = entry["probability"]
        rows.append(row)
    return np.array(rows)


def error_code(response: Any) -> str:
    code: str = response.json()["detail"]["code"]
    return code


# ---------------------------------------------------------------- /predict, happy paths


def test_png_uploads_predict_what_the_model_predicts(
    client: TestClient, test_pixels: NDArray[np.uint8], expected: NDArray[np.float32],
    digits: PreparedData,
) -> None:  # fmt: skip
    count = 24
    files = [
        ("files", (f"digit{i}.png", encode(Image.fromarray(test_pixels[i])), "image/png"))
        for i in range(count)
    ]
    response = client.post("/predict", params={"model_name": DIGITS, "version": "1"}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["version"]) == (DIGITS, 1)
    predictions = body["predictions"]
    assert [p["filename"] for p in predictions] == [f"digit{i}.png" for i in range(count)]
    indices = np.array([p["class_index"] for p in predictions])
    np.testing.assert_array_equal(indices, expected[:count].argmax(axis=1))
    assert all(p["label"] == str(p["class_index"]) for p in predictions)
    confidences = [p["confidence"] for p in predictions]
    np.testing.assert_allclose(confidences, expected[:count].max(axis=1), atol=1e-5)
    # The model learned: the service's answers are mostly right, far above chance (10%).
    assert (indices == digits.test.y[:count]).mean() >= 0.7


def test_single_file_field_and_default_version(
    client: TestClient, test_pixels: NDArray[np.uint8], confident: int, digits: PreparedData
) -> None:
    png = encode(Image.fromarray(test_pixels[confident]))
    response = client.post(
        "/predict", params={"model_name": DIGITS}, files={"file": ("a.png", png)}
    )
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2  # no production alias: the latest version
    assert response.json()["predictions"][0]["class_index"] == digits.test.y[confident]


def _variants(pixels: NDArray[np.uint8]) -> dict[str, tuple[bytes, bool]]:
    """Encodings of one digit → (file bytes, whether it must classify like the original)."""
    gray = Image.fromarray(pixels)
    rgb = gray.convert("RGB")
    rgba = gray.convert("RGBA")
    sixteen_bit = Image.fromarray(pixels.astype(np.uint16) * 257)
    huge = gray.resize((1400, 1200), Image.Resampling.BICUBIC)
    return {
        "jpeg": (encode(gray, "JPEG", quality=95), True),
        "bmp": (encode(rgb, "BMP"), True),
        "gif": (encode(gray, "GIF"), True),
        "rgba": (encode(rgba), True),
        "palette": (encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)), False),
        "la": (encode(gray.convert("LA")), True),
        "16-bit": (encode(sixteen_bit), True),
        "cmyk-jpeg": (encode(rgb.convert("CMYK"), "JPEG", quality=95), False),
        "huge": (encode(huge, "JPEG", quality=90), True),
        "tiny": (encode(gray.resize((5, 4))), False),
    }


@pytest.mark.parametrize(
    "variant",
    ["jpeg", "bmp", "gif", "rgba", "palette", "la", "16-bit", "cmyk-jpeg", "huge", "tiny"],
)
def test_formats_modes_and_sizes_are_accepted(
    client: TestClient, test_pixels: NDArray[np.uint8], confident: int, digits: PreparedData,
    variant: str,
) -> None:  # fmt: skip
    data, same_class = _variants(test_pixels[confident])[variant]
    response = client.post(
        "/predict", params={"model_name": DIGITS, "top_k": 10}, files={"files": ("x", data)}
    )
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert sum(entry["probability"] for entry in prediction["top_k"]) == pytest.approx(1, abs=1e-4)
    if same_class:
        assert prediction["class_index"] == digits.test.y[confident]


def test_base64_json_matches_the_upload(client: TestClient, test_pixels: NDArray[np.uint8]) -> None:
    pngs = [encode(Image.fromarray(test_pixels[i])) for i in range(3)]
    params: dict[str, Any] = {"model_name": DIGITS, "version": "1", "top_k": 10}
    uploaded = client.post("/predict", params=params, files=[("files", ("x.png", p)) for p in pngs])
    as_json = client.post("/predict", params=params, json={"instances": [b64(p) for p in pngs]})
    assert as_json.status_code == 200, as_json.text
    np.testing.assert_allclose(all_probabilities(as_json), all_probabilities(uploaded), atol=1e-6)
    assert "filename" not in as_json.json()["predictions"][0]


def test_pixel_arrays_in_either_range_give_the_same_answer(
    client: TestClient, test_pixels: NDArray[np.uint8], expected: NDArray[np.float32]
) -> None:
    params: dict[str, Any] = {"model_name": DIGITS, "version": "1", "top_k": 10}
    bytes_range = [test_pixels[i][..., np.newaxis].tolist() for i in range(4)]
    unit_range = [(test_pixels[i] / 255).tolist() for i in range(4)]  # [H, W] form
    first = client.post("/predict", params=params, json={"instances": bytes_range})
    second = client.post(
        "/predict", params=params, json={"instances": unit_range, "pixel_range": "0-1"}
    )
    assert first.status_code == second.status_code == 200, first.text + second.text
    np.testing.assert_allclose(all_probabilities(first), all_probabilities(second), atol=1e-6)
    np.testing.assert_allclose(all_probabilities(first), expected[:4], atol=1e-5)


def test_top_k_is_ranked_and_counts_predictions(
    client: TestClient, test_pixels: NDArray[np.uint8]
) -> None:
    def counted() -> float:
        labels = {"model_name": DIGITS, "version": "1"}
        return TELEMETRY.get_sample_value("daciavision_predictions_total", labels) or 0.0

    before = counted()
    instances = [test_pixels[i].tolist() for i in range(2)]
    params: dict[str, Any] = {"model_name": DIGITS, "version": "1", "top_k": 4}
    response = client.post("/predict", params=params, json={"instances": instances})
    assert response.status_code == 200, response.text
    for prediction in response.json()["predictions"]:
        top = prediction["top_k"]
        probabilities = [entry["probability"] for entry in top]
        assert len(top) == 4
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-6
        assert (top[0]["label"], top[0]["probability"]) == (
            prediction["label"],
            prediction["confidence"],
        )
    default = client.post("/predict", params={"model_name": DIGITS}, json={"instances": instances})
    assert len(default.json()["predictions"][0]["top_k"]) == 3
    assert counted() == before + 2


def test_color_model_gets_three_channels(client: TestClient) -> None:
    gray = encode(Image.new("L", (40, 30), 200))
    response = client.post("/predict", params={"model_name": RGB}, files={"files": ("g.png", gray)})
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert prediction["label"] in RGB_CLASSES
    assert len(prediction["top_k"]) == 3  # default 3 = all classes of this model


# ---------------------------------------------------------------- decoding, unit level


def test_decode_image_converts_modes_as_documented(test_pixels: NDArray[np.uint8]) -> None:
    pixels = test_pixels[0]
    gray = decode_image(encode(Image.fromarray(pixels)), (28, 28, 1))
    assert gray.dtype == np.float32 and gray.shape == (28, 28, 1)
    np.testing.assert_array_equal(gray[..., 0], pixels / np.float32(255))
    # 16-bit PNGs use their whole range (Pillow's own convert would clip at 255).
    sixteen_bit = Image.fromarray(pixels.astype(np.uint16) * 257)
    np.testing.assert_allclose(decode_image(encode(sixteen_bit), (28, 28, 1)), gray, atol=1e-6)
    # Transparent pixels show the white background, not the colour stored under them.
    transparent_black = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(encode(transparent_black), (8, 8, 3)).min() == 1.0
    # Grayscale into a colour model: three equal channels.
    color = decode_image(encode(Image.fromarray(pixels)), (28, 28, 3))
    assert color.shape == (28, 28, 3)
    np.testing.assert_array_equal(color[..., 0], color[..., 2])
    # Only the first frame of an animated GIF counts.
    frames = [Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 255)]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(animated, (4, 4, 1)).max() == 0.0


def test_decode_image_applies_the_exif_orientation() -> None:
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    for image_format in ("PNG", "JPEG"):
        options: dict[str, Any] = {"quality": 100} if image_format == "JPEG" else {}
        rotated = encode(image, image_format, exif=exif, **options)
        upright = encode(image.transpose(Image.Transpose.ROTATE_270), image_format, **options)
        plain = encode(image, image_format, **options)
        decoded = decode_image(rotated, (4, 4, 1))
        np.testing.assert_array_equal(decoded, decode_image(upright, (4, 4, 1)))
        assert not np.array_equal(decoded, decode_image(plain, (4, 4, 1)))


def test_decode_image_refuses_decompression_bombs(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.new("L", (300, 200)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # Pillow warns at 1x, fails at 2x
    with pytest.raises(PayloadTooLargeError, match=r"\(Image size \(60000 pixels\) exceeds"):
        decode_image(data, (28, 28, 1))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    with pytest.raises(PayloadTooLargeError, match="at most 20000 pixels are accepted"):
        decode_image(data, (28, 28, 1))
    with warnings.catch_warnings():  # as in production, where Pillow's warning is only logged
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
        with pytest.raises(PayloadTooLargeError, match=r"\(300x200 pixels\); at most 50000"):
            decode_image(data, (28, 28, 1))


def test_an_image_pillow_will_not_open_is_refused_against_the_service_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Past twice Pillow's limit Image.open refuses the file; the error still names the
    # service's own limit, which is what the client can act on.
    data = encode(Image.new("L", (300, 200)), "GIF")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    with pytest.raises(
        PayloadTooLargeError, match="has 60000 pixels; each image may have at most 10000"
    ):
        check_pixel_budget([("file 'big.gif'", data)], 10_000, 1_000_000)


def test_decode_image_refuses_other_formats() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="PNG, JPEG, BMP or GIF"):
        decode_image(encode(Image.new("L", (4, 4)), "TIFF"), (4, 4, 1))


def test_pixels_to_batch_checks_shape_and_range() -> None:
    batch = pixels_to_batch([[[0, 255]], [[[51], [102]]]], (1, 2, 1))
    np.testing.assert_allclose(batch[..., 0], np.array([[[0, 1]], [[0.2, 0.4]]]))
    with pytest.raises(
        InvalidInputError, match=r"instances\[1\] has shape \[1, 3\]; .* \[1, 2, 1\]"
    ):
        pixels_to_batch([[[0, 1]], [[0, 1, 2]]], (1, 2, 1))
    with pytest.raises(InvalidInputError, match=r"instances\[0\] has values from 0.0 to 2.0"):
        pixels_to_batch([[[0, 2]]], (1, 2, 1), "0-1")
    with pytest.raises(InvalidInputError, match="not a rectangular array"):
        pixels_to_batch([[[0], [1, 2]]], (2, 2, 1))


# ---------------------------------------------------------------- /predict, errors

GOOD_PIXELS = [[[0]] * 28] * 28


def test_query_errors_read_as_on_the_routes_fastapi_checks(client: TestClient) -> None:
    # /predict reads its query itself (service/query.py); /metrics and /jobs leave theirs
    # to FastAPI. A client must not be able to tell.
    ours = client.post("/predict", params={"top_k": "many"}, json={"instances": [GOOD_PIXELS]})
    missing = client.get("/metrics")
    not_a_number = client.get("/jobs", params={"limit": "many"})
    assert ours.status_code == missing.status_code == not_a_number.status_code == 422
    entries = {entry["field"]: entry for entry in ours.json()["detail"]["errors"]}
    assert set(entries) == {"query.model_name", "query.top_k"}
    assert entries["query.model_name"] == missing.json()["detail"]["errors"][0]
    limit = not_a_number.json()["detail"]["errors"][0]
    assert entries["query.top_k"] == {**limit, "field": "query.top_k"}


@pytest.mark.parametrize(
    ("params", "body", "status", "code", "message_part"),
    [
        ({"model_name": "nope"}, GOOD_PIXELS, 404, "model_not_found", "'nope' has no registered"),
        ({"model_name": DIGITS, "version": "9"}, GOOD_PIXELS, 404, "version_not_found", "1, 2"),
        ({"model_name": DIGITS, "version": "staging"}, GOOD_PIXELS, 404, "alias_not_found",
         "no alias 'staging'"),
        ({"model_name": DIGITS, "top_k": 0}, GOOD_PIXELS, 422, "invalid_input", "top_k"),
        ({"model_name": DIGITS, "top_k": 11}, GOOD_PIXELS, 422, "invalid_input", "has 10 classes"),
        ({"model_name": DIGITS}, [[[0]] * 27] * 28, 422, "invalid_input",
         "instances[0] has shape [28, 27, 1]; this model expects [28, 28, 1] or [28, 28]"),
        ({"model_name": DIGITS}, [[[300]] * 28] * 28, 422, "invalid_input", "pixel_range 0-255"),
        ({"model_name": DIGITS}, {"b64": "not base64!"}, 422, "invalid_input",
         "instances[0].b64 is not valid base64"),
        ({"model_name": DIGITS}, {"b64": base64.b64encode(b"text").decode()}, 415,
         "unsupported_media_type", "PNG, JPEG, BMP or GIF"),
    ],
)  # fmt: skip
def test_json_errors_have_one_shape(
    client: TestClient, params: dict[str, Any], body: Any, status: int, code: str,
    message_part: str,
) -> None:  # fmt: skip
    response = client.post("/predict", params=params, json={"instances": [body]})
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert message_part in response.json()["detail"]["message"]


def test_empty_or_malformed_json_is_422(client: TestClient) -> None:
    params = {"model_name": DIGITS}
    empty = client.post("/predict", params=params, json={"instances": []})
    assert (empty.status_code, error_code(empty)) == (422, "invalid_input")
    assert empty.json()["detail"]["errors"][0]["field"] == "body.instances"
    typo = client.post("/predict", params=params, json={"instances": [GOOD_PIXELS], "range": 1})
    assert typo.status_code == 422 and "range" in typo.json()["detail"]["message"]
    broken = client.post("/predict", params=params, content=b"{", headers=JSON_HEADERS)
    assert (broken.status_code, error_code(broken)) == (422, "invalid_input")


JSON_HEADERS = {"content-type": "application/json"}


def test_upload_errors(client: TestClient) -> None:
    params = {"model_name": DIGITS}
    text = client.post(
        "/predict", params=params, content=b"hello", headers={"content-type": "text/plain"}
    )
    assert (text.status_code, error_code(text)) == (415, "unsupported_media_type")
    message = text.json()["detail"]["message"]
    assert (
        "'text/plain'" in message
        and "multipart/form-data" in message
        and "application/json" in message
    )

    corrupt = client.post(
        "/predict", params=params, files={"files": ("bad.png", b"\x89PNG garbage")}
    )
    assert (corrupt.status_code, error_code(corrupt)) == (415, "unsupported_media_type")
    assert "file 'bad.png' is not a readable image" in corrupt.json()["detail"]["message"]

    tiff = client.post(
        "/predict",
        params=params,
        files={"files": ("t.tif", encode(Image.new("L", (4, 4)), "TIFF"))},
    )
    assert tiff.status_code == 415

    wrong_field = client.post("/predict", params=params, files={"image": ("a.png", b"x")})
    assert wrong_field.status_code == 422
    assert "field 'files'" in wrong_field.json()["detail"]["message"]


def test_size_and_count_limits_are_413(
    make_client: ClientFactory, test_pixels: NDArray[np.uint8]
) -> None:
    limited = make_client(max_upload_bytes=1024, max_instances=2)
    params = {"model_name": DIGITS}
    small = encode(Image.fromarray(test_pixels[0]))
    big = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
    assert len(small) < 1024 < len(big)

    ok = limited.post("/predict", params=params, files=[("files", ("a.png", small))] * 2)
    assert ok.status_code == 200, ok.text
    too_big = limited.post("/predict", params=params, files={"files": ("big.png", big)})
    assert (too_big.status_code, error_code(too_big)) == (413, "payload_too_large")
    assert "file 'big.png' is" in too_big.json()["detail"]["message"]
    too_big_b64 = limited.post("/predict", params=params, json={"instances": [b64(big)]})
    assert (too_big_b64.status_code, error_code(too_big_b64)) == (413, "payload_too_large")
    too_many = limited.post("/predict", params=params, files=[("files", ("a.png", small))] * 3)
    assert (too_many.status_code, error_code(too_many)) == (413, "payload_too_large")
    too_many_json = limited.post("/predict", params=params, json={"instances": [GOOD_PIXELS] * 3})
    assert (too_many_json.status_code, error_code(too_many_json)) == (413, "payload_too_large")
    assert "3 inputs in one request; at most 2" in too_many_json.json()["detail"]["message"]


def test_openapi_documents_both_bodies_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/predict"]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert {"base64", "pixels", "unit"} <= set(content["application/json"]["examples"])
    assert {"404", "413", "415", "422"} <= set(operation["responses"])
    assert operation["summary"] and operation["description"]
    assert "/v1/models/{model_name}/versions/{version}:predict" in spec["paths"]


# ---------------------------------------------------------------- TensorFlow Serving


def _predict_probabilities(client: TestClient, version: str, pixels: NDArray[np.uint8]) -> Any:
    params: dict[str, Any] = {"model_name": DIGITS, "version": version, "top_k": 10}
    instances = pixels[..., np.newaxis].tolist()
    return all_probabilities(client.post("/predict", params=params, json={"instances": instances}))


def test_tf_serving_predict_matches_predict(
    client: TestClient, registry: FileModelRegistry, test_pixels: NDArray[np.uint8]
) -> None:
    pixels = test_pixels[:3]
    unit = (pixels[..., np.newaxis] / 255).tolist()  # TF Serving sends the model's raw input
    expected = _predict_probabilities(client, "1", pixels)
    registry.set_alias(DIGITS, "stable", 1)
    by_version = "/v1/models/digits/versions/1:predict"
    for path in (by_version, "/v1/models/digits/labels/stable:predict"):
        response = client.post(path, json={"instances": unit})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["predictions"], expected, atol=1e-5)
    default = client.post("/v1/models/digits:predict", json={"instances": unit})
    assert default.status_code == 200, default.text
    latest = _predict_probabilities(client, "2", pixels)
    np.testing.assert_allclose(default.json()["predictions"], latest, atol=1e-5)

    # Columnar with a named input, b64 images, and curl's default content type work too.
    columnar = client.post(by_version, json={"inputs": {"image": unit}})
    np.testing.assert_allclose(columnar.json()["outputs"], expected, atol=1e-5)
    images = [b64(encode(Image.fromarray(image))) for image in pixels]
    as_b64 = client.post(by_version, json={"instances": images})
    np.testing.assert_allclose(as_b64.json()["predictions"], expected, atol=1e-5)
    form_typed = {"content-type": "application/x-www-form-urlencoded"}
    curl = client.post(by_version, content=json.dumps({"instances": unit}), headers=form_typed)
    np.testing.assert_allclose(curl.json()["predictions"], expected, atol=1e-5)


def test_a_model_computing_nan_gets_a_clear_500(
    client: TestClient, registry: FileModelRegistry
) -> None:
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    broken = keras.Model(inputs, outputs)
    kernel, bias = broken.layers[-1].get_weights()
    broken.layers[-1].set_weights([np.full_like(kernel, np.nan), bias])
    _register(registry, "computes-nan", broken, [str(digit) for digit in range(10)])
    for path, body in (
        ("/predict?model_name=computes-nan", {"instances": [GOOD_PIXELS]}),
        ("/v1/models/computes-nan:predict", {"instances": [GOOD_PIXELS]}),
    ):
        response = client.post(path, json=body)
        assert response.status_code == 500, response.text
        detail = response.json()["detail"]
        assert detail["code"] == "model_output_invalid"
        assert "NaN or infinite" in detail["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/models/nope:predict", {"instances": [GOOD_PIXELS]}, 404, "model_not_found"),
        ("POST", "/v1/models/digits/versions/7:predict", {"instances": [GOOD_PIXELS]}, 404,
         "version_not_found"),
        ("POST", "/v1/models/digits/labels/canary:predict", {"instances": [GOOD_PIXELS]}, 404,
         "alias_not_found"),
        ("POST", "/v1/models/digits/versions/one:predict", {"instances": [GOOD_PIXELS]}, 422,
         "invalid_input"),
        ("POST", "/v1/models/digits:predict", {"instances": [[[[2.0]] * 28] * 28]}, 422,
         "invalid_input"),
        ("POST", "/v1/models/digits:predict", {"instances": [], "inputs": []}, 422,
         "invalid_input"),
        ("POST", "/v1/models/digits:predict",
         {"inputs": {"image": [GOOD_PIXELS], "other": [GOOD_PIXELS]}}, 422, "invalid_input"),
        ("GET", "/v1/models/nope", None, 404, "model_not_found"),
        ("GET", "/v1/models/digits/versions/5/metadata", None, 404, "version_not_found"),
    ],
)  # fmt: skip
def test_tf_serving_errors_carry_an_error_string(
    client: TestClient, method: str, path: str, body: Any, status: int, code: str
) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["detail"]["code"] == code
    assert payload["error"] == payload["detail"]["message"] != ""


@pytest.mark.parametrize(
    ("version", "expected"), [("one", "valid integer"), ("0", "greater than or equal to 1")]
)
def test_a_tf_serving_version_that_is_not_a_number_says_what_was_expected(
    client: TestClient, version: str, expected: str
) -> None:
    path = f"/v1/models/{DIGITS}/versions/{version}:predict"
    response = client.post(path, json={"instances": [GOOD_PIXELS]})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]["errors"]
    assert error["field"] == "path.version"
    assert error["received"] == version
    assert expected in error["expected"]


def test_tf_serving_inputs_naming_more_than_the_one_input_say_so(client: TestClient) -> None:
    body: dict[str, Any] = {"inputs": {"image": [GOOD_PIXELS], "other": [GOOD_PIXELS]}}
    response = client.post(f"/v1/models/{DIGITS}:predict", json=body)
    assert response.status_code == 422
    message = response.json()["detail"]["message"]
    assert "inputs names 2 inputs ('image', 'other')" in message and "the model has one" in message
    body = {"instances": [GOOD_PIXELS, {"image": GOOD_PIXELS, "other": GOOD_PIXELS}]}
    response = client.post(f"/v1/models/{DIGITS}:predict", json=body)
    assert response.status_code == 422
    assert "instances[1] names 2 inputs" in response.json()["detail"]["message"]


def test_a_tf_serving_signature_name_is_bounded_before_it_is_echoed(client: TestClient) -> None:
    # An unknown signature is named in the error: a megabyte one would come back several times.
    body = {"signature_name": "s" * 1_000_000, "instances": [GOOD_PIXELS]}
    response = client.post(f"/v1/models/{DIGITS}:predict", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]["errors"]
    assert error["field"] == "body.signature_name"
    assert "at most 64 characters" in error["expected"]
    assert len(response.content) < 20_000


def test_the_tf_serving_predict_routes_document_their_path_parameters(
    client: TestClient,
) -> None:
    # The routes read their path themselves (service/query.py), so the docs come from
    # openapi_extra: each path parameter must still be there, required and typed.
    paths = client.get("/openapi.json").json()["paths"]
    documented = {
        path: [
            (parameter["name"], parameter["in"], parameter["required"], parameter["schema"]["type"])
            for parameter in paths[path]["post"]["parameters"]
        ]
        for path in paths
        if path.startswith("/v1/models/") and path.endswith(":predict")
    }
    model_name = ("model_name", "path", True, "string")
    assert documented == {
        "/v1/models/{model_name}:predict": [model_name],
        "/v1/models/{model_name}/versions/{version}:predict": [
            model_name, ("version", "path", True, "integer")
        ],
        "/v1/models/{model_name}/labels/{alias}:predict": [
            model_name, ("alias", "path", True, "string")
        ],
    }  # fmt: skip
    version = paths["/v1/models/{model_name}/versions/{version}:predict"]["post"]
    assert version["parameters"][1]["schema"]["minimum"] == 1


def test_tf_serving_status_and_metadata(client: TestClient) -> None:
    status = client.get("/v1/models/digits")
    assert status.status_code == 200, status.text
    assert status.json() == {
        "model_version_status": [
            {"version": version, "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}
            for version in ("2", "1")
        ]
    }  # fmt: skip
    one = client.get("/v1/models/digits/versions/1").json()["model_version_status"]
    assert [entry["version"] for entry in one] == ["1"]

    metadata = client.get("/v1/models/digits/metadata")
    assert metadata.status_code == 200, metadata.text
    body = metadata.json()
    assert body["model_spec"] == {"name": DIGITS, "signature_name": "", "version": "2"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = signature["inputs"]["image"]["tensor_shape"]["dim"]
    assert [int(dim["size"]) for dim in dims] == [-1, 28, 28, 1]
    outputs = signature["outputs"]["probabilities"]["tensor_shape"]["dim"]
    assert [int(dim["size"]) for dim in outputs] == [-1, 10]
    assert body["metadata"]["class_names"] == [str(digit) for digit in range(10)]
    rgb = client.get("/v1/models/rgb/versions/1/metadata").json()
    assert rgb["metadata"]["class_names"] == RGB_CLASSES


# ---------------------------------------------------------------- model cache


@pytest.fixture
def loaded_paths(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every model file keras.saving.load_model opens during the test."""
    paths: list[Path] = []
    original = keras.saving.load_model

    def counting_load(path: Path, *args: Any, **kwargs: Any) -> Any:
        paths.append(Path(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", counting_load)
    return paths


def test_cache_loads_a_version_once_and_stays_bounded(
    registry: FileModelRegistry, loaded_paths: list[Path]
) -> None:
    cache = ModelCache(registry, capacity=2)
    start = threading.Barrier(6)
    results = []

    def get() -> None:
        start.wait()
        results.append(cache.get(DIGITS, 1))

    threads = [threading.Thread(target=get) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loaded_paths) == 1  # six concurrent first requests, one load
    assert all(result is results[0] for result in results)
    assert (results[0].input_shape, results[0].num_classes) == ((28, 28, 1), 10)

    cache.get(DIGITS, 2)
    cache.get(SWITCH, 1)  # the third version: evicts the least recently used, digits 1
    assert cache.stats().keys == [(DIGITS, 2), (SWITCH, 1)]
    cache.get(DIGITS, 2)
    assert len(loaded_paths) == 3  # a hit, no load
    cache.get(DIGITS, 1)
    stats = cache.stats()
    assert len(loaded_paths) == 4 and stats.size == stats.capacity == 2
    assert stats.keys == [(DIGITS, 2), (DIGITS, 1)] and stats.evictions == 2


def test_a_slow_load_does_not_block_cached_models(
    registry: FileModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ModelCache(registry, capacity=4)
    cache.get(DIGITS, 1)
    loading, release = threading.Event(), threading.Event()
    original = keras.saving.load_model

    def slow_load(path: Path, *args: Any, **kwargs: Any) -> Any:
        loading.set()
        release.wait(timeout=30)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", slow_load)
    slow = threading.Thread(target=cache.get, args=(DIGITS, 2))
    slow.start()
    try:
        assert loading.wait(timeout=30)
        hit = threading.Thread(target=cache.get, args=(DIGITS, 1))
        hit.start()
        hit.join(timeout=10)
        assert not hit.is_alive(), "a cached model waited for another model's load"
    finally:
        release.set()
        slow.join()
    assert cache.stats().size == 2


def test_a_failing_load_changes_nothing(
    tmp_path: Path, digits_model: keras.Model, make_client: ClientFactory
) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    good = _register(registry, "flaky", digits_model, [str(digit) for digit in range(10)])
    mislabelled = _register(registry, "flaky", digits_model, ["a", "b", "c"])
    corrupt = _register(registry, "flaky", digits_model, [str(digit) for digit in range(10)])
    with registry.model_path("flaky", corrupt).open("ab") as model_file:
        model_file.write(b"tampered")
    cache = ModelCache(registry, capacity=4)
    cache.preload("flaky", good)
    with pytest.raises(CorruptModelError, match="sha256"):
        cache.preload("flaky", corrupt)
    with pytest.raises(ModelLoadError, match="card names 3 classes but the model outputs 10"):
        cache.preload("flaky", mislabelled)
    assert cache.stats().keys == [("flaky", good)]

    client = TestClient(create_app(Settings(home=tmp_path)))
    response = client.post(
        "/predict", params={"model_name": "flaky", "version": str(corrupt)},
        json={"instances": [GOOD_PIXELS]},
    )  # fmt: skip
    assert (response.status_code, error_code(response)) == (503, "corrupt_model")
    assert "Retry-After" in response.headers
    mislabelled_response = client.post(
        "/predict", params={"model_name": "flaky", "version": str(mislabelled)},
        json={"instances": [GOOD_PIXELS]},
    )  # fmt: skip
    assert (mislabelled_response.status_code, error_code(mislabelled_response)) == (
        503,
        "model_load_failed",
    )


def test_alias_switch_under_load_fails_no_request(
    make_client: ClientFactory, test_pixels: NDArray[np.uint8]
) -> None:
    client = make_client()
    services = client.app.state.services  # type: ignore[attr-defined]
    cache, registry = services.model_cache, services.registry
    # What PUT /models/{name}/aliases/production does: load and warm first, then move.
    cache.preload(SWITCH, 1)
    registry.set_alias(SWITCH, "production", 1)
    body = {"instances": [test_pixels[0].tolist()]}
    stop = threading.Event()
    served: list[int] = []
    failures: list[str] = []

    def hammer(params: dict[str, str]) -> None:
        while not stop.is_set():
            response = client.post("/predict", params=params, json=body)
            if response.status_code == 200:
                served.append(response.json()["version"])
            else:
                failures.append(f"{response.status_code} {response.text}")

    by_alias = {"model_name": SWITCH, "version": "production"}
    by_default = {"model_name": SWITCH}
    threads = [threading.Thread(target=hammer, args=(p,)) for p in [by_alias, by_default] * 2]
    for thread in threads:
        thread.start()
    try:
        for target in [2, 1] * 6:
            cache.preload(SWITCH, target)
            registry.set_alias(SWITCH, "production", target)
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert len(served) >= 20 and set(served) == {1, 2}
    assert cache.stats().loads == 2  # no request ever met a cold model
    after = client.post("/predict", params=by_alias, json=body)
    assert after.json()["version"] == 1


@pytest.mark.parametrize(
    ("body_bytes", "most_at_once"),
    [(bodies.LARGE_JSON_BYTES + 1, bodies.LARGE_JSON_PARSES), (1_000, 6)],
)
def test_large_json_bodies_are_parsed_a_few_at_a_time(body_bytes: int, most_at_once: int) -> None:
    # A JSON body of numbers takes about ten times its size while it is parsed.
    active, peak, lock = 0, 0, threading.Lock()

    def slow_parse(body: bytes) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.3)
        with lock:
            active -= 1
        return len(body)

    async def six_at_once() -> list[int]:
        body = b" " * body_bytes
        return await asyncio.gather(*(bodies._parse_off_loop(slow_parse, body) for _ in range(6)))

    assert asyncio.run(six_at_once()) == [body_bytes] * 6
    assert peak == most_at_once
