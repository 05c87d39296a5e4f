"""Requeue jobs whose worker died: the job store's leases tell which."""

from __future__ import annotations

import logging

from celery import Celery

from worker.app import enqueue_training
from worker.jobstore import JobStore

logger = logging.getLogger(__name__)


def requeue_orphaned_jobs(store: JobStore, celery_app: Celery, max_attempts: int) -> list[str]:
    """Put running jobs with an expired lease back on the queue; fail hopeless ones."""
    requeued, failed = store.requeue_orphans(max_attempts=max_attempts)
    for job_id in requeued:
        logger.warning("job %s lost its worker; requeued", job_id)
        enqueue_training(celery_app, job_id)
    for job_id in failed:
        logger.error("job %s lost its worker %d times; marked failed", job_id, max_attempts)
    return requeued
