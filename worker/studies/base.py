"""The StudyStore protocol and the study transitions both backends share.

As in the job store (``worker/jobstore/base.py``): each backend loads a study in an
atomic section (SQLite ``BEGIN IMMEDIATE``, Redis ``WATCH``/``MULTI``), applies one
of the pure functions below and writes the result back, so the backends cannot
drift and two workers advancing the same study at once cannot both start a stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from trainer.errors import ConflictError, NotFoundError
from trainer.selection import Candidate, pick_best
from trainer.study_spec import stage_title

from .models import StageRecord, Study, StudyStatus

Change = Callable[[Study, datetime], Study | None]


class StudyNotFoundError(NotFoundError):
    code = "study_not_found"


class StudyStore(Protocol):
    """Persistent, multi-process store of studies."""

    def create(self, study: Study) -> None: ...
    def get(self, study_id: str) -> Study: ...
    def list(
        self, *, status: StudyStatus | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Study], int]: ...
    def update(self, study_id: str, change: Change) -> Study | None: ...
    def close(self) -> None: ...


def study_not_found(study_id: str) -> StudyNotFoundError:
    return StudyNotFoundError(
        f"Study {study_id!r} does not exist. List studies with GET /studies.", study_id=study_id
    )


@dataclass(frozen=True)
class JobOutcome:
    """What advancing needs to know about one job of a study."""

    status: str
    version: int | None = None
    validation_accuracy: float | None = None
    validation_loss: float | None = None
    validation_samples: int | None = None
    error: str | None = None


def _with_models(stage: StageRecord, outcomes: Mapping[str, JobOutcome]) -> StageRecord:
    models = [
        model.model_copy(
            update={
                "status": outcomes[model.job_id].status,
                "version": outcomes[model.job_id].version,
            }
        )
        if model.job_id in outcomes
        else model
        for model in stage.models
    ]
    return stage.model_copy(update={"models": models})


def _finish_train_stage(
    stage: StageRecord, outcomes: Mapping[str, JobOutcome], now: datetime
) -> StageRecord:
    stage = _with_models(stage, outcomes)
    statuses = [model.status for model in stage.models]
    broken = [m for m in stage.models if m.status in {"failed", "cancelled"}]
    if broken:
        reasons = "; ".join(
            f"{m.label} ({m.job_id}) {m.status}: {outcomes[m.job_id].error or 'no message'}"
            for m in broken
        )
        return stage.model_copy(update={"status": "failed", "error": reasons, "finished_at": now})
    if not all(status == "succeeded" for status in statuses):
        return stage
    winner = None
    # A single training is its own winner, so later stages can build on it.
    if stage.spec.picks or len(stage.models) == 1:
        winner = pick_best(
            [
                Candidate(
                    label=stage_title(stage.name, model.label),
                    model_name=model.model_name,
                    version=outcomes[model.job_id].version or 0,
                    validation_accuracy=outcomes[model.job_id].validation_accuracy or 0.0,
                    validation_loss=outcomes[model.job_id].validation_loss or 0.0,
                    validation_samples=outcomes[model.job_id].validation_samples,
                )
                for model in stage.models
            ]
        )
    return stage.model_copy(update={"status": "succeeded", "winner": winner, "finished_at": now})


def _start_stage(
    stage: StageRecord, earlier: Mapping[str, StageRecord], now: datetime
) -> StageRecord:
    if stage.spec.kind == "select":
        candidates = []
        for name in stage.spec.depends_on:
            best = earlier[name].winner
            # check_stages only lets a select stage depend on stages that have a winner.
            assert best is not None, f"stage {name!r} has no winner"
            # Winners' labels already name their stage (stage_title).
            candidates.append(Candidate(**best.model_dump(include=set(Candidate.model_fields))))
        winner = pick_best(candidates)
        return stage.model_copy(
            update={"status": "succeeded", "winner": winner, "started_at": now, "finished_at": now}
        )
    return stage.model_copy(update={"status": "running", "started_at": now})


def advanced(study: Study, outcomes: Mapping[str, JobOutcome], now: datetime) -> Study | None:
    """The study after its jobs' latest outcomes; None when nothing changed.

    Stages are listed after the stages they depend on, so one pass in order both
    finishes stages and starts the ones they unblock.
    """
    if study.is_terminal:
        return None
    stages: dict[str, StageRecord] = {}
    for stage in study.stages:
        if stage.status == "running" and stage.spec.kind == "train":
            stage = _finish_train_stage(stage, outcomes, now)
        elif stage.status == "pending" and not study.cancel_requested:
            dependencies = [stages[name] for name in stage.spec.depends_on]
            if any(d.status in {"failed", "skipped", "cancelled"} for d in dependencies):
                stage = stage.model_copy(
                    update={
                        "status": "skipped",
                        "finished_at": now,
                        "error": "a stage it depends on did not succeed",
                    }
                )
            elif all(d.status == "succeeded" for d in dependencies):
                stage = _start_stage(stage, stages, now)
        stages[stage.name] = stage
    updated = study.model_copy(update={"stages": list(stages.values())})
    if all(stage.is_terminal for stage in updated.stages):
        succeeded = all(stage.status == "succeeded" for stage in updated.stages)
        updated = updated.model_copy(
            update={"status": "succeeded" if succeeded else "failed", "finished_at": now}
        )
    if updated == study:
        return None
    return updated.model_copy(update={"updated_at": now})


def with_stage_outcome(
    study: Study, stage_name: str, error: str | None, now: datetime
) -> Study | None:
    """A running non-training stage (the report) has ended; None if it already had."""
    stage = study.stage(stage_name)
    if stage.status != "running":
        return None
    status = "failed" if error else "succeeded"
    ended = stage.model_copy(update={"status": status, "error": error, "finished_at": now})
    stages = [ended if s.name == stage_name else s for s in study.stages]
    return study.model_copy(update={"stages": stages, "updated_at": now})


def cancelled(study: Study, now: datetime) -> Study:
    """The study stopped: its open stages cancelled (the caller cancels their jobs)."""
    if study.is_terminal:
        raise ConflictError(
            f"Study {study.study_id!r} already ended with status {study.status!r}; only a "
            "running study can be cancelled.",
            study_id=study.study_id,
            status=study.status,
        )
    stages = [
        stage
        if stage.is_terminal
        else stage.model_copy(update={"status": "cancelled", "finished_at": now})
        for stage in study.stages
    ]
    return study.model_copy(
        update={
            "stages": stages,
            "status": "cancelled",
            "cancel_requested": True,
            "finished_at": now,
            "updated_at": now,
        }
    )
