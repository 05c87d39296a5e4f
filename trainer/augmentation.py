"""Data augmentation as Keras preprocessing layers, plus targeted oversampling.

The defaults are the lab's ImageDataGenerator settings: rotation ±15°,
width/height shift 10%, zoom 10% and horizontal flips where a flip keeps the
meaning (not for digits).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers
from numpy.typing import NDArray

from trainer.datasets import DatasetDefinition
from trainer.spec_base import AugmentationSpec


def build_augmenter(spec: AugmentationSpec, info: DatasetDefinition, seed: int) -> keras.Sequential:
    """The random transforms of ``spec`` as one Keras model (applied with training=True)."""
    flip = info.flip_safe if spec.horizontal_flip is None else spec.horizontal_flip
    transforms: list[layers.Layer] = []
    if flip:
        transforms.append(layers.RandomFlip("horizontal", seed=seed))
    if spec.rotation_degrees:
        transforms.append(
            layers.RandomRotation(spec.rotation_degrees / 360.0, fill_mode="nearest", seed=seed)
        )
    if spec.width_shift or spec.height_shift:
        transforms.append(
            layers.RandomTranslation(
                spec.height_shift, spec.width_shift, fill_mode="nearest", seed=seed
            )
        )
    if spec.zoom:
        transforms.append(layers.RandomZoom(spec.zoom, fill_mode="nearest", seed=seed))
    return keras.Sequential(transforms, name="augmentation")


def oversample(
    images: NDArray[np.float32],
    labels: NDArray[np.int64],
    target_class_indices: Sequence[int],
    *,
    factor: int,
    augment_all: bool,
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.bool_]]:
    """Repeat target-class samples ``factor`` times and flag which samples to augment.

    Every sample of a target class is augmented (originals and copies), so the
    copies are new views rather than duplicates; other samples are augmented
    only when ``augment_all``.
    """
    is_target = np.isin(labels, np.asarray(target_class_indices, dtype=np.int64))
    extra = np.repeat(np.flatnonzero(is_target), max(0, factor - 1))
    all_images = np.concatenate([images, images[extra]]) if len(extra) else images
    all_labels = np.concatenate([labels, labels[extra]]) if len(extra) else labels
    flags = np.concatenate([is_target, np.ones(len(extra), dtype=bool)])
    if augment_all:
        flags = np.ones_like(flags)
    return all_images, all_labels, flags
