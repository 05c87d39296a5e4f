"""Which precision trains faster on this CPU: measured once per machine, remembered.

A CPU flag says bfloat16 is native, not that it is faster. On a 2-core AMD EPYC
with AVX-512-BF16, mixed bfloat16 trained the lab's models faster than float32; on
a 2-core Intel Xeon with the same flag (and no AMX) it was 1.55-1.63x *slower*
(``docs/benchmarks.md``). So where the CPU has a native bfloat16 flag, a few
training steps of a small convolutional network are timed in each precision, in
a child process set up as a worker is, and the faster one is kept. Where the flag
is absent, bfloat16 is emulated and float32 wins without measuring.

The answer is stored under the user's cache directory, keyed by everything it
depends on (CPU model and flags, core count, TensorFlow version, kernel settings),
so a machine measures once, and a changed machine or library measures again.

    python -m trainer.precision            # this machine's verdict (measured if new)
    python -m trainer.precision --again    # measure again, replacing the stored one
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from trainer.files import write_json_atomically
from trainer.kernels import ONEDNN_VARIABLE, cpu_feature_flags, training_environment

NATIVE_BFLOAT16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# bfloat16 must win clearly: float32 is exact and the default elsewhere, and a
# couple of percent is within what a busy machine adds to a short measurement.
REQUIRED_SPEEDUP = 1.1
PROBE_TIMEOUT_SECONDS = 300
# oneDNN's instruction-set cap: AVX512_CORE_BF16 on an AMX Xeon leaves AMX aside and
# computes bfloat16 as a Xeon without AMX does, 0.70x as fast as float32 where AMX
# made it 3x as fast (docs/benchmarks.md). A capped machine trains as another CPU.
ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one measurement, as the cache file stores it."""

    use_bfloat16: bool
    float32_step_milliseconds: float | None
    bfloat16_step_milliseconds: float | None
    reason: str


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has AMX or AVX-512 BF16, per /proc/cpuinfo."""
    return not cpu_feature_flags().isdisjoint(NATIVE_BFLOAT16_FLAGS)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _tensorflow_version() -> str:
    for distribution in ("tensorflow-cpu", "tensorflow"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def machine_key() -> str:
    """A short digest of everything the verdict depends on."""
    facts = [
        _cpu_model(),
        " ".join(sorted(flag for flag in cpu_feature_flags() if flag.startswith("amx"))),
        " ".join(sorted(flag for flag in cpu_feature_flags() if flag.startswith("avx512"))),
        str(os.cpu_count()),
        _tensorflow_version(),
        training_environment().get(ONEDNN_VARIABLE, ""),
        # Only when set, so that an uncapped machine keeps the key it measured under.
        *(f"{name}={os.environ[name]}" for name in ONEDNN_ISA_VARIABLES if os.environ.get(name)),
    ]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def cache_file() -> Path:
    """Where verdicts live: $XDG_CACHE_HOME/daciavision (default ~/.cache/daciavision)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "daciavision" / "precision.json"


def _read_cache(path: Path) -> dict[str, dict[str, object]]:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def _stored_verdict(path: Path, key: str) -> Verdict | None:
    entry = _read_cache(path).get(key)
    if not isinstance(entry, dict):
        return None
    try:
        return Verdict(**entry)  # type: ignore[arg-type]
    except TypeError:  # written by another release: measure again
        return None


def _store(path: Path, key: str, verdict: Verdict) -> None:
    cached = _read_cache(path)
    cached[key] = asdict(verdict)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, cached)
    except OSError:
        pass  # a read-only home measures again next time; training goes on


def _measure_in_child() -> Verdict:
    # A child process: TensorFlow fixes its kernels when it loads, and the probe's
    # graphs, variables and random draws must not touch the process that trains.
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "trainer.precision", "--child"],
            env=training_environment(),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=True,
        )
        return Verdict(**json.loads(completed.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, TypeError) as error:
        return Verdict(False, None, None, f"the measurement failed ({error}); float32 is safe")


@functools.cache
def preferred_verdict() -> Verdict:
    """This machine's verdict: from the cache, or measured now and stored."""
    if not cpu_has_native_bfloat16():
        return Verdict(False, None, None, "the CPU has no native bfloat16 (AMX, AVX-512 BF16)")
    path, key = cache_file(), machine_key()
    verdict = _stored_verdict(path, key)
    if verdict is not None:
        return verdict
    with _measuring_alone(path):
        # Another process may have measured while this one waited for the lock.
        verdict = _stored_verdict(path, key)
        if verdict is None:
            verdict = _measure_in_child()
            if verdict.float32_step_milliseconds is not None:
                _store(path, key, verdict)  # a failure is not a fact about the machine
    return verdict


@contextlib.contextmanager
def _measuring_alone(path: Path) -> Iterator[None]:
    # Two workers starting together on a new machine would measure at once, each
    # slowing the other; the second waits and reads the first one's verdict.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.with_suffix(".lock").open("a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def bfloat16_trains_faster() -> bool:
    """Whether mixed bfloat16 is this machine's faster training precision."""
    return preferred_verdict().use_bfloat16


def _step_milliseconds(policy: str, steps: int, rounds: int) -> list[float]:
    """Per-step times of a small lab-like CNN training on batch 64 of 32x32x3 images."""
    import keras
    import numpy as np

    from trainer.architectures.base import conv_block

    dtype = "mixed_bfloat16" if policy == "bfloat16" else None
    inputs = keras.Input((32, 32, 3))
    x = conv_block(inputs, 64, 3, True, f"{policy}_conv1", dtype)
    x = conv_block(x, 128, 3, True, f"{policy}_conv2", dtype)
    x = keras.layers.MaxPooling2D(dtype=dtype, name=f"{policy}_pool")(x)
    x = conv_block(x, 256, 3, True, f"{policy}_conv3", dtype)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name=f"{policy}_gap")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name=f"{policy}_out")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    generator = np.random.default_rng(0)
    images = generator.random((64, 32, 32, 3), dtype=np.float32)
    labels = generator.integers(0, 10, 64)
    for _ in range(3):  # the first calls trace and pick kernels
        model.train_on_batch(images, labels)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, labels)
        times.append(1000 * (time.perf_counter() - started) / steps)
    return times


def measure(steps: int = 5, rounds: int = 3) -> Verdict:
    """Time both precisions in this process, the fastest round of each."""
    float32 = min(_step_milliseconds("float32", steps, rounds))
    bfloat16 = min(_step_milliseconds("bfloat16", steps, rounds))
    ratio = float32 / bfloat16
    faster = ratio >= REQUIRED_SPEEDUP
    return Verdict(
        use_bfloat16=faster,
        float32_step_milliseconds=round(float32, 2),
        bfloat16_step_milliseconds=round(bfloat16, 2),
        reason=f"bfloat16 steps ran {ratio:.2f}x as fast as float32 "
        f"({'at least' if faster else 'under'} the {REQUIRED_SPEEDUP}x required)",
    )


def main(arguments: list[str]) -> None:
    if arguments == ["--child"]:
        print(json.dumps(asdict(measure())))
        return
    if arguments == ["--again"] and cpu_has_native_bfloat16():
        _store(cache_file(), machine_key(), _measure_in_child())
    verdict = preferred_verdict()
    print(json.dumps({"cpu": _cpu_model(), **asdict(verdict)}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
