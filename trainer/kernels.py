"""TensorFlow's CPU kernels for processes that train.

TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512-VNNI,
AVX-512-BF16 or AMX. On AVX2-only CPUs it falls back to Eigen's, which train the
lab's convolutional models markedly slower (``bench/lab_throughput.py`` measures
both), so a process that trains turns oneDNN on. A process that serves does not:
on an AVX2-only EPYC oneDNN took 2.2 ms for the lab's CNN on one image where Eigen
took 1.2 ms, and single images are what ``/predict`` mostly sees.

TensorFlow reads the variable once, when it loads, so this must run before anything
imports it. A value the user set wins.
"""

from __future__ import annotations

import functools
import os
from collections.abc import MutableMapping
from pathlib import Path

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
# The CPU features for which TensorFlow enables oneDNN by default (IsMKLEnabled in
# tensorflow/core/util/util.cc), as /proc/cpuinfo names them.
ONEDNN_DEFAULT_FLAGS = (
    "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip


@functools.cache
def cpu_feature_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def onednn_is_tensorflows_default() -> bool:
    """Whether TensorFlow would enable oneDNN on this CPU without being asked."""
    return not cpu_feature_flags().isdisjoint(ONEDNN_DEFAULT_FLAGS)


def use_training_kernels(environment: MutableMapping[str, str] | None = None) -> None:
    """Ask for oneDNN unless the user chose (too late once TensorFlow has loaded)."""
    environment = os.environ if environment is None else environment
    environment.setdefault(ONEDNN_VARIABLE, "1")


def training_environment() -> dict[str, str]:
    """This process's environment as a child process that trains should get it."""
    environment = dict(os.environ)
    use_training_kernels(environment)
    return environment


def tensorflow_default_environment() -> dict[str, str]:
    """This process's environment with TensorFlow's own choice of kernels, as the lab ran."""
    environment = dict(os.environ)
    environment.pop(ONEDNN_VARIABLE, None)
    return environment
