"""Datasets: lab-exact sampling, shapes, the sources and their error messages."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from trainer.data import (
    load_idx_directory,
    load_raw,
    normalize,
    prepare,
    read_idx,
    stratified_sample,
)
from trainer.errors import DatasetNotFoundError, InvalidInputError


def _balanced_labels(count: int, seed: int) -> np.ndarray:
    labels = np.repeat(np.arange(10), count // 10)
    np.random.default_rng(seed).shuffle(labels)
    return labels


@pytest.mark.parametrize(
    ("image_shape", "train_count", "test_count", "expected_train", "expected_test"),
    [((32, 32, 3), 50_000, 10_000, 12_500, 2_500), ((28, 28), 60_000, 10_000, 15_000, 2_500)],
    ids=["cifar10", "mnist"],
)
def test_sampling_equals_the_labs_procedure_element_for_element(
    image_shape: tuple[int, ...],
    train_count: int,
    test_count: int,
    expected_train: int,
    expected_test: int,
) -> None:
    rng = np.random.default_rng(0)
    for count, expected in ((train_count, expected_train), (test_count, expected_test)):
        images = rng.integers(0, 256, size=(count, *image_shape), dtype=np.uint8)
        labels = _balanced_labels(count, seed=count)
        # The lab, verbatim: split with test_size=0.25 and keep the "test" side.
        _, lab_images, _, lab_labels = train_test_split(
            images, labels, test_size=0.25, stratify=labels, random_state=42
        )
        sample_images, sample_labels = stratified_sample(images, labels, 0.25, seed=42)
        assert sample_images.shape == (expected, *image_shape)
        np.testing.assert_array_equal(sample_images, lab_images)
        np.testing.assert_array_equal(sample_labels, lab_labels)
        assert np.bincount(sample_labels).tolist() == [expected // 10] * 10


def test_sampling_with_column_labels_as_keras_returns_them_matches_flat_labels() -> None:
    labels = _balanced_labels(1000, seed=1)
    images = np.arange(1000, dtype=np.uint8)
    _, column_side, _, _ = train_test_split(
        images, labels.reshape(-1, 1), test_size=0.25, stratify=labels.reshape(-1, 1),
        random_state=42,
    )  # fmt: skip
    flat_side, _ = stratified_sample(images, labels, 0.25, seed=42)
    np.testing.assert_array_equal(flat_side, column_side)


def test_sampling_rejects_fractions_outside_zero_to_one() -> None:
    labels = _balanced_labels(100, seed=2)
    with pytest.raises(InvalidInputError, match=r"\(0, 1\]"):
        stratified_sample(labels, labels, 1.5)
    full_images, full_labels = stratified_sample(labels, labels, 1.0)
    assert len(full_labels) == 100 and full_images is labels


def test_normalize_gives_float32_in_unit_range_with_channel_axis() -> None:
    gray = np.array([[[0, 255], [128, 64]]], dtype=np.uint8)
    result = normalize(gray)
    assert result.dtype == np.float32
    assert result.shape == (1, 2, 2, 1)
    assert result.min() == 0.0 and result.max() == 1.0
    color = normalize(np.full((2, 4, 4, 3), 51, dtype=np.uint8))
    assert color.shape == (2, 4, 4, 3) and np.allclose(color, 0.2)


def _write_npz(path: Path, image_shape: tuple[int, ...], per_class: int) -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (len(labels), *image_shape), dtype=np.uint8),
        y_train=labels,
        x_test=rng.integers(0, 256, (len(labels) // 2, *image_shape), dtype=np.uint8),
        y_test=labels[::2],
    )


def test_prepare_reads_npz_from_the_data_directory_and_splits_validation(tmp_path: Path) -> None:
    _write_npz(tmp_path / "cifar10.npz", (32, 32, 3), per_class=40)
    data = prepare("cifar10", tmp_path, sample_fraction=0.5, validation_fraction=0.1, seed=42)
    assert data.source == str(tmp_path / "cifar10.npz")
    assert data.train.x.shape == (180, 32, 32, 3) and data.train.x.dtype == np.float32
    assert len(data.validation) == 20 and len(data.test) == 100
    assert np.bincount(data.validation.y).tolist() == [2] * 10
    assert data.info.class_names[0] == "airplane"


def test_prepare_adds_a_channel_axis_for_grayscale(tmp_path: Path) -> None:
    _write_npz(tmp_path / "mnist.npz", (28, 28), per_class=20)
    data = prepare("mnist", tmp_path, sample_fraction=1.0)
    assert data.train.x.shape[1:] == (28, 28, 1)
    assert data.test.x.shape == (100, 28, 28, 1)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_are_read_gzipped_or_plain(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28) % 256
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    labels = np.array([3, 7], dtype=np.uint8)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:1])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:1])
    raw = load_idx_directory(tmp_path)
    assert raw.x_train.shape == (2, 28, 28) and raw.y_train.tolist() == [3, 7]
    assert raw.y_test.tolist() == [3]


def test_fashion_mnist_idx_directory_under_the_data_dir_is_used(tmp_path: Path) -> None:
    idx_dir = tmp_path / "fashion_mnist"
    idx_dir.mkdir()
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    for name, array in (
        ("train-images-idx3-ubyte.gz", images),
        ("train-labels-idx1-ubyte.gz", np.array([0, 1, 2], dtype=np.uint8)),
        ("t10k-images-idx3-ubyte.gz", images[:1]),
        ("t10k-labels-idx1-ubyte.gz", np.array([9], dtype=np.uint8)),
    ):
        _write_idx(idx_dir / name, array)
    raw = load_raw("fashion_mnist", tmp_path)
    assert raw.source == str(idx_dir)
    assert raw.y_test.tolist() == [9]


def test_a_missing_dataset_names_every_place_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(name: str) -> None:
        raise OSError("no network")

    monkeypatch.setattr("trainer.data._load_from_keras", offline)
    with pytest.raises(DatasetNotFoundError) as caught:
        load_raw("cifar10", tmp_path)
    message = caught.value.message
    assert str(tmp_path / "cifar10.npz") in message
    assert "keras.datasets.cifar10" in message
    assert "DATA_DIR" in message
    assert caught.value.details["looked_at"][0] == str(tmp_path / "cifar10.npz")


def test_digits_are_bundled_and_upscaled_to_mnist_shape() -> None:
    raw = load_raw("digits", None)
    assert raw.x_train.shape[1:] == (28, 28) and raw.x_train.dtype == np.uint8
    assert len(raw.y_train) + len(raw.y_test) == 1797
    assert raw.x_train.max() > 200  # stretched from 0..16 to 0..255


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match="cifar10, mnist, fashion_mnist, digits"):
        load_raw("imagenet", None)
