"""airbench's tricks for short schedules: alternating flips, lookahead, dirac starts, bias rates."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.architectures import build_model
from trainer.architectures.whitened_cnn import WhitenedCnnHyperparameters
from trainer.batch_norm import FusedBatchNormalization
from trainer.data import PreparedData, Split
from trainer.datasets import DATASETS
from trainer.lookahead import DECAY_PER_STEP, Lookahead
from trainer.spec import AnyTrainingSpec, parse_training_spec
from trainer.train import _EpochCounter, _training_dataset

IMAGES = 24
SIDE = 8


def _marked_images() -> PreparedData:
    """Images that say which they are and whether they are mirrored: one lit pixel each."""
    images = np.zeros((IMAGES, SIDE, SIDE, 3), np.float32)
    images[np.arange(IMAGES), np.arange(IMAGES) % SIDE, 0, 0] = 1.0 + np.arange(IMAGES)
    labels = np.arange(IMAGES) % 10
    split = Split(images, labels)
    return PreparedData(DATASETS["cifar10"], split, split, split, source="generated")


def _alternating_spec(alternating: bool, epochs: int) -> AnyTrainingSpec:
    return parse_training_spec(
        {
            "dataset": "cifar10",
            "epochs": epochs,
            "batch_size": 5,
            "augmentation": {
                "enabled": True,
                "rotation_degrees": 0,
                "width_shift": 0,
                "height_shift": 0,
                "zoom": 0,
                "alternating_flip": alternating,
            },
        }
    )


def _identity_and_flip(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    left = tf.reduce_max(images[:, :, 0, 0], axis=1)
    right = tf.reduce_max(images[:, :, SIDE - 1, 0], axis=1)
    return tf.cast(tf.maximum(left, right), tf.int32) - 1, right > 0


def _flips_per_epoch(alternating: bool, epochs: int) -> np.ndarray:
    """Which images each epoch flips, setting the epoch as the trainer's callback does."""
    epoch = tf.Variable(0, dtype=tf.int64)
    dataset = _training_dataset(_alternating_spec(alternating, epochs), _marked_images(), [], epoch)
    flipped = np.zeros((epochs, IMAGES), bool)
    for number in range(epochs):
        epoch.assign(number)
        seen = 0
        for images, _ in dataset:
            identity, mirrored = _identity_and_flip(images)
            flipped[number, identity.numpy()] = mirrored.numpy()
            seen += len(identity)
        assert seen == IMAGES
    return flipped


def test_alternating_flip_mirrors_each_image_every_other_epoch() -> None:
    flipped = _flips_per_epoch(alternating=True, epochs=4)
    assert 0 < flipped[0].sum() < IMAGES  # a random half to start with
    for epoch in range(1, 4):
        np.testing.assert_array_equal(flipped[epoch], ~flipped[epoch - 1])


def test_random_flip_does_not_alternate() -> None:
    flipped = _flips_per_epoch(alternating=False, epochs=4)
    alternations = [np.array_equal(flipped[e], ~flipped[e - 1]) for e in range(1, 4)]
    assert not all(alternations)


class _FlipRecorder(keras.Model):  # type: ignore[misc]
    """Records, per epoch actually trained, which images came mirrored (1 no, 2 yes)."""

    def __init__(self, steps_per_epoch: int, epochs: int) -> None:
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.dense = keras.layers.Dense(1)
        self.table = tf.Variable(tf.zeros([epochs, IMAGES], tf.int32), trainable=False)
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False)

    def call(self, images: tf.Tensor) -> tf.Tensor:
        return self.dense(tf.reshape(images, [tf.shape(images)[0], -1]))

    def train_step(self, data: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
        images, _ = data
        epoch = tf.cast(self.steps // self.steps_per_epoch, tf.int32)
        self.steps.assign_add(1)
        identity, mirrored = _identity_and_flip(images)
        indices = tf.stack([tf.fill(tf.shape(identity), epoch), identity], axis=1)
        self.table.scatter_nd_update(indices, tf.cast(mirrored, tf.int32) + 1)
        return {"steps": self.steps.value()}


def test_fit_feeds_each_epoch_its_own_flips_across_compiled_calls() -> None:
    # 5 batches per epoch, 8 steps per compiled call: the calls straddle epochs, and
    # Keras must still start each epoch's pass after the epoch counter moved.
    epochs = 4
    epoch = tf.Variable(0, dtype=tf.int64)
    dataset = _training_dataset(_alternating_spec(True, epochs), _marked_images(), [], epoch)
    model = _FlipRecorder(steps_per_epoch=5, epochs=epochs)
    model.compile(steps_per_execution=8)
    model.fit(dataset, epochs=epochs, callbacks=[_EpochCounter(epoch)], shuffle=False, verbose=0)
    table = model.table.numpy()
    assert int(model.steps.numpy()) == epochs * 5
    assert (table > 0).all()  # every image seen in every epoch
    for number in range(1, epochs):
        np.testing.assert_array_equal(table[number], 3 - table[number - 1])


def _model() -> keras.Model:
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_lookahead_pulls_the_weights_towards_the_slow_copy_as_training_ends() -> None:
    model = _model()
    lookahead = Lookahead(total_steps=10)
    lookahead.set_model(model)
    lookahead.on_train_begin()
    start = [weight.numpy() for weight in model.weights]

    trained = [value + 1.0 for value in start]
    model.set_weights(trained)
    model.optimizer.iterations.assign(10)  # the last step: the decay is fully on
    lookahead.on_train_batch_end(0)
    decay = DECAY_PER_STEP**10
    for weight, before in zip(model.weights, start, strict=True):
        np.testing.assert_allclose(weight.numpy(), before + (1 - decay), rtol=1e-6)


def test_lookahead_leaves_early_steps_alone_and_hands_over_the_slow_weights() -> None:
    model = _model()
    lookahead = Lookahead(total_steps=1000)
    lookahead.set_model(model)
    lookahead.on_train_begin()
    moved = [weight.numpy() + 2.0 for weight in model.weights]
    model.set_weights(moved)
    model.optimizer.iterations.assign(8)  # progress 0.008: a decay of about 5e-7
    lookahead.on_train_batch_end(0)
    for weight, expected in zip(model.weights, moved, strict=True):
        np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-5)

    model.set_weights([value + 5.0 for value in moved])
    lookahead.on_train_end()
    for weight, expected in zip(model.weights, moved, strict=True):
        np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("factor", [1.0, 64.0])
def test_bias_gradient_scale_multiplies_only_the_bias_gradient(factor: float) -> None:
    images = tf.random.stateless_normal((4, 5, 5, 3), seed=(1, 2))
    plain = FusedBatchNormalization(scale=False)
    scaled = FusedBatchNormalization(scale=False, bias_gradient_scale=factor)
    plain.build(images.shape)
    scaled.build(images.shape)

    def bias_gradient(layer: FusedBatchNormalization) -> tuple[np.ndarray, np.ndarray]:
        with tf.GradientTape() as tape:
            outputs = layer(images, training=True)
            loss = tf.reduce_sum(outputs * tf.range(3, dtype=tf.float32))
        return outputs.numpy(), tape.gradient(loss, layer.beta.value).numpy()

    plain_outputs, plain_gradient = bias_gradient(plain)
    scaled_outputs, scaled_gradient = bias_gradient(scaled)
    np.testing.assert_array_equal(scaled_outputs, plain_outputs)
    np.testing.assert_allclose(scaled_gradient, plain_gradient * factor, rtol=1e-6)
    assert np.abs(plain_gradient).max() > 0
    assert FusedBatchNormalization.from_config(scaled.get_config()).bias_gradient_scale == factor


def test_identity_init_starts_each_convolution_as_a_copy_of_its_inputs() -> None:
    hyperparameters = WhitenedCnnHyperparameters(
        group_filters=[8, 16], identity_init=True, bfloat16=False
    )
    model = build_model("whitened_cnn", hyperparameters, (32, 32, 3), 10)
    first = model.get_layer("group1_conv1").kernel.numpy()  # 24 whitened channels → 8
    expected = np.zeros((3, 3, 24, 8), np.float32)
    expected[1, 1, np.arange(8), np.arange(8)] = 1.0
    np.testing.assert_array_equal(first, expected)

    widening = model.get_layer("group2_conv1").kernel.numpy()  # 8 → 16: 8 copies, 8 random
    np.testing.assert_array_equal(widening[1, 1, :, :8], np.eye(8, dtype=np.float32))
    assert np.abs(widening[:, :, :, 8:]).max() > 0

    random = WhitenedCnnHyperparameters(group_filters=[8, 16], identity_init=False, bfloat16=False)
    random_start = build_model("whitened_cnn", random, (32, 32, 3), 10)
    assert not np.array_equal(random_start.get_layer("group1_conv1").kernel.numpy(), expected)


def test_a_fixed_whitening_bias_is_left_out_of_training() -> None:
    trained = build_model(
        "whitened_cnn",
        WhitenedCnnHyperparameters(group_filters=[8], train_whitening_bias=True, bfloat16=False),
        (8, 8, 3),
        10,
    )
    fixed = build_model(
        "whitened_cnn",
        WhitenedCnnHyperparameters(group_filters=[8], train_whitening_bias=False, bfloat16=False),
        (8, 8, 3),
        10,
    )
    bias_path = fixed.get_layer("whitening").bias.path
    assert bias_path in [variable.path for variable in trained.trainable_variables]
    assert bias_path not in [variable.path for variable in fixed.trainable_variables]
    assert len(fixed.trainable_variables) == len(trained.trainable_variables) - 1
