"""The servers the benchmark compares, each started in a session of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from bench.harness import PROJECT_ROOT
from bench.serving.workload import MODEL_NAME, Bodies
from service.api_processes import TELEMETRY_FOLDER_VARIABLE

BENTOML_VENV = PROJECT_ROOT / "bench" / ".venv-bentoml"
# Pinned to the project's own TensorFlow and Keras, so both servers run the same kernels.
BENTOML_REQUIREMENTS = ("bentoml", "tensorflow-cpu=={tensorflow}", "keras=={keras}", "pillow")
PORTS = {"ours": 8191, "naive": 8192, "bentoml": 8193}


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


def post(url: str, body: bytes, content_type: str, timeout: float = 10) -> int:
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
                if post(contender.url, body, content_type) == 200:
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


def _fresh(folder: Path) -> str:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return str(folder)


_UVICORN = [str(PROJECT_ROOT / ".venv" / "bin" / "python"), "-m", "uvicorn", "--host", "127.0.0.1"]
_UVICORN += ["--log-level", "warning", "--no-access-log"]


def our_server(
    name: str,
    port: int,
    registry_dir: Path,
    home: Path,
    api_processes: int,
    settings: dict[str, str] | None = None,
    checkout: Path = PROJECT_ROOT,
) -> Contender:
    """The service as `daciavision serve --api-processes N` runs it, with ``settings``
    (environment variables) over the defaults, on the code of ``checkout``: uvicorn puts
    its working directory first on the import path."""
    command = [*_UVICORN, "--port", str(port), "--workers", str(api_processes)]
    if (checkout / "service" / "http_protocol.py").exists():  # not in older checkouts
        # The bounded httptools parser `daciavision serve` runs.
        command += ["--http", "service.http_protocol:BoundedHttpToolsProtocol"]
    command += ["--factory", "service.app:create_app"]
    environment = {
        "DACIAVISION_HOME": str(home),
        "REGISTRY_DIR": str(registry_dir),
        # What `daciavision serve --api-processes` sets: telemetry summed over them.
        **({TELEMETRY_FOLDER_VARIABLE: _fresh(home / "prometheus")} if api_processes > 1 else {}),
        **(settings or {}),
    }
    url = f"http://127.0.0.1:{port}/predict?model_name={MODEL_NAME}"
    return Contender(name, command, url, env=environment, cwd=checkout)


def contenders(
    registry_dir: Path, home: Path, model: Path, api_processes: int
) -> dict[str, Contender]:
    uvicorn = _UVICORN
    return {
        "ours": our_server("ours", PORTS["ours"], registry_dir, home, api_processes),
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
