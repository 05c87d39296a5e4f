"""Pydantic models of a study as the study store keeps it."""

from __future__ import annotations

import uuid
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, Field

from trainer.files import utc_now
from trainer.selection import Winner
from trainer.study_spec import StageSpec, stage_job_id, stage_model_name

StudyStatus = Literal["running", "succeeded", "failed", "cancelled"]
StageStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled"]
STUDY_STATUSES: Final[tuple[StudyStatus, ...]] = ("running", "succeeded", "failed", "cancelled")
STAGE_TERMINAL: Final[frozenset[str]] = frozenset({"succeeded", "failed", "skipped", "cancelled"})


class StageModel(BaseModel):
    """One training of a stage: its job and, once it succeeded, its registered version."""

    label: str
    job_id: str
    model_name: str
    status: str = Field("pending", description="The job's status; 'pending' before it exists.")
    version: int | None = None


class StageRecord(BaseModel):
    """A stage's plan and where it stands."""

    spec: StageSpec
    status: StageStatus = "pending"
    models: list[StageModel] = Field(default_factory=list)
    winner: Winner | None = None
    error: str | None = None
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_terminal(self) -> bool:
        return self.status in STAGE_TERMINAL


class Study(BaseModel):
    """One study; the study store's copy is the source of truth."""

    study_id: str
    name: str | None = None
    status: StudyStatus = "running"
    request: dict[str, Any] = Field(description="The request as received, defaults filled in.")
    stages: list[StageRecord]
    cancel_requested: bool = False
    error: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    finished_at: AwareDatetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status != "running"

    def stage(self, name: str) -> StageRecord:
        return next(stage for stage in self.stages if stage.name == name)

    @classmethod
    def new(
        cls,
        request: dict[str, Any],
        stages: list[StageSpec],
        name: str | None,
        study_id: str | None = None,
    ) -> Study:
        """A fresh study, with a random id unless one is given; every stage pending, its
        job ids already fixed."""
        now = utc_now()
        study_id = study_id or uuid.uuid4().hex
        records = [
            StageRecord(
                spec=stage,
                models=[
                    StageModel(
                        label=training.label,
                        job_id=stage_job_id(study_id, stage.name, index),
                        model_name=stage_model_name(study_id, stage.name, index),
                    )
                    for index, training in enumerate(stage.trainings)
                ],
            )
            for stage in stages
        ]
        return cls(
            study_id=study_id,
            name=name,
            request=request,
            stages=records,
            created_at=now,
            updated_at=now,
        )
