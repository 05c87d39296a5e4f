"""Issue 9, "also record": the peak memory of a process training each architecture.

Each architecture trains its own recipe for ``--epochs`` epochs on the lab's 25%
CIFAR-10 sample in a fresh child process, as a worker's training does
(``trainer.run.train_and_register`` into a temporary registry); the child's peak
resident set size comes from ``wait4``. A fresh process per architecture, so one
architecture's peak does not hide the next one's.

    flock /tmp/daciavision-bench.lock .venv/bin/python -m bench.training_memory
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import (
    CpuMeter,
    locked_command,
    publish,
    run_context,
    side_by_side_arguments,
)
from trainer.architectures import ARCHITECTURES
from trainer.spec import parse_training_spec
from trainer.study_presets import LAB_FRACTION, VARIATIONS

KEY = "training-memory"

# Runs in the child: train and register one spec, as a worker does.
CHILD = """
import json, sys
from pathlib import Path
from trainer.registry import FileModelRegistry
from trainer.run import train_and_register
from trainer.spec import parse_training_spec
body, data_dir, registry_dir = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
spec = parse_training_spec(body)
train_and_register(spec, data_dir=data_dir, registry=FileModelRegistry(registry_dir))
"""


def specs(epochs: int) -> list[tuple[str, dict[str, object]]]:
    common = {"dataset": "cifar10", "sample_fraction": LAB_FRACTION, "seed": 42, "epochs": epochs}
    chosen: list[tuple[str, dict[str, object]]] = [
        (f"custom_cnn {label}", {**common, "hyperparameters": hp.model_dump(exclude_none=True)})
        for label, hp in VARIATIONS
    ]
    for name in ARCHITECTURES:
        if name != "custom_cnn":
            chosen.append((name, {**common, "architecture": name}))
    return [(label, {**body, "model_name": "bench-memory"}) for label, body in chosen]


def peak_rss_mib(body: dict[str, object], data_dir: Path) -> tuple[float, float]:
    """The child's peak RSS in MiB and its wall seconds."""
    with tempfile.TemporaryDirectory(prefix="daciavision-memory-") as registry_dir:
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(body), str(data_dir), registry_dir],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise SystemExit(f"training {body} failed with exit code {child.returncode}")
        return usage.ru_maxrss / 1024, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = side_by_side_arguments(__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    args = parser.parse_args(argv)
    command = locked_command("bench.training_memory", argv)
    meter = CpuMeter()
    rows = []
    for label, body in specs(args.epochs):
        peak, seconds = peak_rss_mib(body, args.data_dir)
        print(f"{label}: peak RSS {peak:,.0f} MiB ({seconds:.0f} s)", flush=True)
        batch_size = parse_training_spec(body).batch_size
        rows.append(f"| {label} | {batch_size} | {peak:,.0f} |")
    cpu = meter.stop()
    body_text = f"""## Memory of a training process, per architecture

{run_context(cpu)}
- **Protocol:** each architecture's own recipe on the 25% CIFAR-10 sample, {args.epochs}
  epochs, in a fresh Python process that loads the data, trains, evaluates and
  registers the model as a worker does; peak resident set size of that process
  (`wait4`), TensorFlow and the dataset included.

| Architecture | Batch size | Peak RSS, MiB |
|---|---|---|
{chr(10).join(rows)}
"""
    publish(KEY, body_text, command, args)


if __name__ == "__main__":
    main()
