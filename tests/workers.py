"""Helpers for tests that run real Celery worker and server processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import redis

from worker.command import celery_worker_command

# Parallel checkouts can each point their tests at their own server.
REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("DACIAVISION_TEST_REDIS_PORT", "6379"))
# Each test module that writes to Redis owns one database, listed here in one place,
# so a module that flushes its database never clears another module's keys.
REDIS_DATABASES = {
    "load": 8,
    "registry_damage": 9,
    "dashboard": 10,
    "worker_integration": 11,
    "study_integration": 12,
    "compose": 13,
    "studies": 14,
    "jobstore": 15,
}


def redis_database(owner: str) -> int:
    return REDIS_DATABASES[owner]


def redis_url(owner: str) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DATABASES[owner]}"


def ensure_redis() -> None:
    """Use the local Redis; start one when none answers (never skip)."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=1)
    try:
        client.ping()
        return
    except redis.ConnectionError:
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", REDIS_HOST, "--port", str(REDIS_PORT),
             "--save", "", "--appendonly", "no"],
            check=True,
        )  # fmt: skip
    wait_until(lambda: _pings(client), timeout=10, what="redis-server to start")


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def wait_until(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_environment(home: Path, redis_url: str | None, **extra: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DACIAVISION_")
        and key not in {"REDIS_URL", "DATA_DIR", "REGISTRY_DIR"}
    }
    environment.update(
        DACIAVISION_HOME=str(home),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}:{environment.get('PATH', '')}",
    )
    if redis_url:
        environment["REDIS_URL"] = redis_url
    environment.update(extra)
    return environment


class Process:
    """A child process in its own process group, with its output kept in a file."""

    def __init__(self, command: list[str], environment: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(
            command, env=environment, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process and every child it forked (a crash of the whole worker)."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.kill_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._log.close()


def celery_worker(name: str) -> list[str]:
    """The product's own worker command, under a test node name."""
    return celery_worker_command(node_name=f"{name}@%h")


@contextmanager
def running(processes: list[Process]) -> Iterator[list[Process]]:
    """Stop every process afterwards; print their logs when the test failed."""
    try:
        yield processes
    except BaseException:
        for process in processes:
            print(f"----- {' '.join(process.command)}\n{process.log()[-6000:]}")
        raise
    finally:
        for process in processes:
            process.stop()
