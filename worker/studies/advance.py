"""Advancing a study: read its jobs' outcomes, apply the pure transition, start stages.

Called by a worker after each job of a study ends, by the report task, and for every
running study when a worker starts, never by a loop in the API: a study survives an
API restart and a killed worker. Safe to run twice or concurrently: the transition
is a compare-and-set in the store, job ids are derived from study, stage and index,
and creating a job that exists is a conflict we skip.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from trainer.errors import ConflictError, CorruptModelError, DaciaVisionError, JobNotFoundError
from trainer.registry import FileModelRegistry
from trainer.spec import parse_training_spec
from trainer.study_spec import StageTraining, merged
from worker.jobstore import Job, JobError, JobStore

from .base import Change, JobOutcome, StudyStore, advanced
from .models import StageModel, Study

logger = logging.getLogger(__name__)

Enqueue = Callable[[str], None]


def _outcome(job: Job, registry: FileModelRegistry) -> JobOutcome:
    error = f"{job.error.type}: {job.error.message}" if job.error else None
    if job.status != "succeeded" or job.version is None:
        return JobOutcome(status=job.status, error=error)
    try:
        card = registry.get_card(job.model_name, job.version)
    except (DaciaVisionError, CorruptModelError) as problem:
        return JobOutcome(status="failed", error=f"its model card is unreadable: {problem}")
    return JobOutcome(
        status="succeeded",
        version=job.version,
        validation_accuracy=card.metrics.validation.accuracy,
        validation_loss=card.metrics.validation.loss,
        validation_samples=card.metrics.validation.samples,
    )


def collect_outcomes(
    study: Study, jobs: JobStore, registry: FileModelRegistry
) -> dict[str, JobOutcome]:
    """The jobs of the study's running stages that exist, by job id."""
    outcomes: dict[str, JobOutcome] = {}
    for stage in study.stages:
        if stage.status != "running":
            continue
        for model in stage.models:
            try:
                outcomes[model.job_id] = _outcome(jobs.get(model.job_id), registry)
            except JobNotFoundError:
                continue  # not created yet: ensure_jobs will
    return outcomes


def resolve_training(
    study: Study, training: StageTraining, model: StageModel, registry: FileModelRegistry
) -> dict[str, Any]:
    """The full training spec of one stage training, earlier winners filled in."""
    if training.from_winner is not None:
        winner = study.stage(training.from_winner).winner
        assert winner is not None  # the stage started only after its dependencies succeeded
        base = registry.get_card(winner.model_name, winner.version).spec.model_dump(mode="json")
    else:
        assert training.spec is not None  # the StageTraining validator guarantees one source
        base = training.spec
    spec = merged(base, {**training.overrides, "model_name": model.model_name})
    if training.reference_winner is not None:
        reference = study.stage(training.reference_winner).winner
        assert reference is not None
        spec = merged(
            spec,
            {
                "augmentation": {
                    "reference_model": {
                        "model_name": reference.model_name,
                        "version": reference.version,
                    }
                }
            },
        )
    return parse_training_spec(spec).model_dump(mode="json")


def ensure_jobs(
    study: Study,
    jobs: JobStore,
    registry: FileModelRegistry,
    enqueue: Enqueue,
) -> list[str]:
    """Create and enqueue the missing jobs of running train stages; returns their ids.

    A job whose hand-over fails is marked unsent, so the job store's sweep (the API's
    and every starting worker's) sends it again. Jobs already handed over are not sent
    again here: each extra message costs a worker slot until it sees the job is taken.
    """
    if study.is_terminal:
        return []
    started = []
    for stage in study.stages:
        if stage.status != "running" or stage.spec.kind != "train":
            continue
        for training, model in zip(stage.spec.trainings, stage.models, strict=True):
            try:
                jobs.get(model.job_id)
                continue
            except JobNotFoundError:
                pass
            failure = None
            try:
                spec = resolve_training(study, training, model, registry)
            except (ValidationError, DaciaVisionError) as error:
                spec, failure = {"model_name": model.model_name}, error
            job = Job.new(spec=spec, model_name=model.model_name)
            job = job.model_copy(update={"job_id": model.job_id})
            try:
                jobs.create(job)
            except ConflictError:
                continue  # another advancer created it a moment ago
            if failure is not None:
                reason = JobError(type=type(failure).__name__, message=str(failure))
                jobs.finish(job.job_id, "failed", error=reason)
                continue
            try:
                enqueue(job.job_id)
            except Exception:
                jobs.mark_unsent(job.job_id)
                raise
            started.append(job.job_id)
    return started


def advance_study(
    study_id: str,
    *,
    studies: StudyStore,
    jobs: JobStore,
    registry: FileModelRegistry,
    enqueue_training: Enqueue,
    enqueue_report: Enqueue,
) -> Study:
    """Move the study on as far as its jobs allow; idempotent."""
    for _ in range(10):  # a job failing at creation may finish a stage: look again
        study = studies.get(study_id)
        outcomes = collect_outcomes(study, jobs, registry)
        # Read again when the update declines: the study may have been cancelled since.
        study = studies.update(study_id, _advancer(outcomes)) or studies.get(study_id)
        started = ensure_jobs(study, jobs, registry, enqueue_training)
        if started and studies.get(study_id).is_terminal:
            # Ended (cancelled) while these were created: cancel_study could not see them.
            _cancel_jobs(jobs, started)
            return studies.get(study_id)
        if started or not _has_unstarted_failures(study, jobs):
            break
    report = next((s for s in study.stages if s.spec.kind == "report"), None)
    if report is not None and report.status == "running" and not study.is_terminal:
        enqueue_report(study_id)
    return study


def _cancel_jobs(jobs: JobStore, job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            jobs.request_cancel(job_id)
        except (ConflictError, JobNotFoundError):
            continue  # ended already


def _advancer(outcomes: dict[str, JobOutcome]) -> Change:
    return lambda study, now: advanced(study, outcomes, now)


def _has_unstarted_failures(study: Study, jobs: JobStore) -> bool:
    # A job that failed at creation ended without a worker: nothing else will advance.
    for stage in study.stages:
        if stage.status == "running" and stage.spec.kind == "train":
            for model in stage.models:
                try:
                    if jobs.get(model.job_id).status == "failed" and model.status != "failed":
                        return True
                except JobNotFoundError:
                    continue
    return False
