"""Celery tasks: thin and idempotent, keyed by job_id.

The worker's main process imports TensorFlow before it forks (``worker.app``)
but never runs it: each job trains in a child forked for it alone.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from trainer.registry import FileModelRegistry
from worker.app import TRAIN_TASK, app
from worker.jobstore import open_job_store
from worker.recovery import release_jobs_of_this_workers_children, requeue_orphaned_jobs
from worker.settings import get_settings
from worker.studies.runtime import advance_after_job

logger = logging.getLogger(__name__)


@app.task(name=TRAIN_TASK, acks_late=True, ignore_result=True)
def train_job(job_id: str) -> dict[str, Any]:
    """Run training job ``job_id`` from the job store; safe to deliver twice."""
    from worker.runner import run_job

    try:
        return run_job(job_id)
    finally:
        # A job of a study ending (however it ended) may unblock the study's next stages.
        advance_after_job(job_id, get_settings(), app)


@signals.worker_ready.connect
def _sweep_registry_staging(**_: Any) -> None:
    # A worker killed mid-registration leaves a staging folder nobody will publish;
    # the registry promises a crash never leaks disk, so the next worker start removes it.
    settings = get_settings()
    removed = FileModelRegistry(settings.resolved_registry_dir).cleanup_staging(
        settings.staging_max_age_seconds
    )
    if removed:
        logger.info("removed %d staging folder(s) left by crashed registrations", removed)


@signals.worker_ready.connect
def _requeue_orphaned_jobs(**_: Any) -> None:
    # A worker that starts after a crash gives the crashed worker's jobs back
    # to the queue as soon as their leases have run out.
    settings = get_settings()
    store = open_job_store(
        settings.redis_url,
        settings.jobs_db_path,
        socket_timeout=settings.redis_socket_timeout_seconds,
    )
    registry = FileModelRegistry(settings.resolved_registry_dir)
    requeue_orphaned_jobs(
        store, app, settings.job_max_attempts, settings.job_resend_after_seconds, registry
    )


@signals.worker_shutting_down.connect
def _give_back_running_jobs(**_: Any) -> None:
    # A warm shutdown (docker stop, SIGTERM) waits for running tasks, and a training
    # outlasts any grace period: the orchestrator's kill would then spend one of the
    # job's attempts and lose its progress, as a crash does. A stop on purpose is not
    # the job's fault: give the jobs back now; each training sees that within a second
    # and stops, and the next sweep sends the jobs again.
    settings = get_settings()
    try:
        store = open_job_store(
            settings.redis_url,
            settings.jobs_db_path,
            socket_timeout=settings.redis_socket_timeout_seconds,
        )
        released = release_jobs_of_this_workers_children(store)
    except Exception:
        logger.warning("could not give back the running jobs at shutdown", exc_info=True)
        return
    for job_id in released:
        logger.warning("job %s given back to the queue: this worker is stopping", job_id)
