"""The fused optimizers train as Keras' own do, and their updates are single kernels."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.optimizers import FusedAdam, FusedAdamW, FusedSGD

TOLERANCE = 2e-5

OptimizerPair = tuple[Callable[[], keras.optimizers.Optimizer], Callable[[], object]]

PAIRS: dict[str, OptimizerPair] = {
    "adam": (lambda: keras.optimizers.Adam(1e-2), lambda: FusedAdam(1e-2)),
    "adamw": (
        lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.05),
        lambda: FusedAdamW(1e-2, weight_decay=0.05),
    ),
    "adam with a schedule": (
        lambda: keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-2, 24)),
        lambda: FusedAdam(keras.optimizers.schedules.CosineDecay(1e-2, 24)),
    ),
    "sgd nesterov with weight decay": (
        lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=5e-3),
        lambda: FusedSGD(0.05, momentum=0.9, nesterov=True, weight_decay=5e-3),
    ),
    "sgd momentum": (
        lambda: keras.optimizers.SGD(0.05, momentum=0.8),
        lambda: FusedSGD(0.05, momentum=0.8),
    ),
    "sgd without momentum": (
        lambda: keras.optimizers.SGD(0.05),
        lambda: FusedSGD(0.05),
    ),
    "amsgrad": (
        lambda: keras.optimizers.Adam(1e-2, amsgrad=True),
        lambda: FusedAdam(1e-2, amsgrad=True),
    ),
}


def small_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    images = rng.random((96, 6, 6, 2), dtype=np.float32)
    labels = (images[:, :3].mean(axis=(1, 2, 3)) > images[:, 3:].mean(axis=(1, 2, 3))).astype(
        np.int64
    )
    return images, labels


def trained_weights(optimizer: object) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Initial and trained weights of a small CNN after 3 epochs of 12 steps."""
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    initial = [weight.numpy().copy() for weight in model.weights]
    model.compile(optimizer, "sparse_categorical_crossentropy", steps_per_execution=4)
    images, labels = small_data()
    model.fit(images, labels, batch_size=8, epochs=3, shuffle=False, verbose=0)
    return initial, [weight.numpy() for weight in model.weights]


@pytest.mark.parametrize("name", list(PAIRS))
def test_fused_optimizer_trains_as_keras_does(name: str) -> None:
    make_keras, make_fused = PAIRS[name]
    initial, expected = trained_weights(make_keras())
    _, actual = trained_weights(make_fused())
    # Every weight moved far beyond the tolerance, so a wrong update would show.
    moved = [np.abs(after - before).max() for after, before in zip(expected, initial, strict=True)]
    assert min(moved) > 50 * TOLERANCE and max(moved) > 1000 * TOLERANCE
    for keras_weight, fused_weight in zip(expected, actual, strict=True):
        np.testing.assert_allclose(fused_weight, keras_weight, rtol=0, atol=TOLERANCE)


def _update_kernels(optimizer: keras.optimizers.Optimizer) -> set[str]:
    variable = keras.Variable(np.ones((4, 3), dtype=np.float32))
    optimizer.build([variable])
    gradient = tf.constant(np.full((4, 3), 0.5, dtype=np.float32))
    apply = tf.function(lambda: optimizer.apply([gradient], [variable]))
    graph = apply.get_concrete_function().graph
    # Ops of nested functions (Keras traces parts of apply) count too.
    functions = graph.as_graph_def().library.function
    names = {node.op for node in graph.as_graph_def().node}
    names |= {node.op for function in functions for node in function.node_def}
    return names


@pytest.mark.parametrize(
    ("optimizer", "kernel"),
    [
        (FusedAdam(1e-3), "ResourceApplyAdam"),
        (FusedAdamW(1e-3, weight_decay=0.01), "ResourceApplyAdam"),
        (FusedSGD(0.1, momentum=0.9, nesterov=True), "ResourceApplyKerasMomentum"),
    ],
    ids=["adam", "adamw", "sgd"],
)
def test_each_variable_is_updated_by_one_kernel(
    optimizer: keras.optimizers.Optimizer, kernel: str
) -> None:
    names = _update_kernels(optimizer)
    assert kernel in names
    # Keras' element-wise update would read the moments' values and square roots.
    assert "Sqrt" not in names
