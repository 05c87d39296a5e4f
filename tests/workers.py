"""Helpers for tests that run real Celery worker and server processes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import redis

# The process helpers live with the benchmarks, which start the same processes;
# the tests import them from here with the Redis helpers.
from bench.processes import (
    Process,
    free_port,
    running,
    service_environment,
    wait_until,
)
from worker.command import celery_worker_command

__all__ = [
    "REDIS_HOST",
    "REDIS_PORT",
    "Process",
    "celery_worker",
    "ensure_redis",
    "free_port",
    "redis_database",
    "redis_url",
    "running",
    "service_environment",
    "wait_until",
]

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


def celery_worker(name: str) -> list[str]:
    """The product's own worker command, under a test node name."""
    return celery_worker_command(node_name=f"{name}@%h")


def crashed_registration(registry_dir: Path, idle_seconds: float) -> tuple[Path, Path]:
    """Two staging folders of a model, as registrations leave them: one idle for
    ``idle_seconds`` (a crash's leftover), one just written (maybe still writing)."""
    staging = registry_dir / "crashed" / ".staging"
    old, fresh = staging / "old", staging / "fresh"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "model.keras").write_bytes(b"half a model")
    long_ago = time.time() - idle_seconds
    for path in (old / "model.keras", old):
        os.utime(path, (long_ago, long_ago))
    return old, fresh
