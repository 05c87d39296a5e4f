"""Datasets: where they come from, how they are sampled and split.

Sources are tried in order: ``{data_dir}/{dataset}.npz``; for Fashion-MNIST,
the idx files of Debian's ``dataset-fashion-mnist``; then Keras' download
when the machine is online. ``digits`` is scikit-learn's bundled 8×8 digits,
upscaled to 28×28: small, always available, for smoke tests.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from trainer.datasets import DatasetDefinition, dataset_info
from trainer.errors import DatasetNotFoundError, InvalidInputError

Images = NDArray[np.uint8]
Labels = NDArray[np.int64]


@dataclass(frozen=True)
class RawDataset:
    """uint8 images (N, H, W[, C]) and integer labels, as the source stores them."""

    x_train: Images
    y_train: Labels
    x_test: Images
    y_test: Labels
    source: str


@dataclass(frozen=True)
class Split:
    x: NDArray[np.float32]
    y: Labels

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class PreparedData:
    info: DatasetDefinition
    train: Split
    validation: Split
    test: Split
    source: str


def load_raw(name: str, data_dir: Path | None) -> RawDataset:
    """Load a dataset's uint8 arrays from the first source that has it."""
    definition = dataset_info(name)
    if definition.bundled:
        return _load_digits()
    looked_at: list[str] = []
    if data_dir is not None:
        npz_path = data_dir / f"{name}.npz"
        looked_at.append(str(npz_path))
        if npz_path.is_file():
            return load_npz(npz_path)
    local_idx = [data_dir / name] if data_dir is not None else []
    for idx_dir in [*local_idx, *definition.idx_directories]:
        looked_at.append(f"{idx_dir}/*-idx?-ubyte[.gz]")
        if _has_idx_files(idx_dir):
            return load_idx_directory(idx_dir)
    looked_at.append(f"keras.datasets.{definition.keras_loader}.load_data() (needs internet)")
    try:
        return _load_from_keras(definition)
    except Exception as download_error:
        packages = ", ".join(str(directory) for directory in definition.idx_directories)
        raise DatasetNotFoundError(
            f"dataset {name!r} was not found. Looked at: {'; '.join(looked_at)} "
            f"(download failed: {type(download_error).__name__}: "
            f"{str(download_error)[:200] or 'no message'}). Provide it as "
            f"{name}.npz with uint8 arrays x_train, y_train, x_test, y_test in the data "
            "directory (setting DATA_DIR)" + (f", or idx files in {packages}" if packages else ""),
            dataset=name,
            looked_at=looked_at,
        ) from download_error


def load_npz(path: Path) -> RawDataset:
    with np.load(path, allow_pickle=False) as archive:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
        if missing:
            raise InvalidInputError(
                f"{path} lacks the arrays {sorted(missing)}; expected x_train, y_train, "
                "x_test, y_test",
                path=str(path),
            )
        return RawDataset(
            x_train=archive["x_train"].astype(np.uint8, copy=False),
            y_train=archive["y_train"].reshape(-1).astype(np.int64),
            x_test=archive["x_test"].astype(np.uint8, copy=False),
            y_test=archive["y_test"].reshape(-1).astype(np.int64),
            source=str(path),
        )


_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _idx_path(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_idx_files(directory: Path) -> bool:
    return all(_idx_path(directory, stem) for stem in _IDX_FILES.values())


def read_idx(path: Path) -> NDArray[np.uint8]:
    """Read one idx file (MNIST's format), optionally gzip-compressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        payload = stream.read()
    zero, data_type, dimensions = struct.unpack(">HBB", payload[:4])
    if zero != 0 or data_type != 0x08:
        raise InvalidInputError(f"{path} is not an unsigned-byte idx file", path=str(path))
    shape = struct.unpack(f">{dimensions}I", payload[4 : 4 + 4 * dimensions])
    data = np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * dimensions)
    return data.reshape(shape)


def load_idx_directory(directory: Path) -> RawDataset:
    arrays = {}
    for key, stem in _IDX_FILES.items():
        path = _idx_path(directory, stem)
        assert path is not None
        arrays[key] = read_idx(path)
    return RawDataset(
        x_train=arrays["x_train"],
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"],
        y_test=arrays["y_test"].astype(np.int64),
        source=str(directory),
    )


def _load_from_keras(definition: DatasetDefinition) -> RawDataset:
    if definition.keras_loader is None:
        raise LookupError(f"Keras has no download of {definition.name}")
    import keras  # deferred: only this fallback needs Keras

    loader = getattr(keras.datasets, definition.keras_loader)
    (x_train, y_train), (x_test, y_test) = loader.load_data()
    return RawDataset(
        x_train, y_train.reshape(-1).astype(np.int64),
        x_test, y_test.reshape(-1).astype(np.int64),
        source=f"keras.datasets.{definition.keras_loader}",
    )  # fmt: skip


def _load_digits() -> RawDataset:
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Values are 0..16; stretch to 0..255 and upscale like MNIST's 28×28.
    small = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    images = np.stack(
        [
            np.asarray(Image.fromarray(img).resize((28, 28), Image.Resampling.BILINEAR))
            for img in small
        ]
    )
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0
    )
    return RawDataset(x_train, y_train, x_test, y_test, source="sklearn.datasets.load_digits")


def stratified_sample(
    x: Images, y: Labels, fraction: float, seed: int = 42
) -> tuple[Images, Labels]:
    """Keep ``fraction`` of each class, exactly as the lab did.

    The lab called ``train_test_split(x, y, test_size=f, stratify=y,
    random_state=seed)`` and kept the *test* side; reproducing that call keeps
    our samples identical to the lab's, element for element.
    """
    if not 0 < fraction <= 1:
        raise InvalidInputError(f"sample fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return x, y
    _, x_sample, _, y_sample = train_test_split(
        x, y, test_size=fraction, stratify=y, random_state=seed
    )
    return x_sample, y_sample


def normalize(images: Images) -> NDArray[np.float32]:
    """uint8 → float32 in [0, 1], with a channel axis for grayscale images."""
    scaled = images.astype(np.float32) / np.float32(255.0)
    return scaled[..., np.newaxis] if scaled.ndim == 3 else scaled


def prepare(
    name: str,
    data_dir: Path | None,
    *,
    sample_fraction: float = 1.0,
    validation_fraction: float = 0.1,
    seed: int = 42,
) -> PreparedData:
    """Load, sample train and test per class, and carve a validation split from train.

    Model selection and early stopping use only the validation split; the test
    split is kept for the final report.
    """
    info = dataset_info(name)
    raw = load_raw(name, data_dir)
    x_train, y_train = stratified_sample(raw.x_train, raw.y_train, sample_fraction, seed)
    x_test, y_test = stratified_sample(raw.x_test, raw.y_test, sample_fraction, seed)
    x_fit, x_validation, y_fit, y_validation = train_test_split(
        x_train, y_train, test_size=validation_fraction, stratify=y_train, random_state=seed
    )
    return PreparedData(
        info=info,
        train=Split(normalize(x_fit), y_fit),
        validation=Split(normalize(x_validation), y_validation),
        test=Split(normalize(x_test), y_test),
        source=raw.source,
    )
