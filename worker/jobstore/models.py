"""Pydantic models of a training job as the job store keeps it."""

from __future__ import annotations

import uuid
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, Field

from trainer.files import utc_now
from trainer.progress import EpochProgress as EpochProgress  # re-exported: one type end to end

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TerminalStatus = Literal["succeeded", "failed", "cancelled"]

JOB_STATUSES: Final[tuple[JobStatus, ...]] = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
TERMINAL: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled"})


class JobError(BaseModel):
    """Why a job failed: the exception type name and a human-readable message."""

    type: str
    message: str


class Job(BaseModel):
    """One training job; the job store's copy is the source of truth."""

    job_id: str
    status: JobStatus
    spec: dict[str, Any]
    model_name: str
    version: int | None = None
    progress: EpochProgress | None = None
    history: list[EpochProgress] = Field(default_factory=list)
    error: JobError | None = None
    cancel_requested: bool = False
    attempts: int = 0
    worker: str | None = None
    # AwareDatetime rejects naive datetimes, so comparisons between stored and
    # current times can never mix naive and aware values.
    created_at: AwareDatetime
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    updated_at: AwareDatetime
    lease_expires_at: AwareDatetime | None = None
    # When the job was last handed to the broker; None while a queued job still has
    # to be sent (after a lost worker, a release, or a failed send).
    enqueued_at: AwareDatetime | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.status in TERMINAL

    @classmethod
    def new(cls, spec: dict[str, Any], model_name: str, job_id: str | None = None) -> Job:
        """A fresh queued job, created now, with a random id unless one is given."""
        now = utc_now()
        return cls(
            job_id=job_id or uuid.uuid4().hex,
            status="queued",
            spec=spec,
            model_name=model_name,
            created_at=now,
            updated_at=now,
            enqueued_at=now,
        )
