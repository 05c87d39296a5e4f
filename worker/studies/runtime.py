"""Study task names, how to send them, and advancing with the configured stores.

The service imports this (never ``worker.study_tasks``) to start a study: it creates
the study and advances it once; from then on the workers advance it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Celery

from trainer.registry import FileModelRegistry
from trainer.study_spec import study_of_job
from worker.app import TRAINING_QUEUE, enqueue_training
from worker.jobstore import JobStore, open_job_store
from worker.settings import Settings

from .advance import advance_study
from .base import StudyStore
from .models import Study
from .redis import RedisStudyStore
from .sqlite import SqliteStudyStore

logger = logging.getLogger(__name__)

ADVANCE_STUDY_TASK = "daciavision.advance_study"
STUDY_REPORT_TASK = "daciavision.study_report"


def study_store_for(settings: Settings) -> StudyStore:
    """The study store beside the configured job store."""
    if settings.redis_url:
        return RedisStudyStore(
            settings.redis_url, socket_timeout=settings.redis_socket_timeout_seconds
        )
    return SqliteStudyStore(settings.jobs_db_path)


def reports_dir(settings: Settings) -> Path:
    """Where study reports are published: beside the models, shared by API and workers."""
    return settings.resolved_registry_dir / ".studies"


def send_study_task(celery_app: Celery, task_name: str, study_id: str) -> None:
    celery_app.send_task(task_name, args=[study_id], queue=TRAINING_QUEUE, retry=True)


def advance(
    study_id: str,
    settings: Settings,
    celery_app: Celery,
    *,
    studies: StudyStore | None = None,
    jobs: JobStore | None = None,
) -> Study:
    """Advance one study with the configured stores and queue."""
    return advance_study(
        study_id,
        studies=studies or study_store_for(settings),
        jobs=jobs or open_job_store(settings.redis_url, settings.jobs_db_path),
        registry=FileModelRegistry(settings.resolved_registry_dir),
        enqueue_training=lambda job_id: enqueue_training(celery_app, job_id),
        enqueue_report=lambda sid: send_study_task(celery_app, STUDY_REPORT_TASK, sid),
    )


def advance_after_job(job_id: str, settings: Settings, celery_app: Celery) -> None:
    """After a job ends: advance its study, if it belongs to one. Never raises."""
    study_id = study_of_job(job_id)
    if study_id is None:
        return
    try:
        advance(study_id, settings, celery_app)
    except Exception:
        logger.exception("could not advance study %s after job %s", study_id, job_id)
        try:
            # Another worker tries soon; failing that, the API's sweep asks again.
            send_study_task(celery_app, ADVANCE_STUDY_TASK, study_id)
        except Exception:
            logger.warning("could not ask to advance study %s", study_id, exc_info=True)


def advance_running_studies(settings: Settings, celery_app: Celery) -> list[str]:
    """Advance every running study (on worker start: whatever a crash left behind)."""
    store = study_store_for(settings)
    try:
        running, _ = store.list(status="running", limit=10_000)
    except Exception:
        # A store that is down now is retried when the next job of a study ends.
        logger.exception("could not list running studies")
        return []
    for study in running:
        try:
            # Queued jobs whose messages were lost are the job store's sweep's to send.
            advance(study.study_id, settings, celery_app, studies=store)
        except Exception:
            logger.exception("could not advance study %s", study.study_id)
    return [study.study_id for study in running]
