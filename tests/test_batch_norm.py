"""The fused batch norm trains as Keras' BatchNormalization does, and is saved as it is."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.batch_norm import FusedBatchNormalization

MOMENTUM = 0.6


def activations(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Channels with different means and scales, so a wrong axis or statistic shows.
    return (rng.normal(size=(16, 5, 5, 4)) * [1.0, 3.0, 0.5, 2.0] + [0.0, 2.0, -1.0, 5.0]).astype(
        np.float32
    )


def layer_pair(scale: bool) -> tuple[keras.layers.BatchNormalization, FusedBatchNormalization]:
    keras_layer = keras.layers.BatchNormalization(momentum=MOMENTUM, scale=scale)
    fused_layer = FusedBatchNormalization(momentum=MOMENTUM, scale=scale)
    for layer in (keras_layer, fused_layer):
        layer.build((None, 5, 5, 4))
    beta = np.array([0.1, -0.2, 0.3, 0.0], dtype=np.float32)
    keras_layer.beta.assign(beta)
    fused_layer.beta.assign(beta)
    if scale:
        gamma = np.array([1.5, 0.5, 1.0, 2.0], dtype=np.float32)
        keras_layer.gamma.assign(gamma)
        fused_layer.gamma.assign(gamma)
    return keras_layer, fused_layer


def outputs_and_gradients(
    layer: keras.layers.BatchNormalization, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    inputs = tf.constant(images)
    # A loss that weighs each output differently, so every gradient term matters.
    weights = tf.constant(np.linspace(-1, 1, images.size, dtype=np.float32).reshape(images.shape))
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=True)
        loss = tf.reduce_sum(outputs * weights)
    input_gradient, *weight_gradients = tape.gradient(loss, [inputs, *layer.trainable_variables])
    return outputs.numpy(), input_gradient.numpy(), [g.numpy() for g in weight_gradients]


@pytest.mark.parametrize("scale", [False, True])
def test_training_step_matches_keras_batch_norm(scale: bool) -> None:
    keras_layer, fused_layer = layer_pair(scale)
    images = activations()
    expected = outputs_and_gradients(keras_layer, images)
    actual = outputs_and_gradients(fused_layer, images)

    np.testing.assert_allclose(actual[0], expected[0], atol=1e-5)
    # The outputs are normalized: the check above would fail on raw inputs.
    assert np.abs(actual[0].mean(axis=(0, 1, 2)) - fused_layer.beta.numpy()).max() < 1e-4
    np.testing.assert_allclose(actual[1], expected[1], atol=1e-4)
    assert len(actual[2]) == len(expected[2]) == (2 if scale else 1)
    for fused_gradient, keras_gradient in zip(actual[2], expected[2], strict=True):
        np.testing.assert_allclose(fused_gradient, keras_gradient, rtol=1e-4, atol=1e-4)


def test_moving_statistics_follow_the_batch_with_the_layers_momentum() -> None:
    keras_layer, fused_layer = layer_pair(scale=False)
    images = activations()
    for _ in range(3):
        keras_layer(images, training=True)
        fused_layer(images, training=True)

    np.testing.assert_allclose(
        fused_layer.moving_mean.numpy(), keras_layer.moving_mean.numpy(), atol=1e-5
    )
    # Unbiased against Keras' biased variance: n / (n - 1) for n = 16 × 5 × 5 values,
    # on the part that came from the batches (the start value, 1, keeps momentum³).
    count = 16 * 5 * 5
    start_weight = MOMENTUM**3
    batch_part = (keras_layer.moving_variance.numpy() - start_weight) * count / (count - 1)
    expected_variance = start_weight + batch_part
    np.testing.assert_allclose(fused_layer.moving_variance.numpy(), expected_variance, rtol=1e-5)
    assert np.abs(fused_layer.moving_mean.numpy()).max() > 1, "the statistics must have moved"


def test_inference_uses_the_moving_statistics() -> None:
    _, fused_layer = layer_pair(scale=False)
    fused_layer.moving_mean.assign([1.0, 2.0, 3.0, 4.0])
    fused_layer.moving_variance.assign([4.0, 4.0, 4.0, 4.0])
    images = activations()

    outputs = np.asarray(fused_layer(images, training=False))

    expected = (images - [1.0, 2.0, 3.0, 4.0]) / np.sqrt(4.0 + fused_layer.epsilon)
    np.testing.assert_allclose(outputs, expected + fused_layer.beta.numpy(), atol=1e-5)


def test_bfloat16_activations_train_and_come_back_in_bfloat16() -> None:
    layer = FusedBatchNormalization(momentum=MOMENTUM, scale=False, dtype="mixed_bfloat16")
    images = activations()

    outputs = layer(images, training=True)

    assert outputs.dtype == tf.bfloat16
    assert layer.moving_mean.dtype == "float32"
    normalized = tf.cast(outputs, tf.float32).numpy()
    np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), 0, atol=0.02)
    np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), 1, atol=0.02)


def test_a_saved_model_loads_with_the_layer_and_predicts_the_same(tmp_path: Path) -> None:
    inputs = keras.Input((5, 5, 4))
    model = keras.Model(inputs, FusedBatchNormalization(momentum=MOMENTUM, name="bn")(inputs))
    model(activations(), training=True)  # moves the statistics away from their start
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)

    assert isinstance(loaded.get_layer("bn"), FusedBatchNormalization)
    images = activations(seed=4)
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))
