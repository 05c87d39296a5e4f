"""The raw limit: the model called in-process, the ceiling any server can approach."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import PROJECT_ROOT, CpuMeter
from bench.serving.workload import BATCH_IMAGES

# An idle server's model call follows a pause (the rest of the request's round trip):
# the batch-1 call is also timed after a pause this long, for target 7's context.
PAUSE_SECONDS = 0.001


def _traced(model_path: Path, images_path: Path, intra_op_threads: int) -> tuple[Any, Any, Any]:
    """The model, the test images and its traced pass as the service calls it
    (``service.inference``: a concrete function per batch size, traced and warmed here,
    before any clock starts)."""
    import keras

    from service.inference import CompiledModel, limit_intra_op_threads

    limit_intra_op_threads(intra_op_threads)
    model = keras.saving.load_model(model_path, compile=False)
    images = np.load(images_path)
    forward = CompiledModel(model, images.shape[1:], max_batch_size=256)
    forward.warm()
    return model, images, forward


def _median_seconds(call: Any, batch: np.ndarray, budget: float, pause: float = 0.0) -> float:
    """The median seconds of ``call(batch)`` over ``budget`` seconds (at least 5 calls)."""
    call(batch)  # trace and warm
    call(batch)
    samples: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < budget or len(samples) < 5:
        if pause:
            time.sleep(pause)
        begin = time.perf_counter()
        np.asarray(call(batch))
        samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def measure_raw(model_path: Path, images_path: Path, intra_op_threads: int = 0) -> dict[str, float]:
    """The model called in-process: a traced forward pass per batch size, and model.predict.

    The traced pass is the fastest way to call a Keras model here, so the raw limit is
    as high as it can be. With ``intra_op_threads`` (as the service sets them) only the
    traced pass is measured.
    """
    model, images, forward = _traced(model_path, images_path, intra_op_threads)
    figures: dict[str, float] = {}

    def predict(batch: np.ndarray) -> Any:
        return model.predict(batch, verbose=0, batch_size=len(batch))

    one = images[:1]
    figures["batch1_ms"] = _median_seconds(forward, one, 3.0) * 1000
    figures["batch1_after_pause_ms"] = (
        _median_seconds(forward, one, 2.0, pause=PAUSE_SECONDS) * 1000
    )
    if not intra_op_threads:
        figures["batch1_predict_ms"] = _median_seconds(predict, one, 3.0) * 1000
    for size in (BATCH_IMAGES, 256):
        figures[f"batch{size}_images_per_second"] = measure_batch_with(forward, images, size)
        if not intra_op_threads:
            batch = np.resize(images, (size, *images.shape[1:]))
            figures[f"batch{size}_predict_images_per_second"] = size / _median_seconds(
                predict, batch, 3.0
            )
    return figures


def measure_batch_with(forward: Any, images: np.ndarray, size: int) -> float:
    """Images/s of ``forward`` on ``size`` of the images (repeated as needed)."""
    batch = np.resize(images, (size, *images.shape[1:]))
    return size / _median_seconds(forward, batch, 5.0)


# The traced pass on one intra-op thread, as the service runs it by default; its
# figures are stored under this prefix beside those on TensorFlow's default threads.
ONE_THREAD = "one_thread_"


def run_raw(model_path: Path, images_path: Path) -> tuple[dict[str, float], CpuMeter]:
    """measure_raw in processes of their own, so this one never holds TensorFlow's threads:
    once on TensorFlow's default threads and once on one intra-op thread."""
    code = (
        "import json, sys; from pathlib import Path; from bench.serving.raw import measure_raw; "
        "print(json.dumps(measure_raw(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))))"
    )
    figures: dict[str, float] = {}
    with CpuMeter() as meter:
        for threads, prefix in ((0, ""), (1, ONE_THREAD)):
            output = subprocess.run(
                [sys.executable, "-c", code, str(model_path), str(images_path), str(threads)],
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            measured = json.loads(output.strip().splitlines()[-1])
            figures |= {prefix + key: value for key, value in measured.items()}
    return figures, meter


def measure_batch(model_path: Path, images_path: Path, intra_op_threads: int, size: int) -> float:
    """Images/s of the traced pass at ``size``, timed as ``measure_raw`` times it."""
    _, images, forward = _traced(model_path, images_path, intra_op_threads)
    return measure_batch_with(forward, images, size)


def measure_batch1_ms(model_path: Path, images_path: Path, intra_op_threads: int) -> float:
    """Milliseconds of the traced batch-1 call in a tight loop, as ``measure_raw`` times it."""
    _, images, forward = _traced(model_path, images_path, intra_op_threads)
    return _median_seconds(forward, images[:1], 3.0) * 1000


def _on_both_thread_settings(
    measurement: str, model_path: Path, images_path: Path, *extra: int
) -> list[float]:
    """``measurement(model_path, images_path, threads, *extra)`` from this module, once on
    TensorFlow's default threads and once on one intra-op thread, each in a process of
    its own (so that this one never holds TensorFlow's threads)."""
    code = (
        f"import sys; from pathlib import Path; from bench.serving.raw import {measurement}; "
        f"print({measurement}(Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:])))"
    )
    figures = []
    for threads in (0, 1):
        output = subprocess.run(
            [sys.executable, "-c", code, str(model_path), str(images_path),
             *map(str, (threads, *extra))],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        figures.append(float(output.strip().splitlines()[-1]))
    return figures


def run_raw_batch(model_path: Path, images_path: Path, size: int) -> float:
    """The traced pass's images/s at ``size``, the faster of the two thread settings, each
    in a process of its own. ``model.predict``, the third way ``run_raw`` times, is left
    out: it is 10–30× slower at batch 64 and never the fastest."""
    return max(_on_both_thread_settings("measure_batch", model_path, images_path, size))


def run_raw_batch1_ms(model_path: Path, images_path: Path) -> float:
    """The traced batch-1 call's milliseconds in a tight loop, the faster of the two
    thread settings, each in a process of its own: target 7's baseline, as
    ``raw_batch1_ms`` takes it from ``run_raw``."""
    return min(_on_both_thread_settings("measure_batch1_ms", model_path, images_path))


def _faster_batch1_setting(raw: dict[str, float]) -> str:
    """The key prefix of the thread setting whose tight-loop batch-1 call was faster."""
    return ONE_THREAD if raw[ONE_THREAD + "batch1_ms"] < raw["batch1_ms"] else ""


def raw_batch1_ms(raw: dict[str, float]) -> float:
    """The fastest batch-1 call of the model in-process, on either thread setting."""
    return raw[_faster_batch1_setting(raw) + "batch1_ms"]


def raw_batch1_after_pause_ms(raw: dict[str, float]) -> float:
    """The batch-1 call after a pause, on the thread setting ``raw_batch1_ms`` took."""
    return raw[_faster_batch1_setting(raw) + "batch1_after_pause_ms"]


def raw_images_per_second(raw: dict[str, float], size: int) -> float:
    """The most images/s of the model in-process at ``size``, by any way measured."""
    traced = f"batch{size}_images_per_second"
    return max(raw[traced], raw[ONE_THREAD + traced], raw[f"batch{size}_predict_images_per_second"])
