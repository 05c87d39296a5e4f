"""Test-time augmentation, built into the registered model.

A model trained with ``test_time_augmentation`` is registered wrapped: it classifies
each image as the mean of its predictions on a few transformed copies (the
original, its left-right mirror, one-pixel shifts). The copies are stacked along
the batch axis, so the wrapped network runs once per batch on a larger batch
rather than once per copy. Because the wrapper is part of the saved model,
``/predict``, the TF Serving routes, ``/metrics`` and the card's test figures all
see the same classifier — there is no second code path to keep in step.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

# (rows down, columns right, mirrored) for each copy; the first is the image itself.
_SHIFTS = ((1, 0, False), (-1, 0, False), (0, 1, False), (0, -1, False))
VIEWS: dict[str, tuple[tuple[int, int, bool], ...]] = {
    "flip": ((0, 0, False), (0, 0, True)),
    "shifts": ((0, 0, False), *_SHIFTS),
    "flip_and_shifts": (
        (0, 0, False),
        (0, 0, True),
        *_SHIFTS,
        *((down, right, True) for down, right, _ in _SHIFTS),
    ),
}


def _shift(images: Any, down: int, right: int) -> Any:
    """Move the image by one pixel, repeating the edge into the uncovered border.

    Edge repetition is what the training augmentation's shifts do (fill_mode "nearest");
    for a one-pixel pad "symmetric" is exactly that, and unlike "edge" every backend
    has it.
    """
    height, width = images.shape[1], images.shape[2]
    padded = ops.pad(
        images,
        [[0, 0], [max(down, 0), max(-down, 0)], [max(right, 0), max(-right, 0)], [0, 0]],
        mode="symmetric",
    )
    top, left = max(-down, 0), max(-right, 0)
    return padded[:, top : top + height, left : left + width, :]


@keras.saving.register_keras_serializable(package="daciavision")
class TestTimeViews(layers.Layer):  # type: ignore[misc]
    """Stacks the transformed copies of a batch: (B, H, W, C) → (V·B, H, W, C)."""

    def __init__(self, views: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if views not in VIEWS:
            raise ValueError(f"unknown test-time views {views!r}; expected one of {list(VIEWS)}")
        self.views = views

    def call(self, images: Any) -> Any:
        copies = []
        for down, right, mirrored in VIEWS[self.views]:
            copy = ops.flip(images, axis=2) if mirrored else images
            if down or right:
                copy = _shift(copy, down, right)
            copies.append(copy)
        return ops.concatenate(copies, axis=0)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (None, *input_shape[1:])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "views": self.views}


@keras.saving.register_keras_serializable(package="daciavision")
class MeanOverViews(layers.Layer):  # type: ignore[misc]
    """Averages the class probabilities of the copies: (V·B, K) → (B, K)."""

    def __init__(self, view_count: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.view_count = view_count

    def call(self, probabilities: Any) -> Any:
        classes = probabilities.shape[-1]
        per_view = ops.reshape(probabilities, (self.view_count, -1, classes))
        return ops.mean(per_view, axis=0)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (None, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "view_count": self.view_count}


def view_count(model: keras.Model) -> int:
    """How many copies of each image ``model`` classifies: 1 unless it is wrapped."""
    for layer in model.layers:
        if isinstance(layer, TestTimeViews):
            return len(VIEWS[layer.views])
    return 1


def images_per_batch(model: keras.Model, network_inputs: int) -> int:
    """The images whose views make ``network_inputs`` inputs to the network, at least one.

    A wrapped model's network runs on every view of each image at once: 256 images with
    ten views held about 570 MiB more than training did (``whitened_cnn``).
    """
    return max(1, network_inputs // view_count(model))


def with_test_time_augmentation(model: keras.Model, views: str) -> keras.Model:
    """``model`` wrapped to average its predictions over the copies ``views`` names."""
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    stacked = TestTimeViews(views, name="test_time_views")(inputs)
    outputs = MeanOverViews(len(VIEWS[views]), name="mean_over_views")(model(stacked))
    return keras.Model(inputs, outputs, name=f"{model.name}_with_{views}")
