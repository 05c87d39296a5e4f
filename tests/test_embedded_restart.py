"""Restarting `daciavision serve` in embedded mode costs a running job no attempt.

Real processes: the server, its embedded Celery worker and the training child.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.workers import Process, free_port, running, service_environment, wait_until
from worker.jobstore import SqliteJobStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# Long enough to be still running whenever the server is stopped.
LONG_JOB = {
    "dataset": "digits",
    "epochs": 400,
    "hyperparameters": {"filters1": 4, "filters2": 4, "dense_units": 8},
    "model_name": "restart",
}


def start_server(home: Path, port: int, name: str) -> Process:
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    return Process(command, service_environment(home, None), home / f"{name}.log")


def job_status(url: str, job_id: str) -> dict[str, Any] | None:
    try:
        job: dict[str, Any] = httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()
    except httpx.TransportError:
        return None
    return job


def test_a_server_restart_requeues_its_running_job_without_spending_an_attempt(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = start_server(tmp_path, port, "first")
    with running([first]):
        wait_until(lambda: job_status(url, "none") is not None, timeout=90, what="the API")
        job_id = httpx.post(f"{url}/jobs", json=LONG_JOB, timeout=10).json()["job_id"]
        wait_until(
            lambda: (job_status(url, job_id) or {}).get("progress"),
            timeout=180,
            what="the job to train",
        )
        worker = SqliteJobStore(tmp_path / "jobs.sqlite3").get(job_id).worker
        assert worker is not None
        os.kill(first.popen.pid, signal.SIGTERM)
        first.popen.wait(timeout=60)

    stored = SqliteJobStore(tmp_path / "jobs.sqlite3").get(job_id)
    assert (stored.status, stored.attempts, stored.worker) == ("queued", 0, None)
    with pytest.raises(ProcessLookupError):  # no training child left behind
        os.kill(int(worker.rsplit(":", 1)[1]), 0)
    assert "goes back to the queue" in first.log()

    second = start_server(tmp_path, port, "second")
    with running([second]):
        restarted = wait_until(
            lambda: (job := job_status(url, job_id)) and job["status"] == "running" and job,
            timeout=180,
            what="the job to run again",
        )
        assert SqliteJobStore(tmp_path / "jobs.sqlite3").get(job_id).attempts == 1
        assert restarted["status"] == "running"
        httpx.post(f"{url}/jobs/{job_id}/cancel", timeout=10)
