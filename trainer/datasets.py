"""Every dataset the service knows, each defined once.

The training spec's choices, the CLI's ``--dataset`` choices, the OpenAPI enum and
error messages all derive from ``DATASETS``. Adding a dataset means adding one
``DatasetDefinition`` here (and, if Keras cannot download it, a loader in
``trainer/data.py``). Free of NumPy and TensorFlow: the service imports it.
"""

from __future__ import annotations

import math
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
    test_images: int
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
            test_images=10_000,
            flip_safe=True,
            keras_loader="cifar10",
        ),
        DatasetDefinition(
            "mnist",
            "MNIST: 70,000 28×28 handwritten digits.",
            _DIGIT_NAMES,
            (28, 28, 1),
            train_images=60_000,
            test_images=10_000,
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
            test_images=10_000,
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
            test_images=360,
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


def check_split_sizes(name: str, sample_fraction: float, validation_fraction: float) -> None:
    """InvalidInputError unless each stratified split can hold one image of every class.

    Sampling and the validation split use scikit-learn's stratified split, as the lab
    did; it needs at least as many images on each side as there are classes, or the
    job would fail in the worker after waiting in the queue. Counts are the
    dataset's own (a smaller local copy can still fall short).
    """
    info = dataset_info(name)
    classes = info.num_classes
    if sample_fraction < 1:
        for split, total in (("training", info.train_images), ("test", info.test_images)):
            kept, left = _split(total, sample_fraction)
            if min(kept, left) < classes:
                low, high = classes / total, 1 - classes / total
                raise InvalidInputError(
                    f"sample_fraction {sample_fraction:g} keeps {kept} of the {total:,} "
                    f"{split} images of {name} and leaves {left}; each side needs at least "
                    f"one image of each of its {classes} classes: use 1, or a fraction from "
                    f"{low:.4g} to {high:.4g}",
                    field="body.sample_fraction",
                    received=sample_fraction,
                )
    sampled = (
        info.train_images
        if sample_fraction == 1
        else math.ceil(sample_fraction * info.train_images)
    )
    held_out, trained = _split(sampled, validation_fraction)
    if min(held_out, trained) < classes:
        raise InvalidInputError(
            f"validation_fraction {validation_fraction:g} holds out {held_out} of the "
            f"{sampled:,} sampled training images and trains on {trained}; each "
            f"side needs at least one image of each of the {classes} classes: use a fraction "
            f"from {classes / sampled:.4g} to {1 - classes / sampled:.4g}",
            field="body.validation_fraction",
            received=validation_fraction,
        )


def _split(total: int, fraction: float) -> tuple[int, int]:
    # The two sides of train_test_split(test_size=fraction), rounded as it rounds them.
    return math.ceil(fraction * total), math.floor((1 - fraction) * total)
