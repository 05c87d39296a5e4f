"""Studies: several trainings run as stages, advanced by the workers as jobs end.

``runtime.study_store_for(settings)`` opens the store beside the job store.
"""

from __future__ import annotations

from .base import StudyNotFoundError, StudyStore
from .models import StageRecord, Study, StudyStatus
from .redis import RedisStudyStore
from .sqlite import SqliteStudyStore

__all__ = [
    "RedisStudyStore",
    "SqliteStudyStore",
    "StageRecord",
    "Study",
    "StudyNotFoundError",
    "StudyStatus",
    "StudyStore",
]
