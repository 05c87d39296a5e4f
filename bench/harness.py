"""Run one benchmark: train and register a spec, print its figures, record them in the docs.

Each benchmark owns one section of ``docs/benchmarks.md``, fenced by HTML
comments, so that re-running a benchmark replaces its own figures and leaves
the rest of the page alone.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from trainer.card import ModelCard
from trainer.kernels import cpu_feature_flags, training_environment
from trainer.progress import EpochProgress
from trainer.registry import FileModelRegistry
from trainer.run import RegisteredModel, train_and_register
from trainer.spec import AnyTrainingSpec

Result = TypeVar("Result")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"
DEFAULT_DOC = PROJECT_ROOT / "docs" / "benchmarks.md"
DOC_HEADER = """# Benchmarks

Figures measured by the scripts in `bench/`; each script rewrites its own section.
Fit wall time is `model.fit` only (no data loading, evaluation or saving). Test
figures are on the 2,500-image test sample, which nothing in training looks at.
"""


def require_hey() -> None:
    """Stop with a clear message, before any training, when the load generator is missing."""
    if shutil.which("hey") is None:
        raise SystemExit(
            "hey is missing: install Debian's package with `apt-get install -y hey` (as root)"
        )


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="Directory holding cifar10.npz (default: %(default)s).",
    )
    parser.add_argument(
        "--registry-dir",
        type=Path,
        default=None,
        help="Register the trained model here (default: a temporary directory, removed after).",
    )
    parser.add_argument(
        "--doc", type=Path, default=DEFAULT_DOC, help="Markdown file to update (%(default)s)."
    )
    parser.add_argument("--no-doc", action="store_true", help="Print the figures only.")
    return parser.parse_args(argv)


def print_epoch(record: EpochProgress) -> None:
    learning_rate = "" if record.learning_rate is None else f"  lr {record.learning_rate:.2e}"
    print(
        f"epoch {record.epoch:3d}/{record.epochs}  loss {record.loss:.4f}  "
        f"accuracy {record.accuracy:.4f}  val_loss {record.val_loss or 0:.4f}  "
        f"val_accuracy {record.val_accuracy or 0:.4f}  {record.seconds:6.1f} s{learning_rate}",
        flush=True,
    )


def busy_cpu_seconds() -> float:
    """CPU seconds all processes spent busy since boot, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (servers it ran)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass(frozen=True)
class CpuUse:
    """Shares of the machine's CPU time (cores × wall time) during a run."""

    others: float
    own: float


class CpuMeter:
    """How much of the machine this run used, and how much other processes took from it.

    Starts when created; ``stop`` (or leaving a ``with`` block) sets ``use``. Every
    figure's paragraph in docs/benchmarks.md says how busy the machine was, because a
    shared host that lends its cores elsewhere slows the run without saying so.
    ``extra_own_seconds`` counts processes this one has not waited for yet as its own,
    such as a server still running.
    """

    def __init__(self, extra_own_seconds: Callable[[], float] | None = None) -> None:
        self._extra_own_seconds = extra_own_seconds
        self._started = time.perf_counter()
        self._busy_before = busy_cpu_seconds()
        self._own_before = self._own_seconds()
        self.use = CpuUse(others=0.0, own=0.0)

    def __enter__(self) -> CpuMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> CpuUse:
        capacity = (time.perf_counter() - self._started) * nproc()
        own = self._own_seconds() - self._own_before
        others = max(0.0, busy_cpu_seconds() - self._busy_before - own)
        self.use = CpuUse(others=others / capacity, own=own / capacity)
        return self.use

    def _own_seconds(self) -> float:
        extra = self._extra_own_seconds() if self._extra_own_seconds else 0.0
        return own_cpu_seconds() + extra


def epoch_seconds(card: ModelCard) -> list[float]:
    """Wall seconds of each epoch after the first, which also traces the graph."""
    seconds = [record.seconds for record in card.history]
    return seconds[1:] or seconds


def load_verdict(card: ModelCard, cpu: CpuUse) -> str:
    """Whether the timings were taken on a quiet machine, in words."""
    seconds = epoch_seconds(card)
    if cpu.others >= 0.05:
        return "**busy: other processes competed, the timings are pessimistic**"
    if max(seconds) > 1.3 * min(seconds):
        return (
            "**uneven: no other process ran here, yet some epochs were much slower than "
            "others, so the host was busy; the timings are pessimistic**"
        )
    return "quiet"


def nproc() -> int:
    return len(os.sched_getaffinity(0))


# The instruction sets TensorFlow's oneDNN kernels pick their fast paths by.
NOTABLE_CPU_FLAGS = {
    "AVX-512": ("avx512f",),
    "AVX-512-BF16": ("avx512_bf16",),
    "AMX": ("amx_tile", "amx_bf16", "amx_int8"),
}


def cpu_flags() -> str:
    """Whether the CPU has AVX-512, its bfloat16 extension and AMX, from /proc/cpuinfo."""
    flags = cpu_feature_flags()
    parts = []
    for name, wanted in NOTABLE_CPU_FLAGS.items():
        present = [flag for flag in wanted if flag in flags]
        parts.append(f"{name} {'yes (' + ', '.join(present) + ')' if present else 'no'}")
    return "; ".join(parts)


def package_versions(*distributions: str) -> str:
    """``python X, name Y, ...`` for the installed distributions among ``distributions``."""
    versions = [f"python {platform.python_version()}"]
    for distribution in distributions:
        try:
            versions.append(f"{distribution} {metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(versions)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def present_cpu_flags(names: Sequence[str]) -> list[str]:
    """Which of ``names`` /proc/cpuinfo lists among the CPU's flags (AVX-512, AMX, ...)."""
    return [name for name in names if name in cpu_feature_flags()]


def figures(card: ModelCard) -> list[tuple[str, str]]:
    """The headline figures of a model card as (label, value) rows."""
    test = card.metrics.test
    timings = card.timings
    weak = ", ".join(f"{c.class_name} ({c.f1:.3f})" for c in test.weak_classes)
    return [
        ("Test accuracy", f"{test.accuracy:.4f} ({test.samples:,} images)"),
        ("Test macro F1", f"{test.macro_avg.f1:.4f}"),
        (
            "Fit wall time",
            f"{timings.fit_seconds:.1f} s = {timings.fit_seconds / 60:.1f} min "
            f"({timings.epochs_run} epochs, {timings.seconds_per_epoch:.1f} s/epoch)",
        ),
        ("Epoch wall times", _epoch_time_summary(card)),
        ("Parameters", f"{card.parameter_count:,}"),
        ("Model file", f"{card.model_file_bytes / 1e6:.1f} MB (`model.keras`)"),
        (
            "Generalization gap",
            f"{card.metrics.generalization_gap:+.4f} (last-epoch train accuracy "
            f"{card.metrics.final_train_accuracy:.4f} − validation accuracy "
            f"{card.metrics.validation_accuracy:.4f})",
        ),
        ("Weak classes (test F1)", weak or "none"),
    ]


def _epoch_time_summary(card: ModelCard) -> str:
    seconds = epoch_seconds(card)
    median = statistics.median(seconds)
    return (
        f"median {median:.1f} s (fastest {min(seconds):.1f} s, slowest {max(seconds):.1f} s); "
        f"{len(card.history)} epochs at the median pace: {median * len(card.history):.0f} s"
    )


def section(key: str, title: str, card: ModelCard, command: str, cpu: CpuUse) -> str:
    """The markdown section for one benchmark run."""
    versions = ", ".join(f"{name} {version}" for name, version in card.library_versions.items())
    dataset = card.dataset
    rows = "\n".join(f"| {label} | {value} |" for label, value in figures(card))
    spec_json = card.spec.model_dump_json(indent=2)
    data = (
        f"{dataset.name}, sample fraction {dataset.sample_fraction}, seed {dataset.seed}: "
        f"{dataset.train_samples:,} train, {dataset.validation_samples:,} validation and "
        f"{dataset.test_samples:,} test images"
    )
    load = (
        f"{load_verdict(card, cpu)}. During the run other processes used {cpu.others:.0%} "
        f"of the machine's CPU time and this one {cpu.own:.0%}"
    )
    return f"""<!-- bench:{key}:start -->
## {title}

- **When:** {card.trained_at[:16].replace("T", " ")} UTC
- **Machine:** {nproc()} CPU cores (`nproc`), {cpu_model()}; {cpu_flags()}
- **Load:** {load}
- **Libraries:** {versions}
- **Data:** {data}

| Figure | Value |
|---|---|
{rows}

Reproduce from the project root:

```
{command}
```

Spec:

```json
{spec_json}
```
<!-- bench:{key}:end -->
"""


def update_doc(doc: Path, key: str, text: str) -> None:
    """Replace the section fenced for ``key`` in ``doc``, or append it."""
    current = doc.read_text() if doc.exists() else DOC_HEADER
    fence = re.compile(
        rf"<!-- bench:{re.escape(key)}:start -->.*?<!-- bench:{re.escape(key)}:end -->\n?",
        re.DOTALL,
    )
    if fence.search(current):
        updated = fence.sub(lambda _: text, current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    doc.parent.mkdir(parents=True, exist_ok=True)
    staging = doc.with_suffix(".md.tmp")
    staging.write_text(updated)
    staging.replace(doc)


def run_benchmark(
    key: str,
    title: str,
    spec: AnyTrainingSpec,
    argv: Sequence[str] | None = None,
) -> RegisteredModel:
    """Train and register ``spec`` as the command line asks; print and record the figures."""
    args = parse_args(title, argv)
    command = shlex.join(
        [".venv/bin/python", "-m", f"bench.{key.replace('-', '_')}", *(argv or sys.argv[1:])]
    )
    print(f"{title}\nspec: {spec.model_dump_json()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as scratch:
        registry_dir = args.registry_dir or Path(scratch)
        meter = CpuMeter()
        registered = train_and_register(
            spec,
            data_dir=args.data_dir,
            registry=FileModelRegistry(registry_dir),
            progress=[print_epoch],
        )
        cpu = meter.stop()
    card = registered.card
    print(f"\nregistered {registered.model_name} v{registered.version} in {registry_dir}")
    for label, value in figures(card):
        print(f"{label}: {value}")
    print(f"CPU time used by other processes: {cpu.others:.0%}, by this one: {cpu.own:.0%}")
    print(f"Load: {load_verdict(card, cpu)}")
    if not args.no_doc:
        update_doc(args.doc, key, section(key, title, card, command, cpu))
        print(f"updated {args.doc}")
    return registered


def side_by_side_arguments(description: str) -> argparse.ArgumentParser:
    """The options every side-by-side training script takes; scripts add their own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    parser.add_argument("--no-doc", action="store_true", help="Print the figures only.")
    return parser


def locked_command(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces a run, holding the lock that keeps benchmarks apart."""
    given = list(argv) if argv is not None else sys.argv[1:]
    lock = ["flock", "/tmp/daciavision-bench.lock"]
    return shlex.join([*lock, ".venv/bin/python", "-m", module, *given])


def run_context(cpu: CpuUse) -> str:
    """The When / Machine / Load / Libraries lines that head every section."""
    return (
        f"- **When:** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"- **Machine:** {nproc()} CPU cores, {cpu_model()}; {cpu_flags()}\n"
        f"- **Load:** other processes used {cpu.others:.0%} of the machine's CPU time "
        "during the run\n"
        f"- **Libraries:** {package_versions('tensorflow-cpu', 'tensorflow', 'keras', 'numpy')}"
    )


def publish(key: str, body: str, command: str, arguments: argparse.Namespace) -> None:
    """Print a section (its body, then the command that reproduces it) and, unless
    ``--no-doc``, put it in its place in the doc."""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    text = f"{start}\n{body.strip()}\n\n```\n{command}\n```\n{end}\n"
    print(text)
    if not arguments.no_doc:
        update_doc(arguments.doc, key, text)
        print(f"updated {arguments.doc}")


def in_fresh_process(
    function: Callable[..., Result], *arguments: object, environment: dict[str, str]
) -> Result:
    """``function(*arguments)`` in a new Python process with ``environment``; its result.

    TensorFlow fixes its kernels when it loads, so contenders that differ in them
    (the lab's TensorFlow defaults, our training kernels) each need a process of
    their own. ``function`` must be importable (a module-level function).
    """
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)  # the spawned interpreter inherits this
    try:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            return pool.submit(function, *arguments).result()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def runs_per_seed(
    train_one: Callable[[int, Path], Result], seeds: Sequence[int], data_dir: Path
) -> tuple[list[Result], CpuUse]:
    """``train_one(seed, data_dir)`` for each seed, each in a fresh process set up as a
    worker is; the results and the machine's CPU use meanwhile."""
    meter = CpuMeter()
    results = [
        in_fresh_process(train_one, seed, data_dir, environment=training_environment())
        for seed in seeds
    ]
    return results, meter.stop()


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
