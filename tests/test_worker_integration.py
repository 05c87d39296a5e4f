"""End to end with a real Redis and real Celery worker processes.

The API runs in-process (TestClient, with its lifespan so orphan recovery
runs); every worker is a separate `celery worker` process, as in production.
"""

from __future__ import annotations

import base64
import io
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.workers import (
    REDIS_HOST,
    REDIS_PORT,
    Process,
    celery_worker,
    crashed_registration,
    ensure_redis,
    redis_database,
    running,
    service_environment,
    wait_until,
)
from trainer.data import load_raw
from worker.settings import Settings

pytestmark = pytest.mark.integration

SMALL_CNN = {"filters1": 8, "filters2": 16, "dense_units": 32}
TERMINAL = {"succeeded", "failed", "cancelled"}


class Deployment:
    """One isolated deployment: its own Redis database, home, registry and data dir."""

    def __init__(self, home: Path, redis_db: int, lease_seconds: float = 60) -> None:
        self.home = home
        self.redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"
        self.data_dir = home / "datasets"
        self.data_dir.mkdir(parents=True)
        extra = {
            "DATA_DIR": str(self.data_dir),
            "DACIAVISION_JOB_LEASE_SECONDS": str(lease_seconds),
        }
        self.environment = service_environment(home, self.redis_url, **extra)
        self.settings = Settings(
            home=home, redis_url=self.redis_url, data_dir=self.data_dir,
            job_lease_seconds=lease_seconds,
        )  # fmt: skip
        self.workers: list[Process] = []

    def start_worker(self, name: str) -> Process:
        process = Process(celery_worker(name), self.environment, self.home / f"{name}.log")
        self.workers.append(process)
        return process


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    ensure_redis()
    database = redis_database("worker_integration")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=database)
    client.flushdb()
    deployment = Deployment(tmp_path / f"home-{uuid.uuid4().hex[:6]}", database, lease_seconds=4)
    try:
        with running(deployment.workers):
            yield deployment
    finally:
        client.flushdb()


def _submit(client: TestClient, **spec: Any) -> str:
    body = {"dataset": "digits", "hyperparameters": SMALL_CNN, "batch_size": 32, **spec}
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _job(client: TestClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    job: dict[str, Any] = response.json()
    return job


def _wait_for_status(
    client: TestClient, job_id: str, statuses: set[str], timeout: float = 240
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = _job(client, job_id)
        return job if job["status"] in statuses else None

    job: dict[str, Any] = wait_until(reached, timeout=timeout, what=f"job {job_id} → {statuses}")
    return job


def _start_training(client: TestClient, model_name: str) -> str:
    """Submit a job of 12 epochs and wait until its first epoch is done; its id."""
    job_id = _submit(client, epochs=12, batch_size=16, model_name=model_name)

    def training() -> bool:
        job = _job(client, job_id)
        return job["status"] == "running" and len(job["history"]) >= 1

    wait_until(training, timeout=180, what="the job to be training")
    return job_id


def _finished_by_another_worker(
    deployment: Deployment, client: TestClient, job_id: str, model_name: str
) -> dict[str, Any]:
    """Start a new worker; the job succeeds there, with exactly one version registered."""
    deployment.start_worker("successor")
    job = _wait_for_status(client, job_id, TERMINAL, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    versions = client.get(f"/models/{model_name}").json()["versions"]
    assert [entry["version"] for entry in versions] == [1]
    return job


def _digit_png(index: int = 0) -> tuple[bytes, int]:
    raw = load_raw("digits", None)
    buffer = io.BytesIO()
    Image.fromarray(raw.x_test[index]).save(buffer, format="PNG")
    return buffer.getvalue(), int(raw.y_test[index])


def test_job_trains_registers_and_serves(deployment: Deployment) -> None:
    deployment.start_worker("solo")
    with TestClient(create_app(deployment.settings)) as client:
        job_id = _submit(client, epochs=8, model_name="digits-e2e")
        seen_running = _wait_for_status(client, job_id, {"running", *TERMINAL})
        job = _wait_for_status(client, job_id, TERMINAL)
        assert job["status"] == "succeeded", job["error"]
        assert seen_running["status"] in {"running", "succeeded"}
        assert [epoch["epoch"] for epoch in job["history"]] == list(range(1, 9))
        assert job["progress"]["epoch"] == 8 and job["progress"]["epochs"] == 8
        assert job["model_name"] == "digits-e2e" and job["version"] == 1

        model = client.get("/models/digits-e2e").json()
        assert [entry["version"] for entry in model["versions"]] == [1]
        assert model["versions"][0]["job_id"] == job_id

        png, label = _digit_png()
        upload = client.post(
            "/predict", params={"model_name": "digits-e2e"},
            files=[("files", ("digit.png", png, "image/png"))],
        )  # fmt: skip
        assert upload.status_code == 200, upload.text
        assert upload.json()["version"] == 1
        uploaded = upload.json()["predictions"][0]
        as_json = client.post(
            "/predict?model_name=digits-e2e&version=1",
            json={"instances": [{"b64": base64.b64encode(png).decode()}]},
        ).json()["predictions"][0]
        assert as_json["label"] == uploaded["label"]
        assert as_json["confidence"] == pytest.approx(uploaded["confidence"], abs=1e-5)

        report = client.get("/metrics", params={"model_name": "digits-e2e"}).json()
        assert report["accuracy"] >= 0.85, report["accuracy"]
        assert len(report["per_class"]) == 10
        assert sum(map(sum, report["confusion_matrix"]["matrix"])) == report["test_samples"]
        # A model that good classifies this clean test digit right.
        assert isinstance(label, int) and uploaded["class_index"] in range(10)


def test_cancel_stops_a_running_job_and_registers_nothing(deployment: Deployment) -> None:
    deployment.start_worker("solo")
    with TestClient(create_app(deployment.settings)) as client:
        job_id = _submit(client, epochs=300, batch_size=8, model_name="digits-cancel")

        def some_epochs_done() -> bool:
            job = _job(client, job_id)
            return job["status"] == "running" and len(job["history"]) >= 1

        wait_until(some_epochs_done, timeout=180, what="the job to finish an epoch")
        response = client.post(f"/jobs/{job_id}/cancel")
        assert response.status_code == 202
        assert response.json()["cancel_requested"] is True
        job = _wait_for_status(client, job_id, TERMINAL, timeout=60)
        assert job["status"] == "cancelled"
        assert job["version"] is None
        assert len(job["history"]) < 300
        assert client.get("/models/digits-cancel").status_code == 404
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_a_failing_job_ends_failed_with_its_message(deployment: Deployment) -> None:
    # A data file without the expected arrays: the loader's error must reach the user.
    np.savez(deployment.data_dir / "mnist.npz", images=np.zeros((2, 28, 28), dtype=np.uint8))
    deployment.start_worker("solo")
    with TestClient(create_app(deployment.settings)) as client:
        job_id = _submit(client, dataset="mnist", epochs=1, model_name="broken")
        job = _wait_for_status(client, job_id, TERMINAL)
        assert job["status"] == "failed"
        assert job["error"]["type"] == "InvalidInputError"
        assert "lacks the arrays" in job["error"]["message"]
        assert "x_train" in job["error"]["message"]
        assert client.get("/models/broken").status_code == 404
        staging = list((deployment.settings.resolved_registry_dir).glob("*/*"))
        assert not [path for path in staging if path.name.isdigit()]


def test_two_workers_run_two_jobs_at_once(deployment: Deployment) -> None:
    deployment.start_worker("first")
    deployment.start_worker("second")
    with TestClient(create_app(deployment.settings)) as client:
        job_ids = [
            _submit(client, epochs=40, batch_size=8, model_name=f"parallel-{index}")
            for index in range(2)
        ]

        def both_running() -> bool:
            return all(_job(client, job_id)["status"] == "running" for job_id in job_ids)

        wait_until(both_running, timeout=180, what="both jobs to run at the same time")
        for job_id in job_ids:
            client.post(f"/jobs/{job_id}/cancel")
            assert _wait_for_status(client, job_id, TERMINAL, timeout=60)["status"] == "cancelled"


def test_a_killed_worker_loses_no_job_and_leaves_no_half_written_model(
    deployment: Deployment,
) -> None:
    first = deployment.start_worker("doomed")
    with TestClient(create_app(deployment.settings)) as client:
        job_id = _start_training(client, "digits-survivor")
        first.kill_group(signal.SIGKILL)  # the worker and its child die mid-epoch
        first.popen.wait(timeout=10)

        job = _finished_by_another_worker(deployment, client, job_id, "digits-survivor")
        assert job["attempts"] == 2
        assert [epoch["epoch"] for epoch in job["history"]] == list(range(1, 13))


def test_a_worker_told_to_stop_gives_its_job_back_without_spending_an_attempt(
    deployment: Deployment,
) -> None:
    # `docker stop`: SIGTERM to the worker's main process alone. Celery's warm shutdown
    # waits for the training; the job is given back at once and the training stops.
    first = deployment.start_worker("stopped")
    with TestClient(create_app(deployment.settings)) as client:
        job_id = _start_training(client, "digits-stopped")
        first.popen.send_signal(signal.SIGTERM)
        first.popen.wait(timeout=60)  # well within an orchestrator's grace period
        assert "given back to the queue: this worker is stopping" in first.log()
        assert _job(client, job_id)["status"] == "queued"

        job = _finished_by_another_worker(deployment, client, job_id, "digits-stopped")
        assert job["attempts"] == 1  # the stop did not count against the job


def test_a_starting_worker_sweeps_staging_folders_left_by_crashes(
    deployment: Deployment,
) -> None:
    old, fresh = crashed_registration(deployment.settings.resolved_registry_dir, 7200)

    worker = deployment.start_worker("sweeper")
    wait_until(lambda: not old.exists(), timeout=120, what="the old staging folder to go")
    assert fresh.is_dir(), "a registration that may still be writing is left alone"
    # The folder goes before the worker's log line reaches its file: wait for the line.
    wait_until(
        lambda: "removed 1 staging folder" in worker.log(),
        timeout=30,
        what="the worker to log that it removed 1 staging folder",
    )
