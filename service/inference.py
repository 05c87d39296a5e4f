"""A model's forward pass traced once per batch size, so serving never retraces.

Calling a Keras model directly costs milliseconds of Python per call (layer
bookkeeping, argument checks), and ``model.predict`` retraces for every new batch
size. Instead the forward pass is traced as one ``tf.function`` with a concrete
function per *bucket*: the powers of two up to the largest batch, plus that
largest batch itself. A batch is padded with zeros to the next bucket and the
padding rows are dropped from the answer; a batch larger than the largest bucket
runs in chunks. Every bucket is traced and run once at load (``warm``), so the
first request of any size meets a ready graph.

On the 2-core AVX2 machine the benchmarks ran on, the traced graph without XLA
was the fastest overall (``docs/benchmarks.md``): about 5× faster than the eager
call for one image and 1.5–3× for 64; XLA (``jit_compile``) was faster for a
single image but slower for batches of 4 and more, so it is a setting.

Each model call runs on one TensorFlow intra-op thread by default
(``limit_intra_op_threads``): on 2 cores a call split over both threads took 2.4× as
long for one image and 1.8–2.8× for 2 to 8, and only 13% less for 64 (AMD EPYC,
``docs/benchmarks.md``). The batcher's threads run calls side by side instead, so the
cores stay busy under load while a lone small request pays no synchronisation.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

Batch = NDArray[np.float32]

logger = logging.getLogger(__name__)


@functools.cache
def limit_intra_op_threads(threads: int) -> None:
    """Let each TensorFlow op of this process use at most ``threads`` threads (0: all cores).

    Process-wide, and fixed once TensorFlow has run its first op: call it before the
    first model loads. Cached: the outcome is fixed after the first call, so later
    loads neither check again nor repeat the warning. Not through
    ``TF_NUM_INTRAOP_THREADS``, which the workers a serving process starts would
    inherit and train on one core.
    """
    import tensorflow as tf

    if threads == 0 or tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran in this process, e.g. it trained here
        logger.warning(
            "TensorFlow is already running with %d intra-op threads; keeping them, not %d",
            tf.config.threading.get_intra_op_parallelism_threads(),
            threads,
        )


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Batch sizes traced for a model: 1, 2, 4, … below the maximum, and the maximum."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


class CompiledModel:
    """Class probabilities from a Keras model through one traced graph per bucket size."""

    def __init__(
        self,
        model: Any,
        input_shape: tuple[int, int, int],
        max_batch_size: int,
        *,
        jit_compile: bool = False,
    ) -> None:
        import tensorflow as tf  # deferred, as in the model cache: only serving processes

        self.input_shape = input_shape
        self.buckets = bucket_sizes(max_batch_size)
        self.max_batch_size = self.buckets[-1]

        # training=False pins dropout and batch norm to inference behaviour in the graph.
        def forward(images: Any) -> Any:
            return model(images, training=False)

        traced = tf.function(forward, jit_compile=jit_compile)
        # Concrete functions skip tf.function's per-call argument matching as well.
        self._functions = {
            size: traced.get_concrete_function(tf.TensorSpec((size, *input_shape), tf.float32))
            for size in self.buckets
        }
        self._to_tensor = tf.convert_to_tensor

    def warm(self) -> None:
        """Run every bucket once: the first real call of each size then costs no setup."""
        for size in self.buckets:
            self._run_bucket(np.zeros((size, *self.input_shape), dtype=np.float32))

    def __call__(self, batch: Batch) -> Batch:
        """Probabilities (N, num_classes) for a float32 batch (N, H, W, C)."""
        if len(batch) <= self.max_batch_size:
            return self._run_bucket(batch)
        chunks = [
            self._run_bucket(batch[start : start + self.max_batch_size])
            for start in range(0, len(batch), self.max_batch_size)
        ]
        return np.concatenate(chunks)

    def _run_bucket(self, batch: Batch) -> Batch:
        count = len(batch)
        size = next(size for size in self.buckets if size >= count)
        if size != count:
            padding = np.zeros((size - count, *self.input_shape), dtype=np.float32)
            batch = np.concatenate([batch, padding])
        probabilities = self._functions[size](self._to_tensor(batch, dtype="float32"))
        return np.asarray(probabilities, dtype=np.float32)[:count]
