"""Studies: several trainings run as stages, advanced by the workers as jobs end."""

from __future__ import annotations

from pathlib import Path

from .base import StudyNotFoundError, StudyStore
from .models import StageRecord, Study, StudyStatus
from .redis import RedisStudyStore
from .sqlite import SqliteStudyStore


def open_study_store(redis_url: str | None, sqlite_path: Path) -> StudyStore:
    """Beside the jobs: Redis when a URL is given, else the embedded SQLite file."""
    if redis_url:
        return RedisStudyStore(redis_url)
    return SqliteStudyStore(sqlite_path)


__all__ = [
    "RedisStudyStore",
    "SqliteStudyStore",
    "StageRecord",
    "Study",
    "StudyNotFoundError",
    "StudyStatus",
    "StudyStore",
    "open_study_store",
]
