"""The job store: the source of truth for which training jobs exist and their state.

Celery only carries messages; it reports PENDING for ids it never saw, so the
API and the workers ask this store, never Celery, what a job is doing.
"""

from __future__ import annotations

from pathlib import Path

from .base import JobStore
from .models import TERMINAL, EpochProgress, Job, JobError, JobStatus, TerminalStatus
from .redis import RedisJobStore
from .sqlite import SqliteJobStore


def open_job_store(
    redis_url: str | None, sqlite_path: Path, *, socket_timeout: float = 5.0
) -> JobStore:
    """The Redis store when a URL is given (multi-machine), else the embedded SQLite file."""
    if redis_url:
        return RedisJobStore(redis_url, socket_timeout=socket_timeout)
    return SqliteJobStore(sqlite_path)


__all__ = [
    "TERMINAL",
    "EpochProgress",
    "Job",
    "JobError",
    "JobStatus",
    "JobStore",
    "RedisJobStore",
    "SqliteJobStore",
    "TerminalStatus",
    "open_job_store",
]
