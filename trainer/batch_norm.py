"""Batch normalization that trains through TensorFlow's fused kernel: same math, fewer ops.

Keras 3 normalizes a batch with a dozen element-wise operations per layer (moments,
casts, the scale and shift) and as many again in the gradient, each a separate
TensorFlow kernel over the whole activation. TensorFlow's ``FusedBatchNormV3`` does
the forward pass in one kernel and the gradient in another, oneDNN's where it is on.
A traced profile of ``whitened_cnn``'s bfloat16 training step on an AMX Xeon showed
the element-wise operations taking more time than the convolutions; with this layer
the step ran 1.25–1.37× as fast (docs/benchmarks.md).

Inference, and whatever the fused kernel does not cover (masks, renormalization,
synchronized statistics, anything but 4-D channels-last input), runs Keras' own code,
so a saved model computes exactly as a ``BatchNormalization`` with the same weights.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="daciavision")
class FusedBatchNormalization(layers.BatchNormalization):  # type: ignore[misc]
    """``keras.layers.BatchNormalization`` whose training step is one fused kernel.

    The moving variance is updated with the unbiased batch variance (``n / (n - 1)``
    times Keras' biased one), as TensorFlow's fused kernel and Keras 2 did: with
    ``n`` the images times the pixels of a batch, a difference under 0.01% here.

    ``bias_gradient_scale`` multiplies the gradient that reaches ``beta`` in training.
    With SGD that is a learning rate ``bias_gradient_scale`` times the others' for the
    biases alone, which Keras' optimizers cannot give one variable: airbench's 64× cut
    its epochs to 94% from 18 to 13.5. The forward pass and a saved model are unchanged.
    """

    def __init__(self, *args: Any, bias_gradient_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bias_gradient_scale = bias_gradient_scale

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bias_gradient_scale": self.bias_gradient_scale}

    def _fused_applies(self, inputs: Any, training: bool | None, mask: Any) -> bool:
        return bool(
            training
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if not self._fused_applies(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        # The kernel takes bfloat16 or float32 activations with float32 statistics.
        offset = (
            _with_scaled_gradient(self.beta, self.bias_gradient_scale)
            if self.center
            else tf.zeros_like(self.moving_mean)
        )
        scale = self.gamma if self.scale else tf.ones_like(self.moving_mean)
        outputs, moving_mean, moving_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=tf.convert_to_tensor(scale, tf.float32),
            offset=tf.convert_to_tensor(offset, tf.float32),
            mean=tf.convert_to_tensor(self.moving_mean, tf.float32),
            variance=tf.convert_to_tensor(self.moving_variance, tf.float32),
            epsilon=self.epsilon,
            # With a factor below 1 the kernel returns the updated moving statistics.
            exponential_avg_factor=1.0 - self.momentum,
            data_format="NHWC",
            is_training=True,
        )
        self.moving_mean.assign(moving_mean)
        self.moving_variance.assign(moving_variance)
        return tf.cast(outputs, self.compute_dtype)


def _with_scaled_gradient(variable: Any, factor: float) -> tf.Tensor:
    """``variable``'s value, through which the gradient flows multiplied by ``factor``."""
    value = tf.convert_to_tensor(variable)
    if factor == 1.0:
        return value

    @tf.custom_gradient  # type: ignore[untyped-decorator]
    def identity(tensor: tf.Tensor) -> Any:
        return tf.identity(tensor), lambda upstream: upstream * factor

    return identity(value)
