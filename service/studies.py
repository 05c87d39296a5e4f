"""Studies seen from the API: create (and advance once), view with live job progress, cancel.

The API only starts a study; the workers advance it as its jobs end.
"""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError

from service.deps import JobDispatcher
from service.errors import BrokerUnavailableError
from service.idempotency import Replay
from service.jobs import check_augmentation_targets, check_resources
from service.schemas_studies import StageJobView, StageView, StudyView
from trainer.errors import ConflictError, DaciaVisionError, JobNotFoundError
from trainer.registry import FileModelRegistry
from trainer.study_presets import expand
from trainer.study_spec import (
    StageSpec,
    StudyRequest,
    check_labels,
    check_stages,
    training_specs,
)
from worker.jobstore import JobStore
from worker.settings import Settings
from worker.studies import Study, StudyStore
from worker.studies.base import cancelled
from worker.studies.runtime import advance

logger = logging.getLogger(__name__)


def create_study(
    request: StudyRequest,
    settings: Settings,
    studies: StudyStore,
    jobs: JobStore,
    dispatcher: JobDispatcher,
    registry: FileModelRegistry,
    study_id: str | None = None,
) -> tuple[Study, bool]:
    """Store the study with its whole plan, then start the stages that can start; the
    study, and whether it already existed under ``study_id`` (an idempotency key's replay)."""
    received = request.model_dump(mode="json", exclude_none=True)
    replay = Replay("study", studies.get, lambda study: study.request)
    if (existing := replay.find(study_id, received)) is not None:
        return _advanced_if_running(existing, settings, dispatcher, studies, jobs), True
    stages = check_stages(expand(request))
    check_labels(stages)
    _check_trainings(stages, settings, registry)
    study = Study.new(received, stages, request.name, study_id)
    if (existing := replay.create(study_id, received, lambda: studies.create(study))) is not None:
        return existing, True
    try:
        return advance(
            study.study_id, settings, dispatcher.celery_app, studies=studies, jobs=jobs
        ), False
    except (OperationalError, OSError) as error:
        # Stored but not started: the next worker to start advances it.
        raise BrokerUnavailableError(
            f"the job queue is unreachable ({error}); study {study.study_id} was stored and "
            "starts when a worker starts"
        ) from error


def _advanced_if_running(
    study: Study,
    settings: Settings,
    dispatcher: JobDispatcher,
    studies: StudyStore,
    jobs: JobStore,
) -> Study:
    # A retry after a 503 finds the study stored but not started: starting what can
    # start now is what the client retried for (advancing twice starts nothing twice).
    if study.is_terminal:
        return study
    try:
        return advance(study.study_id, settings, dispatcher.celery_app, studies=studies, jobs=jobs)
    except (OperationalError, OSError):
        logger.warning("study %s: the job queue is still unreachable", study.study_id)
        return study


def _check_trainings(
    stages: list[StageSpec], settings: Settings, registry: FileModelRegistry
) -> None:
    # What POST /jobs checks, for every spec a study's trainings may run with: a study
    # must not be a way around the service's limits.
    for training in training_specs(stages):
        try:
            check_resources(training.spec, settings)
            if not training.reference_from_winner:
                check_augmentation_targets(training.spec, registry)
        except DaciaVisionError as error:
            error.message = (
                f"stage {training.stage!r}, training {training.label!r}: {error.message}"
            )
            error.args = (error.message,)
            raise


def cancel_study(study_id: str, studies: StudyStore, jobs: JobStore) -> Study:
    """Stop the study and cancel its queued and running jobs."""
    study = studies.update(study_id, cancelled)
    assert study is not None  # cancelled() never declines, it raises
    for stage in study.stages:
        for model in stage.models:
            try:
                jobs.request_cancel(model.job_id)
            except (ConflictError, JobNotFoundError):
                continue  # ended already, or never created
    return study


def study_view(study: Study, jobs: JobStore) -> StudyView:
    """The study with each stage's jobs and their latest epoch."""
    stages = []
    for stage in study.stages:
        job_views = []
        for model in stage.models:
            try:
                job = jobs.get(model.job_id)
            except JobNotFoundError:
                job_views.append(StageJobView(**model.model_dump()))
                continue
            epochs = job.progress.epochs if job.progress else int(job.spec.get("epochs") or 1)
            epoch = job.progress.epoch if job.progress else 0
            done = 1.0 if job.status == "succeeded" else epoch / max(1, epochs)
            job_views.append(
                StageJobView(
                    **{**model.model_dump(), "status": job.status, "version": job.version},
                    epoch=epoch,
                    epochs=epochs,
                    progress=round(done, 4),
                    error=job.error.message if job.error else None,
                )
            )
        if stage.is_terminal or stage.status == "pending":
            progress = 1.0 if stage.status == "succeeded" else 0.0
        else:
            progress = sum(j.progress for j in job_views) / max(1, len(job_views))
        stages.append(
            StageView(
                name=stage.name,
                kind=stage.spec.kind,
                description=stage.spec.description,
                depends_on=stage.spec.depends_on,
                status=stage.status,
                progress=round(progress, 4),
                jobs=job_views,
                winner=stage.winner,
                error=stage.error,
                started_at=stage.started_at,
                finished_at=stage.finished_at,
            )
        )
    overall = sum(stage.progress for stage in stages) / max(1, len(stages))
    last = study.stages[-1] if study.stages else None
    report = last is not None and last.status == "succeeded" and last.spec.kind == "report"
    return StudyView(
        study_id=study.study_id,
        name=study.name,
        status=study.status,
        progress=round(overall, 4),
        request=study.request,
        stages=stages,
        cancel_requested=study.cancel_requested,
        created_at=study.created_at,
        updated_at=study.updated_at,
        finished_at=study.finished_at,
        report_url=f"/studies/{study.study_id}/report" if report else None,
    )
