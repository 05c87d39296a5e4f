"""Load on a real deployment: ``/predict`` under concurrency while a job trains and an alias moves.

One scenario for the load benchmark (``bench/load.py``: 20,000 requests from
``hey``) and its shortened variant in the test suite (``tests/test_load.py``: an
async httpx client), so both prove the same thing:

1. Start the deployment as local processes against Redis: the API with the
   product's own ``daciavision serve`` (uvicorn over a socket) and one Celery
   worker with ``worker.command.celery_worker_command``.
2. Register two versions of one model (trained in this process on a small sample)
   and point ``production`` at version 1 through the admin API.
3. Queue a training job for the same model and wait until a worker runs it.
4. Drive ``/predict`` (no version: it follows ``production``) with the caller's
   driver while a thread watches the served predictions and moves ``production``
   1 → 2 after a third of the requests and 2 → 1 after two thirds.
5. Wait for the job to end; read the alias history and how many images each
   version classified during the load.

Every non-2xx answer and every transport error counts as an error.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import Process, free_port, running, service_environment, wait_until
from trainer.data import load_raw
from trainer.registry import FileModelRegistry
from trainer.spec import parse_training_spec
from worker.command import celery_worker_command

ALIAS = "production"
TERMINAL = {"succeeded", "failed", "cancelled"}
PREDICTIONS_METRIC = "daciavision_predictions"


@dataclass(frozen=True)
class ScenarioConfig:
    """What to deploy, what to train and how much load to drive."""

    home: Path
    redis_url: str
    data_dir: Path | None
    model_name: str
    # Training specs (as POST /jobs takes them) of versions 1 and 2, trained in this process.
    version_specs: tuple[dict[str, Any], dict[str, Any]]
    # The job that trains on the worker during the load; registers the same model.
    job_spec: dict[str, Any]
    requests: int
    concurrency: int
    # Test images sent as PNG files (the driver picks which).
    images: int = 1
    startup_timeout: float = 120
    job_timeout: float = 900


@dataclass(frozen=True)
class LoadTarget:
    """What a driver sends: ``requests`` one-image uploads to ``url``, ``concurrency`` at once."""

    url: str
    pngs: list[bytes]
    requests: int
    concurrency: int


@dataclass(frozen=True)
class RequestRecord:
    """One request as a client saw it (monotonic clock); status None for a transport error."""

    started: float
    finished: float
    status: int | None
    body: str


@dataclass
class LoadResult:
    """What a driver measured."""

    requests: int
    errors: int
    latencies: list[float]  # seconds, successful requests
    wall_seconds: float
    error_samples: list[str] = field(default_factory=list)
    # Per-request records, when the driver keeps them (the test's driver does; hey does not).
    records: list[RequestRecord] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return (self.requests - self.errors) / self.wall_seconds if self.wall_seconds else 0.0

    def percentile(self, share: float) -> float:
        return float(np.percentile(self.latencies, share * 100)) if self.latencies else 0.0


Driver = Callable[[LoadTarget], LoadResult]


@dataclass(frozen=True)
class AliasMove:
    """One move of ``production`` during the load, timed on the monotonic clock."""

    from_version: int
    to_version: int
    started: float
    finished: float
    status: int
    body: str
    # Images classified since the load began, when the move was triggered.
    predictions_before: int


@dataclass
class ScenarioResult:
    versions: tuple[int, int]
    load: LoadResult
    moves: list[AliasMove]
    alias_history: list[dict[str, Any]]
    job: dict[str, Any]
    job_status_at_load_start: str
    job_status_at_load_end: str
    load_started_at: datetime
    load_finished_at: datetime
    # Images each version of the model classified during the load (from the API's telemetry).
    predictions_by_version: dict[int, int]

    @property
    def job_covered_load(self) -> bool:
        """Whether the job was training from before the load began until after it ended."""
        started, finished = self.job.get("started_at"), self.job.get("finished_at")
        if started is None or finished is None:
            return False
        return bool(
            datetime.fromisoformat(started) <= self.load_started_at
            and datetime.fromisoformat(finished) >= self.load_finished_at
        )


class ApiError(AssertionError):
    """A call of the scenario itself (not of the load) answered unexpectedly."""


def checked(response: httpx.Response, *expected: int) -> Any:
    """The JSON body of an expected answer; else fail with the status and body."""
    if response.status_code not in expected:
        raise ApiError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code}: {response.text[:2000]}"
        )
    return response.json()


def dataset_pngs(dataset: str, data_dir: Path | None, count: int) -> list[bytes]:
    """The first ``count`` test images of a dataset, each as a PNG file."""
    raw = load_raw(dataset, data_dir)
    pngs = []
    for image in raw.x_test[:count]:
        buffer = io.BytesIO()
        Image.fromarray(np.squeeze(image)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


@dataclass
class Deployment:
    """The API and one worker, running as local processes."""

    url: str
    registry_dir: Path
    processes: list[Process]


@contextmanager
def deployment(config: ScenarioConfig) -> Iterator[Deployment]:
    """Start the API (``daciavision serve``) and one Celery worker; stop both afterwards."""
    config.home.mkdir(parents=True, exist_ok=True)
    extra = {"DATA_DIR": str(config.data_dir)} if config.data_dir else {}
    environment = service_environment(config.home, config.redis_url, **extra)
    port = free_port()
    serve = [str(Path(sys.executable).parent / "daciavision"), "serve", "--port", str(port)]
    processes: list[Process] = []
    with running(processes):
        processes.append(Process(serve, environment, config.home / "api.log"))
        worker = celery_worker_command(node_name="load@%h")
        processes.append(Process(worker, environment, config.home / "worker.log"))
        yield Deployment(f"http://127.0.0.1:{port}", config.home / "registry", processes)


def wait_ready(client: httpx.Client, processes: Sequence[Process], timeout: float) -> None:
    def ready() -> bool:
        for process in processes:
            if process.popen.poll() is not None:
                raise AssertionError(f"{process.command[0]} exited:\n{process.log()[-3000:]}")
        try:
            return client.get("/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=timeout, what="the API to be ready")


def register_versions(config: ScenarioConfig, registry_dir: Path) -> tuple[int, int]:
    """Train and register versions 1 and 2 in this process (TensorFlow loads here)."""
    from trainer.run import train_and_register  # deferred: imports TensorFlow

    registry = FileModelRegistry(registry_dir)
    versions = []
    for body in config.version_specs:
        spec = parse_training_spec({**body, "model_name": config.model_name})
        registered = train_and_register(spec, data_dir=config.data_dir, registry=registry)
        versions.append(registered.version)
    return versions[0], versions[1]


def move_alias(client: httpx.Client, model_name: str, version: int) -> httpx.Response:
    return client.put(f"/models/{model_name}/aliases/{ALIAS}", json={"version": version})


def job_status(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = checked(client.get(f"/jobs/{job_id}"), 200)
    return job


def predictions_by_version(client: httpx.Client, model_name: str) -> dict[int, int]:
    """Images classified by each version of ``model_name`` since the API started."""
    text = checked_text(client.get("/monitoring/prometheus/metrics"))
    counts: dict[int, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name != PREDICTIONS_METRIC:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["model_name"] == model_name:
                counts[int(sample.labels["version"])] = int(sample.value)
    return counts


def checked_text(response: httpx.Response) -> str:
    if response.status_code != 200:
        raise ApiError(f"{response.request.url} answered {response.status_code}: {response.text}")
    return response.text


class AliasMover(threading.Thread):
    """Moves ``production`` v1 → v2 after a third of the load and back after two thirds.

    It watches the API's count of classified images, so the moves land inside the
    load whatever drives it (``hey`` reports nothing until it ends). The move back
    also waits until version 2 has classified an image: loading it under load may
    take longer than the middle third, and a move back before any traffic reached
    it would prove nothing.
    """

    def __init__(self, url: str, model_name: str, versions: tuple[int, int], requests: int) -> None:
        super().__init__(name="alias-mover", daemon=True)
        self.client = httpx.Client(base_url=url, timeout=120)
        self.model_name = model_name
        self.plan = [
            (requests // 3, versions[0], versions[1]),
            (2 * requests // 3, versions[1], versions[0]),
        ]
        self.baseline = predictions_by_version(self.client, model_name)
        self.moves: list[AliasMove] = []
        self.failure: Exception | None = None
        self.stopping = threading.Event()

    def served(self) -> dict[int, int]:
        """Images each version classified since the load began."""
        counts = predictions_by_version(self.client, self.model_name)
        return {version: count - self.baseline.get(version, 0) for version, count in counts.items()}

    def due(self, threshold: int, current: int) -> int | None:
        """Images classified so far if it is time to move away from ``current``, else None."""
        served = self.served()
        total = sum(served.values())
        return total if total >= threshold and served.get(current, 0) > 0 else None

    def run(self) -> None:
        try:
            for threshold, from_version, to_version in self.plan:
                while (served := self.due(threshold, from_version)) is None:
                    if self.stopping.wait(0.02):
                        return
                started = time.monotonic()
                response = move_alias(self.client, self.model_name, to_version)
                move = AliasMove(
                    from_version, to_version, started, time.monotonic(),
                    response.status_code, response.text, served,
                )  # fmt: skip
                self.moves.append(move)
        except Exception as error:  # noqa: BLE001 - raised again by the scenario, not lost here
            self.failure = error
        finally:
            self.client.close()


def run_scenario(
    config: ScenarioConfig, driver: Driver, log: Callable[[str], None]
) -> ScenarioResult:
    """Deploy, train, load and move the alias; the outcome as a ScenarioResult."""
    pngs = dataset_pngs(str(config.version_specs[0]["dataset"]), config.data_dir, config.images)
    with deployment(config) as deployed, httpx.Client(base_url=deployed.url, timeout=120) as api:
        log("training versions 1 and 2 in this process")
        versions = register_versions(config, deployed.registry_dir)
        wait_ready(api, deployed.processes, config.startup_timeout)
        checked(move_alias(api, config.model_name, versions[0]), 200)
        job_id = checked(api.post("/jobs", json=config.job_spec), 202)["job_id"]
        log(f"versions {versions} registered, {ALIAS} → {versions[0]}; job {job_id} queued")

        def job_running() -> str | None:
            status = str(job_status(api, job_id)["status"])
            if status in TERMINAL:
                raise ApiError(f"the job ended {status} before the load began")
            return status if status == "running" else None

        wait_until(job_running, timeout=config.startup_timeout, what="the worker to run the job")
        mover = AliasMover(deployed.url, config.model_name, versions, config.requests)
        before = predictions_by_version(api, config.model_name)
        url = f"{deployed.url}/predict?model_name={config.model_name}"
        target = LoadTarget(url, pngs, config.requests, config.concurrency)
        log(f"driving {config.requests} requests at concurrency {config.concurrency}")
        status_at_start = str(job_status(api, job_id)["status"])
        load_started_at = datetime.now(UTC)
        mover.start()
        try:
            load = driver(target)
        finally:
            mover.stopping.set()
            mover.join(timeout=180)
        load_finished_at = datetime.now(UTC)
        status_at_end = str(job_status(api, job_id)["status"])
        if mover.failure is not None:
            raise mover.failure
        after = predictions_by_version(api, config.model_name)
        log(f"load done; waiting for job {job_id} ({status_at_end})")

        def job_ended() -> dict[str, Any] | None:
            job = job_status(api, job_id)
            return job if job["status"] in TERMINAL else None

        job = wait_until(job_ended, timeout=config.job_timeout, what=f"job {job_id} to end")
        history = checked(api.get(f"/models/{config.model_name}/aliases/{ALIAS}/history"), 200)
    return ScenarioResult(
        versions=versions,
        load=load,
        moves=mover.moves,
        alias_history=history,
        job=job,
        job_status_at_load_start=status_at_start,
        job_status_at_load_end=status_at_end,
        load_started_at=load_started_at,
        load_finished_at=load_finished_at,
        predictions_by_version={
            version: count - before.get(version, 0)
            for version, count in after.items()
            if count > before.get(version, 0)
        },
    )
