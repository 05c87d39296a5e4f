"""Response bodies of the studies routes: what a dashboard needs to show live progress."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from trainer.selection import Winner
from worker.studies.models import StageStatus, StudyStatus


class StageJobView(BaseModel):
    """One training of a stage: its job, live progress and registered version."""

    label: str
    job_id: str = Field(description="A normal job: GET /jobs/{job_id} shows it too.")
    model_name: str
    status: str = Field(description="The job's status; 'pending' before the stage starts.")
    version: int | None = None
    epoch: int = 0
    epochs: int | None = None
    progress: float = Field(0.0, description="Finished share of the job, 0 to 1.")
    error: str | None = None


class StageView(BaseModel):
    name: str
    kind: str
    description: str
    depends_on: list[str]
    status: StageStatus
    progress: float = Field(description="0 to 1: the mean of its jobs' progress.")
    jobs: list[StageJobView]
    winner: Winner | None = Field(
        None, description="The picked model and why (validation figures only)."
    )
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class StudyView(BaseModel):
    study_id: str
    name: str | None
    status: StudyStatus
    progress: float = Field(description="0 to 1 over all stages.")
    request: dict[str, Any]
    stages: list[StageView]
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    report_url: str | None = Field(None, description="Set once the report is published.")


class StudyList(BaseModel):
    items: list[StudyView]
    total: int
    limit: int
    offset: int
