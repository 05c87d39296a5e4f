"""Serving benchmark: our /predict against a naive FastAPI app, BentoML and the raw model.

Every contender serves the same ``.keras`` file (the lab's custom CNN, 32/64/128,
trained briefly with the project's own trainer: accuracy does not matter for speed)
and gets the same real CIFAR-10 test images as PNG. They run one at a time (never two
on the same cores), each warmed first, and Debian's ``hey`` drives them on loopback:

* ours: ``uvicorn service.app:create_app`` with the settings a user gets, in one API
  process unless ``--api-processes`` asks for more (``uvicorn --workers``);
* (a) ``bench/serve_naive.py``: Pillow + ``model.predict`` per request, one process;
* (b) ``bench/serve_bentoml.py``: BentoML from PyPI with adaptive batching, in its own
  virtual environment ``bench/.venv-bentoml`` (created here if missing);
* (c) the raw limit: the model called in-process on in-memory batches.

Run it under the shared lock, so that no two benchmarks meet on the cores:

    flock /tmp/daciavision-bench.lock .venv/bin/python -m bench.serve

It prints the figures and rewrites the "Serving" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    DEFAULT_DATA_DIR,
    DEFAULT_DOC,
    CpuMeter,
    cpu_model,
    nproc,
    require_hey,
    update_doc,
)
from service.api_processes import TELEMETRY_FOLDER_VARIABLE
from worker.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "daciavision-bench"
BENTOML_VENV = PROJECT_ROOT / "bench" / ".venv-bentoml"
# Pinned to the project's own TensorFlow and Keras, so both servers run the same kernels.
BENTOML_REQUIREMENTS = ("bentoml", "tensorflow-cpu=={tensorflow}", "keras=={keras}", "pillow")
MODEL_NAME = "bench-serving"
MODELS_LOADED_FOR_MEMORY = 4
BATCH_IMAGES = 64
CONCURRENCY = 32
IDLE_REQUESTS = 300
PORTS = {"ours": 8191, "naive": 8192, "bentoml": 8193}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


# -- what is served --------------------------------------------------------------------


def prepare_model(cache_dir: Path, data_dir: Path) -> Path:
    """The registry holding the custom CNN, trained once and kept in ``cache_dir``.

    Four versions of the same file are registered, for the memory figure with four
    models loaded.
    """
    from trainer.architectures.custom_cnn import CustomCnnSpec
    from trainer.card import TrainingRecord
    from trainer.registry import FileModelRegistry
    from trainer.run import train_and_register

    registry_dir = cache_dir / "registry"
    registry = FileModelRegistry(registry_dir)
    if not (registry_dir / MODEL_NAME).is_dir():
        # The lab's custom CNN (32/64/128, 3×3, dropout 0.25), briefly: speed is the point.
        spec = CustomCnnSpec(
            dataset="cifar10", sample_fraction=0.1, epochs=2, seed=42, model_name=MODEL_NAME
        )
        print(f"training {spec.model_dump_json()}", flush=True)
        train_and_register(spec, data_dir=data_dir, registry=registry)
    versions = registry.versions(MODEL_NAME)
    card = registry.get_card(MODEL_NAME, versions[0])
    record = TrainingRecord.model_validate(
        card.model_dump(mode="json", include=set(TrainingRecord.model_fields))
    )
    source = registry.model_path(MODEL_NAME, versions[0])
    for _ in range(MODELS_LOADED_FOR_MEMORY - len(versions)):
        registry.register(MODEL_NAME, lambda path: shutil.copyfile(source, path), record)
    return registry_dir


def model_file(registry_dir: Path) -> Path:
    from trainer.registry import FileModelRegistry

    return FileModelRegistry(registry_dir).model_path(MODEL_NAME, 1)


@dataclass(frozen=True)
class Bodies:
    """Request bodies on disk, as hey sends them."""

    single_png: Path  # a multipart form with one 32×32 PNG in the field "files"
    batch_json: Path  # {"instances": [{"b64": PNG}, ...]} with BATCH_IMAGES images
    boundary: str
    png_bytes: int
    images: Path  # the test images as float32 in [0, 1], for the raw limit


def prepare_bodies(cache_dir: Path, data_dir: Path) -> Bodies:
    """The first CIFAR-10 test images as PNG files in request bodies."""
    from PIL import Image

    with np.load(data_dir / "cifar10.npz") as data:
        test_images = data["x_test"][:256]
    pngs = []
    for pixels in test_images:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    boundary = "daciavisionbenchboundary"
    single = cache_dir / "single.multipart"
    single.write_bytes(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="0.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + pngs[0]
        + f"\r\n--{boundary}--\r\n".encode()
    )
    batch = cache_dir / f"batch{BATCH_IMAGES}.json"
    instances = [{"b64": base64.b64encode(png).decode()} for png in pngs[:BATCH_IMAGES]]
    batch.write_text(json.dumps({"instances": instances}))
    images = cache_dir / "images.npy"
    np.save(images, test_images.astype(np.float32) / 255.0)
    return Bodies(single, batch, boundary, len(pngs[0]), images)


# -- CPU accounting: how much of the machine others used ---------------------------------


def _tree_seconds(root: int) -> float:
    """CPU seconds of a live contender: its session and every descendant of ``root``.

    Both, because BentoML's process manager starts its workers in sessions of their own.
    """
    parents: dict[int, int] = {}
    sessions: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            pid = int(stat.parent.name)
            parents[pid], sessions[pid] = int(fields[1]), int(fields[3])
            ticks[pid] = int(fields[11]) + int(fields[12])
    members = {pid for pid, session in sessions.items() if session == root} | {root}
    growing = True
    while growing:
        found = {pid for pid, parent in parents.items() if parent in members} - members
        members |= found
        growing = bool(found)
    return sum(ticks.get(pid, 0) for pid in members) / os.sysconf("SC_CLK_TCK")


# -- load generation --------------------------------------------------------------------


@dataclass
class LoadResult:
    """One hey run: throughput, latency percentiles (ms), errors, and the CPU share."""

    requests: int
    seconds: float
    percentiles: dict[int, float]
    errors: int
    error_lines: list[str]
    others_cpu: float = 0.0
    own_cpu: float = 0.0
    images_per_request: int = 1

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.rate * self.images_per_request

    def summary(self) -> str:
        p = self.percentiles
        return (
            f"{self.rate:.1f} req/s, p50 {p.get(50, float('nan')):.1f} ms, "
            f"p99 {p.get(99, float('nan')):.1f} ms, {self.errors} errors "
            f"(others used {self.others_cpu:.0%} of the CPU)"
        )


def parse_hey(output: str) -> LoadResult:
    """Figures from hey's text summary (its percentiles are of successful requests)."""
    seconds = float(re.search(r"Total:\s+([\d.]+) secs", output).group(1))  # type: ignore[union-attr]
    percentiles = {
        int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", output)
    }
    statuses = {
        int(code): int(count)
        for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)
    }
    error_lines = []
    errors = sum(count for code, count in statuses.items() if code != 200)
    if "Error distribution:" in output:
        for line in output.split("Error distribution:", 1)[1].strip().splitlines():
            if match := re.match(r"\s*\[(\d+)\]\s+(.*)", line):
                errors += int(match.group(1))
                error_lines.append(line.strip()[:200])
    requests = sum(statuses.values())
    return LoadResult(requests, seconds, percentiles, errors, error_lines)


def run_hey(
    url: str,
    body: Path,
    content_type: str,
    *,
    concurrency: int,
    seconds: float | None = None,
    requests: int | None = None,
    session: int | None = None,
) -> LoadResult:
    command = ["hey", "-m", "POST", "-T", content_type, "-D", str(body), "-c", str(concurrency)]
    command += ["-z", f"{seconds}s"] if seconds else ["-n", str(requests)]
    # The contender's processes are still running, so their CPU seconds count as ours here.
    contender_seconds = (lambda: _tree_seconds(session)) if session else None
    with CpuMeter(contender_seconds) as meter:
        output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    result = parse_hey(output)
    result.others_cpu, result.own_cpu = meter.use.others, meter.use.own
    return result


# -- contenders -------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    command: list[str]
    url: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = PROJECT_ROOT


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    cold_start_seconds: float
    log: Path


def _post(url: str, body: bytes, content_type: str, timeout: float = 10) -> int:
    request = urllib.request.Request(url, body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@contextlib.contextmanager
def started(contender: Contender, bodies: Bodies, log_dir: Path) -> Iterator[Running]:
    """Start a contender in its own session; time start → first successful /predict."""
    log = log_dir / f"{contender.name}.log"
    content_type = f"multipart/form-data; boundary={bodies.boundary}"
    body = bodies.single_png.read_bytes()
    began = time.perf_counter()
    with log.open("wb") as output:
        process = subprocess.Popen(
            contender.command,
            cwd=contender.cwd,
            env={**os.environ, **contender.env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{contender.name} exited; see {log}:\n{log.read_text()[-3000:]}"
                )
            with contextlib.suppress(OSError):
                if _post(contender.url, body, content_type) == 200:
                    break
            if time.perf_counter() - began > 300:
                raise RuntimeError(f"{contender.name} did not answer within 300 s; see {log}")
            time.sleep(0.05)
        yield Running(process, time.perf_counter() - began, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def peak_rss_mib(pid: int) -> float:
    """VmHWM summed over the process and its children: the API processes' peaks."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            total += int(line.split()[1]) / 1024
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return total + sum(peak_rss_mib(int(child)) for child in children)


def ensure_bentoml_venv() -> Path:
    """bench/.venv-bentoml with BentoML from PyPI and the project's TensorFlow and Keras."""
    bentoml = BENTOML_VENV / "bin" / "bentoml"
    if not bentoml.exists():
        versions = {
            "tensorflow": metadata.version("tensorflow-cpu"),
            "keras": metadata.version("keras"),
        }
        requirements = [r.format(**versions) for r in BENTOML_REQUIREMENTS]
        subprocess.run([sys.executable, "-m", "venv", str(BENTOML_VENV)], check=True)
        pip = [str(BENTOML_VENV / "bin" / "pip"), "install", "--quiet"]
        subprocess.run([*pip, *requirements], check=True)
    return bentoml


def bentoml_version() -> str:
    python = BENTOML_VENV / "bin" / "python"
    return subprocess.run(
        [str(python), "-c", "import bentoml; print(bentoml.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


# -- the raw limit ----------------------------------------------------------------------


def measure_raw(model_path: Path, images_path: Path, intra_op_threads: int = 0) -> dict[str, float]:
    """The model called in-process: a traced forward pass per batch size, and model.predict.

    The traced pass, called as the service calls it (``service.inference``: a concrete
    function per batch size, traced before the clock starts), is the fastest way to
    call a Keras model here, so the raw limit is as high as it can be. With
    ``intra_op_threads`` (as the service sets them) only the traced pass is measured.
    """
    import keras

    from service.inference import CompiledModel, limit_intra_op_threads

    limit_intra_op_threads(intra_op_threads)
    model = keras.saving.load_model(model_path, compile=False)
    images = np.load(images_path)
    forward = CompiledModel(model, images.shape[1:], max_batch_size=256)
    forward.warm()

    figures: dict[str, float] = {}

    def timed(call: Any, batch: np.ndarray, budget: float) -> float:
        call(batch)  # trace and warm
        call(batch)
        samples: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < budget or len(samples) < 5:
            begin = time.perf_counter()
            np.asarray(call(batch))
            samples.append(time.perf_counter() - begin)
        return statistics.median(samples)

    def predict(batch: np.ndarray) -> Any:
        return model.predict(batch, verbose=0, batch_size=len(batch))

    one = images[:1]
    figures["batch1_ms"] = timed(forward, one, 3.0) * 1000
    if not intra_op_threads:
        figures["batch1_predict_ms"] = timed(predict, one, 3.0) * 1000
    for size in (BATCH_IMAGES, 256):
        batch = np.resize(images, (size, *images.shape[1:]))
        figures[f"batch{size}_images_per_second"] = size / timed(forward, batch, 5.0)
        if not intra_op_threads:
            figures[f"batch{size}_predict_images_per_second"] = size / timed(predict, batch, 3.0)
    return figures


# The traced pass on one intra-op thread, as the service runs it by default; its
# figures are stored under this prefix beside those on TensorFlow's default threads.
ONE_THREAD = "one_thread_"


def run_raw(model_path: Path, images_path: Path) -> tuple[dict[str, float], CpuMeter]:
    """measure_raw in processes of their own, so this one never holds TensorFlow's threads:
    once on TensorFlow's default threads and once on one intra-op thread."""
    code = (
        "import json, sys; from pathlib import Path; from bench.serve import measure_raw; "
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


def raw_batch1_ms(raw: dict[str, float]) -> float:
    """The fastest batch-1 call of the model in-process, on either thread setting."""
    return min(raw["batch1_ms"], raw[ONE_THREAD + "batch1_ms"])


def raw_images_per_second(raw: dict[str, float], size: int) -> float:
    """The most images/s of the model in-process at ``size``, by any way measured."""
    traced = f"batch{size}_images_per_second"
    return max(raw[traced], raw[ONE_THREAD + traced], raw[f"batch{size}_predict_images_per_second"])


# -- the run ----------------------------------------------------------------------------


@dataclass
class Measured:
    """Everything one run measured."""

    raw: dict[str, float]
    raw_meter: CpuMeter
    runs: dict[str, dict[str, LoadResult]]  # contender → measurement → result
    cold_start_seconds: dict[str, float]
    rss_four_models_mib: float
    rss_after_load_mib: float
    whole_run: CpuMeter
    seconds: float
    api_processes: int


def _batching_defaults() -> str:
    fields = Settings.model_fields
    return (
        f"dynamic batching, max batch {fields['max_batch_size'].default}, max wait "
        f"{fields['max_batch_wait_seconds'].default * 1000:g} ms, "
        f"{fields['batch_threads'].default} batch threads per model, "
        f"{fields['inference_intra_op_threads'].default} intra-op thread(s) per call"
    )


def _fresh(folder: Path) -> str:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return str(folder)


def contenders(
    registry_dir: Path, home: Path, model: Path, api_processes: int
) -> dict[str, Contender]:
    python = str(PROJECT_ROOT / ".venv" / "bin" / "python")
    uvicorn = [python, "-m", "uvicorn", "--host", "127.0.0.1", "--log-level", "warning"]
    uvicorn += ["--no-access-log"]
    query = f"?model_name={MODEL_NAME}"
    return {
        # The service as `daciavision serve --api-processes N` runs it, default settings.
        "ours": Contender(
            "ours",
            [
                *(*uvicorn, "--port", str(PORTS["ours"]), "--workers", str(api_processes)),
                *("--factory", "service.app:create_app"),
            ],
            f"http://127.0.0.1:{PORTS['ours']}/predict{query}",
            env={
                "DACIAVISION_HOME": str(home),
                "REGISTRY_DIR": str(registry_dir),
                # What `daciavision serve --api-processes` sets: telemetry summed over them.
                **(
                    {TELEMETRY_FOLDER_VARIABLE: _fresh(home / "prometheus")}
                    if api_processes > 1
                    else {}
                ),
            },
        ),
        "naive": Contender(
            "naive",
            [*uvicorn, "--port", str(PORTS["naive"]), "bench.serve_naive:app"],
            f"http://127.0.0.1:{PORTS['naive']}/predict",
            env={"BENCH_MODEL": str(model)},
        ),
        "bentoml": Contender(
            "bentoml",
            [
                *(str(BENTOML_VENV / "bin" / "bentoml"), "serve", "serve_bentoml:Classifier"),
                *("--working-dir", str(PROJECT_ROOT / "bench"), "--port", str(PORTS["bentoml"])),
            ],
            f"http://127.0.0.1:{PORTS['bentoml']}/predict",
            env={"BENCH_MODEL": str(model), "BENTOML_HOME": str(home / "bentoml")},
        ),
    }


def measure(args: argparse.Namespace) -> Measured:
    cache_dir: Path = args.cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    registry_dir = prepare_model(cache_dir, args.data_dir)
    bodies = prepare_bodies(cache_dir, args.data_dir)
    model = model_file(registry_dir)
    ensure_bentoml_venv()
    log_dir = cache_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="home-", dir=cache_dir))
    multipart = f"multipart/form-data; boundary={bodies.boundary}"
    duration = args.seconds
    runs: dict[str, dict[str, LoadResult]] = {}
    cold: dict[str, float] = {}
    rss_four = rss_after = float("nan")
    began = time.perf_counter()
    measured_raw: list[tuple[dict[str, float], CpuMeter]] = []

    def raw_limit() -> None:
        print("  raw limit (c): the model in-process …", flush=True)
        measured_raw.append(run_raw(model, bodies.images))
        print(json.dumps(measured_raw[-1][0], indent=1), flush=True)

    with CpuMeter() as whole_run:
        for name, contender in contenders(registry_dir, home, model, args.api_processes).items():
            if name not in args.contenders:
                continue
            print(f"{name}: starting …", flush=True)
            with started(contender, bodies, log_dir) as running:
                session = running.process.pid
                cold[name] = running.cold_start_seconds
                print(f"  first /predict answered {running.cold_start_seconds:.1f} s after start")
                results: dict[str, LoadResult] = {}
                url = contender.url
                if name == "ours":
                    # Load the other three versions too: the memory with four models loaded.
                    # Each request on a new connection, which any API process may accept:
                    # several per version, so that every process loads every version.
                    for version in range(1, MODELS_LOADED_FOR_MEMORY):
                        for _ in range(1 if args.api_processes == 1 else 8 * args.api_processes):
                            status = _post(
                                f"{url}&version={version}",
                                bodies.single_png.read_bytes(),
                                multipart,
                            )
                            assert status == 200, f"version {version} answered {status}"
                    rss_four = peak_rss_mib(running.process.pid)
                    print(f"  peak RSS with {MODELS_LOADED_FOR_MEMORY} models: {rss_four:.0f} MiB")
                # Warm-up: every code path and batch size the measurements meet.
                run_hey(url, bodies.single_png, multipart, concurrency=CONCURRENCY, seconds=3)
                results["idle"] = run_hey(
                    url, bodies.single_png, multipart, concurrency=1, requests=IDLE_REQUESTS,
                    session=session,
                )  # fmt: skip
                print(f"  idle, one request at a time: {results['idle'].summary()}", flush=True)
                results["single"] = run_hey(
                    url, bodies.single_png, multipart, concurrency=CONCURRENCY, seconds=duration,
                    session=session,
                )  # fmt: skip
                print(f"  single PNG, concurrency {CONCURRENCY}: {results['single'].summary()}")
                if name == "ours":
                    # Right before the JSON run it is compared with, so that both meet the
                    # same machine; the server sits idle meanwhile (no request, no CPU).
                    raw_limit()
                    run_hey(url, bodies.batch_json, "application/json", concurrency=4, seconds=3)
                    batch = run_hey(
                        url, bodies.batch_json, "application/json", concurrency=4,
                        seconds=duration, session=session,
                    )  # fmt: skip
                    batch.images_per_request = BATCH_IMAGES
                    results["batch"] = batch
                    print(f"  JSON, {BATCH_IMAGES} images each, concurrency 4: {batch.summary()}")
                    rss_after = peak_rss_mib(running.process.pid)
                runs[name] = results
        if not measured_raw:
            raw_limit()
    raw, raw_meter = measured_raw[0]
    shutil.rmtree(home, ignore_errors=True)
    return Measured(
        raw, raw_meter, runs, cold, rss_four, rss_after, whole_run,
        time.perf_counter() - began, args.api_processes,
    )  # fmt: skip


# -- the report -------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    baseline: str
    ratio: str
    goal: str
    met: bool
    shortfall: str = ""


def _others(result: LoadResult) -> str:
    return f"other processes used {result.others_cpu:.0%} of the CPU"


def verdicts(m: Measured) -> list[Verdict]:
    ours = m.runs.get("ours", {})
    found: list[Verdict] = []
    single = ours.get("single")
    for name, label in (("naive", "(a) naive FastAPI"), ("bentoml", "(b) BentoML")):
        other = m.runs.get(name, {}).get("single")
        if single is None or other is None:
            continue
        goal = 5.0 if name == "naive" else 1.0
        ratio = single.rate / other.rate
        found.append(
            Verdict(
                f"5. single PNG at concurrency {CONCURRENCY}: throughput vs {label}",
                f"{single.rate:.0f} req/s",
                f"{other.rate:.0f} req/s",
                f"{ratio:.2f}×",
                f"≥ {goal:.1f}×",
                ratio >= goal,
                f"{goal - ratio:.2f}× short ({goal * other.rate - single.rate:.0f} req/s); "
                f"{_others(single)} during ours, {other.others_cpu:.0%} during theirs",
            )
        )
    if single is not None:
        p99 = single.percentiles.get(99, float("inf"))
        found.append(
            Verdict(
                "5. single PNG at concurrency 32: p99 latency",
                f"{p99:.1f} ms",
                "",
                "",
                "≤ 100 ms",
                p99 <= 100,
                f"{p99 - 100:.1f} ms over (p50 {single.percentiles.get(50, 0):.1f} ms); "
                f"{_others(single)} during this measurement",
            )
        )
        found.append(
            Verdict(
                "5. single PNG at concurrency 32: errors",
                f"{single.errors} of {single.requests + single.errors}",
                "",
                "",
                "0",
                single.errors == 0,
                "; ".join(single.error_lines) or f"{single.errors} non-200 answers",
            )
        )
    raw64 = raw_images_per_second(m.raw, BATCH_IMAGES)
    if (batch := ours.get("batch")) is not None:
        ratio = batch.images_per_second / raw64
        found.append(
            Verdict(
                f"6. JSON, {BATCH_IMAGES} PNG images per request: images/s vs raw batch 64",
                f"{batch.images_per_second:.0f} images/s",
                f"{raw64:.0f} images/s",
                f"{ratio:.0%}",
                "≥ 50%",
                ratio >= 0.5,
                f"{0.5 - ratio:.0%} short; {_others(batch)} during this measurement, "
                f"{m.raw_meter.use.others:.0%} during the raw one",
            )
        )
    if (idle := ours.get("idle")) is not None:
        raw1 = raw_batch1_ms(m.raw)
        extra = idle.percentiles[50] - raw1
        found.append(
            Verdict(
                "7. one request on an idle server: p50, end to end, vs the raw batch-1 call",
                f"{idle.percentiles[50]:.2f} ms",
                f"{raw1:.2f} ms",
                f"+{extra:.2f} ms",
                "≤ +2 ms",
                extra <= 2.0,
                f"{extra - 2:.2f} ms over; {_others(idle)} during this measurement",
            )
        )
    return found


def _versions() -> str:
    names = ("tensorflow-cpu", "keras", "numpy", "fastapi", "starlette", "uvicorn", "pillow")
    found = [f"python {sys.version.split()[0]}"]
    found += [f"{name} {metadata.version(name)}" for name in names]
    with contextlib.suppress(subprocess.CalledProcessError, OSError):
        found.append(f"bentoml {bentoml_version()} (its own venv, same TensorFlow and Keras)")
    hey = shutil.which("hey")
    with contextlib.suppress(subprocess.CalledProcessError, OSError):
        package = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "hey"], capture_output=True, text=True
        ).stdout
        found.append(f"hey {package or hey} (Debian)")
    return ", ".join(found)


CONTENDERS_HEADER = (
    "| Contender | Requests | Count | Requests/s | Images/s | p50 ms | p99 ms | Errors "
    "| CPU: this run | CPU: others |\n|---|---|---|---|---|---|---|---|---|---|"
)


def section(m: Measured, command: str) -> str:
    from bench.harness import present_cpu_flags

    flags = ", ".join(present_cpu_flags(CPU_FLAGS)) or "none of " + ", ".join(CPU_FLAGS)
    rows = []
    notes = []
    for v in verdicts(m):
        status = "**met**" if v.met else "**missed**"
        rows.append(
            f"| {v.target} | {v.measured} | {v.baseline} | {v.ratio} | {v.goal} | {status} |"
        )
        if not v.met:
            notes.append(f"- {v.target}: missed by {v.shortfall}.")
    contenders_rows = []
    labels = {"ours": "ours", "naive": "(a) naive FastAPI", "bentoml": "(b) BentoML"}
    titles = {
        "idle": "one at a time",
        "single": f"1 PNG, concurrency {CONCURRENCY}",
        "batch": f"{BATCH_IMAGES} PNG as JSON, concurrency 4",
    }
    for name, results in m.runs.items():
        for key, r in results.items():
            p = r.percentiles
            contenders_rows.append(
                f"| {labels[name]} | {titles[key]} | {r.requests:,} | {r.rate:,.1f} | "
                f"{r.images_per_second:,.0f} | {p.get(50, float('nan')):.1f} | "
                f"{p.get(99, float('nan')):.1f} | {r.errors} | {r.own_cpu:.0%} | "
                f"{r.others_cpu:.0%} |"
            )
    raw = m.raw
    raw_rows = "\n".join(
        [
            f"| batch 1, ms per call (median) | {raw['batch1_ms']:.2f} | "
            f"{raw[ONE_THREAD + 'batch1_ms']:.2f} | {raw['batch1_predict_ms']:.2f} |",
            *(
                f"| batch {size}, images/s | {raw[f'batch{size}_images_per_second']:,.0f} | "
                f"{raw[f'{ONE_THREAD}batch{size}_images_per_second']:,.0f} | "
                f"{raw[f'batch{size}_predict_images_per_second']:,.0f} |"
                for size in (BATCH_IMAGES, 256)
            ),
        ]
    )
    rss_four = f"{m.rss_four_models_mib:,.0f} MiB"
    cold = ", ".join(
        f"{labels[name]} {seconds:.1f} s" for name, seconds in m.cold_start_seconds.items()
    )
    missed = "\n".join(notes) or "- none"
    busy = m.whole_run.use.others
    load = (
        f"other processes used {busy:.0%} of the machine's CPU time during the whole run "
        f"and this benchmark (driver, hey, the contender) {m.whole_run.use.own:.0%}"
    )
    if busy >= 0.05:
        load = f"**busy: {load}; the timings are pessimistic**"
    return f"""<!-- bench:serving:start -->
## Serving: /predict against a naive app, BentoML and the raw model

- **When:** {datetime.now(UTC).strftime("%Y-%m-%d %H:%M")} UTC, {m.seconds / 60:.1f} minutes
- **Machine:** {nproc()} CPU cores (`nproc`), {cpu_model()}; flags: {flags}
- **Load:** {load}
- **Libraries:** {_versions()}
- **Model:** the lab's custom CNN (`custom_cnn` 32/64/128, 3×3, dropout 0.25), CIFAR-10,
  trained 2 epochs on 10% with the project's trainer; one `.keras` file for every contender
- **Images:** real CIFAR-10 test images as 32×32 PNG ({BATCH_IMAGES} per JSON request,
  base64); hey repeats one body per run
- **Ours:** `uvicorn service.app:create_app` in {m.api_processes} API process(es) sharing
  the port (`--workers {m.api_processes}`, as `daciavision serve --api-processes
  {m.api_processes}`), otherwise the default settings ({_batching_defaults()});
  requests name no version (the latest)

| Target | Measured | Baseline | Ratio | Goal | |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Missed:

{missed}

{CONTENDERS_HEADER}
{chr(10).join(contenders_rows)}

CPU shares are of the machine's capacity (cores × wall time) during that measurement:
"this run" is the driver, hey and the contender's processes, "others" everything else.

| Raw limit (c), in-process | Traced pass | Traced, one intra-op thread | `model.predict` |
|---|---|---|---|
{raw_rows}

The raw limit of target 6 is the fastest of the three at batch {BATCH_IMAGES}, the raw
batch-1 call of target 7 the faster traced one. "One intra-op thread" is how our server
runs each call by default (`DACIAVISION_INFERENCE_INTRA_OP_THREADS=1`); the other
columns run on TensorFlow's default threads, one per core. The raw figures were measured
in processes of their own right before the JSON run they are compared with (our server
idle meanwhile), so that both meet the same machine; other processes used
{m.raw_meter.use.others:.0%} of the CPU while they were measured.

| Also recorded | Value |
|---|---|
| Cold start: process start to first successful `/predict` | {cold} |
| Peak RSS of the API, all processes, {MODELS_LOADED_FOR_MEMORY} models loaded | {rss_four} |
| Peak RSS of the API after the whole run, all its processes | {m.rss_after_load_mib:,.0f} MiB |

Reproduce from the project root (`apt-get install hey` first; the script creates
`bench/.venv-bentoml` and trains the model into `--cache-dir` once):

```
{command}
```
<!-- bench:serving:end -->
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="The trained model, request bodies and logs (default: %(default)s).",
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="Length of each load run (%(default)s)."
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=list(PORTS),
        choices=list(PORTS),
        help="Which servers to run (default: all).",
    )
    parser.add_argument(
        "--api-processes",
        type=int,
        default=1,
        help="Our API server processes, as `daciavision serve --api-processes` "
        "(default: %(default)s, the setting a user gets).",
    )
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    parser.add_argument("--no-doc", action="store_true", help="Print the figures only.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_hey()
    command = shlex.join(
        [
            *("flock", "/tmp/daciavision-bench.lock", ".venv/bin/python", "-m", "bench.serve"),
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )
    measured = measure(args)
    for verdict in verdicts(measured):
        status = "met" if verdict.met else f"MISSED by {verdict.shortfall}"
        print(
            f"{verdict.target}: {verdict.measured} vs {verdict.baseline} {verdict.ratio} "
            f"(goal {verdict.goal}): {status}"
        )
    if not args.no_doc:
        update_doc(args.doc, "serving", section(measured, command))
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
