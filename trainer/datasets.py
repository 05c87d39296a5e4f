"""Every dataset the service knows, each defined once.

The training spec's choices, the CLI's ``--dataset`` choices, the OpenAPI enum and
error messages all derive from ``DATASETS``. Adding a dataset means adding one
``DatasetDefinition`` here (and, if Keras cannot download it, a loader in
``trainer/data.py``). Free of NumPy and TensorFlow: the service imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import InvalidInputError

_DIGIT_NAMES = tuple(str(digit) for digit in range(10))


@dataclass(frozen=True)
class DatasetDefinition:
    name: str
    description: str
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    # Images in the training split before sampling: what the resource budget scales by
    # (the test split is never trained on).
    train_images: int
    # A left-right flip turns a '2' into something that is not a digit.
    flip_safe: bool
    # keras.datasets.<name>, used when no local copy exists and the machine is online.
    keras_loader: str | None = None
    # Folders of idx files (MNIST's format) looked at after {data_dir}/{name}.npz and
    # {data_dir}/{name}/.
    idx_directories: tuple[Path, ...] = field(default_factory=tuple)
    # Bundled with a package and always available: no files to look for.
    bundled: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DATASETS: dict[str, DatasetDefinition] = {
    definition.name: definition
    for definition in (
        DatasetDefinition(
            "cifar10",
            "CIFAR-10: 60,000 32×32 colour photos in 10 classes.",
            ("airplane", "automobile", "bird", "cat", "deer",
             "dog", "frog", "horse", "ship", "truck"),
            (32, 32, 3),
            train_images=50_000,
            flip_safe=True,
            keras_loader="cifar10",
        ),
        DatasetDefinition(
            "mnist",
            "MNIST: 70,000 28×28 handwritten digits.",
            _DIGIT_NAMES,
            (28, 28, 1),
            train_images=60_000,
            flip_safe=False,
            keras_loader="mnist",
        ),
        DatasetDefinition(
            "fashion_mnist",
            "Fashion-MNIST: 70,000 28×28 photos of clothing in 10 classes.",
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            (28, 28, 1),
            train_images=60_000,
            flip_safe=True,
            keras_loader="fashion_mnist",
            # Debian's dataset-fashion-mnist package.
            idx_directories=(Path("/usr/share/datasets/fashion-mnist"),),
        ),
        DatasetDefinition(
            "digits",
            "scikit-learn's bundled 1,797 8×8 digits upscaled to 28×28: for smoke tests.",
            _DIGIT_NAMES,
            (28, 28, 1),
            # 80% of the 1,797 images (trainer/data.py holds out a stratified 20%).
            train_images=1_437,
            flip_safe=False,
            bundled=True,
        ),
    )
}  # fmt: skip

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def dataset_info(name: str) -> DatasetDefinition:
    """The definition of a dataset by name; InvalidInputError naming the choices if unknown."""
    try:
        return DATASETS[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}", dataset=name
        ) from None
