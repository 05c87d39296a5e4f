"""Data augmentation as Keras preprocessing layers, plus targeted oversampling.

The defaults are the lab's ImageDataGenerator settings: rotation ±15°,
width/height shift 10%, zoom 10% and horizontal flips where a flip keeps the
meaning (not for digits).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from numpy.typing import NDArray

from trainer.datasets import DatasetDefinition
from trainer.spec_base import AugmentationSpec


def flips(spec: AugmentationSpec, info: DatasetDefinition) -> bool:
    """Whether training flips images left-right: as asked, else where it keeps the class."""
    return info.flip_safe if spec.horizontal_flip is None else spec.horizontal_flip


def build_augmenter(spec: AugmentationSpec, info: DatasetDefinition, seed: int) -> keras.Sequential:
    """The random transforms of ``spec`` as one Keras model (applied with training=True).

    Alternating flips are not random, so the training input pipeline applies them.
    """
    transforms: list[layers.Layer] = []
    if flips(spec, info) and not spec.alternating_flip:
        transforms.append(layers.RandomFlip("horizontal", seed=seed))
    if spec.rotation_degrees:
        transforms.append(
            layers.RandomRotation(spec.rotation_degrees / 360.0, fill_mode="nearest", seed=seed)
        )
    if spec.width_shift or spec.height_shift:
        # Nearest-pixel sampling rounds each random shift to whole pixels: the image stays
        # sharp, as at test time, where a bilinear shift would blur it.
        whole = spec.whole_pixel_shifts
        transforms.append(
            layers.RandomTranslation(
                spec.height_shift,
                spec.width_shift,
                fill_mode="reflect" if whole else "nearest",
                interpolation="nearest" if whole else "bilinear",
                seed=seed,
            )
        )
    if spec.zoom:
        transforms.append(layers.RandomZoom(spec.zoom, fill_mode="nearest", seed=seed))
    if spec.cutout:
        transforms.append(RandomCutout(spec.cutout, seed=seed))
    return keras.Sequential(transforms, name="augmentation")


class RandomCutout(layers.Layer):  # type: ignore[misc]
    """Cutout (DeVries & Taylor, 2017): a random square of each image set to its mean colour.

    The square's side is ``size_fraction`` of the image's; its centre is anywhere
    in the image, so near an edge less is hidden, as in the paper. Only ever run
    in the training input pipeline, never saved with a model.
    """

    def __init__(self, size_fraction: float, seed: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.size_fraction = size_fraction
        self.seed = seed

    def call(self, images: tf.Tensor, training: bool = True) -> tf.Tensor:
        if not training:
            return images
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        side = tf.cast(tf.round(self.size_fraction * tf.cast(height, tf.float32)), tf.int32)
        # Both coordinates from one random op: inside a tf.data map (the training input
        # pipeline) two ops with one seed draw the same numbers, which put every square
        # on the image's diagonal.
        fractions = tf.random.uniform([2, batch, 1, 1], seed=self.seed)
        extents = tf.cast(tf.stack([height, width]), tf.float32)[
            :, tf.newaxis, tf.newaxis, tf.newaxis
        ]
        centre_y, centre_x = tf.unstack(tf.cast(fractions * extents, tf.int32))
        top, left = centre_y - side // 2, centre_x - side // 2
        rows = tf.range(height)[tf.newaxis, :, tf.newaxis]
        columns = tf.range(width)[tf.newaxis, tf.newaxis, :]
        hidden = (rows >= top) & (rows < top + side) & (columns >= left) & (columns < left + side)
        mean_colour = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        return tf.where(hidden[..., tf.newaxis], mean_colour, images)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "size_fraction": self.size_fraction, "seed": self.seed}


def oversample(
    images: NDArray[np.float32],
    labels: NDArray[np.int64],
    target_class_indices: Sequence[int],
    *,
    factor: int,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Repeat target-class samples ``factor`` times in all.

    Training augments every sample, the copies included, so each copy is a new view of
    its image rather than a duplicate. Every class is augmented, not only the targets:
    a cnn-lab run that augmented cat, bird and dog alone saw their test recall fall
    from 0.52-0.60 to 0.28-0.37 (docs/benchmarks.md), as the transforms themselves had
    become a sign of those classes, which clean test images never show.
    """
    is_target = np.isin(labels, np.asarray(target_class_indices, dtype=np.int64))
    extra = np.repeat(np.flatnonzero(is_target), max(0, factor - 1))
    if not len(extra):
        return images, labels
    return np.concatenate([images, images[extra]]), np.concatenate([labels, labels[extra]])
