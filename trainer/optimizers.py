"""Keras' Adam, AdamW and momentum SGD, each variable's update in one TensorFlow kernel.

Keras 3 writes an optimizer's update as a dozen element-wise operations per variable
(Adam: the two moments, their corrections, the square root, the division, the
assignments), and TensorFlow runs each as a separate kernel that reads and writes the
whole variable. TensorFlow's ``ResourceApplyAdam`` and ``ResourceApplyKerasMomentum``
do the same update in one pass. On the lab's 64/128/256 CNN in float32 on an AVX-512
EPYC, with its 2.1 million weights in one dense layer, that made the whole training
step 1.15× as fast and 32/64/128's 1.2–1.4×; alexnet's, with 0.6 million weights,
ran as fast as before (docs/benchmarks.md, target 4).

The arithmetic is Keras': the same formulas, so the weights after training agree
with Keras' optimizers to float32 rounding (``tests/test_optimizers.py``). What the
kernels do not cover (AMSGrad, sparse gradients) runs Keras' own update. Weight decay
is applied by Keras' base optimizer before the update, as for the classes these extend.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="daciavision")
class FusedAdam(keras.optimizers.Adam):  # type: ignore[misc]
    """``keras.optimizers.Adam`` whose per-variable update is ``ResourceApplyAdam``."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            super().update_step(gradient, variable, learning_rate)
            return
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


@keras.saving.register_keras_serializable(package="daciavision")
class FusedAdamW(keras.optimizers.AdamW):  # type: ignore[misc]
    """``keras.optimizers.AdamW``: Keras' decoupled weight decay, then the fused update."""

    update_step = FusedAdam.update_step


@keras.saving.register_keras_serializable(package="daciavision")
class FusedSGD(keras.optimizers.SGD):  # type: ignore[misc]
    """``keras.optimizers.SGD`` whose momentum update is ``ResourceApplyKerasMomentum``.

    That kernel is Keras' formula, Nesterov's included:
    ``m = momentum·m − lr·g``, then ``w += m`` or, with Nesterov, ``w += momentum·m − lr·g``.
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self.momentum == 0 or isinstance(gradient, tf.IndexedSlices):
            super().update_step(gradient, variable, learning_rate)
            return
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=self.momentums[self._get_variable_index(variable)].handle,
            lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype),
            use_nesterov=self.nesterov,
        )
