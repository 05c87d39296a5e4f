"""Requeue jobs whose worker died, and send queued jobs the broker may have lost."""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from celery import Celery

from trainer.registry import FileModelRegistry
from trainer.study_spec import study_of_job
from worker.app import enqueue_training
from worker.jobstore import Job, JobStore
from worker.studies.base import StudyStore
from worker.studies.runtime import ADVANCE_STUDY_TASK, send_study_task

logger = logging.getLogger(__name__)

DEFAULT_RESEND_AFTER_SECONDS = 900.0


def requeue_orphaned_jobs(
    store: JobStore,
    celery_app: Celery,
    max_attempts: int,
    resend_after_seconds: float = DEFAULT_RESEND_AFTER_SECONDS,
    registry: FileModelRegistry | None = None,
) -> list[str]:
    """Put running jobs with an expired lease back on the queue; end hopeless ones.

    An orphan whose version is in ``registry`` (its worker died between publishing and
    recording it) ends as succeeded with that version. Then send every queued job that
    still has to be sent, including those, and have the studies of the jobs ended here
    advance.
    """
    published = None if registry is None else functools.partial(_registered_version, registry)
    requeued, ended = store.requeue_orphans(max_attempts=max_attempts, published=published)
    for job_id in requeued:
        logger.warning("job %s lost its worker; requeued", job_id)
    for job_id in ended:
        logger.error(
            "job %s lost its worker and was ended: succeeded if it had registered its "
            "version, else failed or cancelled",
            job_id,
        )
    try:
        send_queued_jobs(store, celery_app, resend_after_seconds)
    finally:
        _advance_studies_of(ended, celery_app)  # these jobs have ended whatever else fails
    return requeued


def _registered_version(registry: FileModelRegistry, job: Job) -> int | None:
    return registry.version_of_job(job.model_name, job.job_id)


def _advance_studies_of(ended_job_ids: list[str], celery_app: Celery) -> None:
    # A study advances when one of its jobs ends, in the task's own `finally`; a job
    # ended here never got there (its worker died), so without this its study would
    # wait for the next worker start, showing "running" meanwhile.
    studies = {study_of_job(job_id) for job_id in ended_job_ids}
    for study_id in sorted(study for study in studies if study is not None):
        try:
            send_study_task(celery_app, ADVANCE_STUDY_TASK, study_id)
        except Exception:
            # A worker's start advances every running study anyway.
            logger.warning("could not ask to advance study %s", study_id, exc_info=True)


def send_running_studies_an_advance(studies: StudyStore, celery_app: Celery) -> list[str]:
    """Ask the workers to advance every running study; returns the ids asked for.

    A study advances when one of its jobs ends; if that advance failed (the store or
    the broker briefly down) nothing else would move the study on before a worker
    starts. Advancing is idempotent, so asking again is harmless.
    """
    running, _ = studies.list(status="running", limit=10_000)
    asked: list[str] = []
    for study in running:
        try:
            send_study_task(celery_app, ADVANCE_STUDY_TASK, study.study_id)
        except Exception:
            logger.warning("could not ask to advance study %s", study.study_id, exc_info=True)
            continue
        asked.append(study.study_id)
    return asked


def send_queued_jobs(store: JobStore, celery_app: Celery, resend_after_seconds: float) -> list[str]:
    """Send queued jobs never sent (or sent long ago) to the broker; returns the ids sent.

    One job that cannot be sent never stops the others: it is marked unsent and the
    next sweep tries again.
    """
    sent: list[str] = []
    for job_id in store.jobs_to_send(resend_after_seconds):
        try:
            enqueue_training(celery_app, job_id)
        except Exception:
            logger.warning("could not send job %s to the broker; will retry", job_id, exc_info=True)
            try:
                store.mark_unsent(job_id)
            except Exception:
                logger.warning("could not mark job %s as unsent", job_id, exc_info=True)
            continue
        sent.append(job_id)
    return sent


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False


def _parent_of(pid: int) -> int | None:
    try:
        # /proc/PID/stat: "pid (command) state ppid ..."; the command may hold spaces.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def release_jobs_of_dead_local_workers(store: JobStore) -> list[str]:
    """Requeue, without spending an attempt, running jobs of this host's dead workers.

    For a server that has just stopped its own embedded workers: their jobs did not
    fail, the server was restarted. Workers are named ``host:pid``.
    """
    return _release_local_jobs(store, _process_is_gone)


def release_jobs_of_this_workers_children(store: JobStore) -> list[str]:
    """Requeue, without spending an attempt, the running jobs of this process's children.

    For a Celery worker told to stop (``docker stop``, SIGTERM): its pool children are
    training; each sees its job given back within a second and stops, so the warm
    shutdown ends before the orchestrator's kill would spend an attempt of each job.
    """
    me = os.getpid()
    return _release_local_jobs(store, lambda pid: _parent_of(pid) == me)


def _release_local_jobs(store: JobStore, applies: Callable[[int], bool]) -> list[str]:
    hostname = socket.gethostname()
    released: list[str] = []
    jobs, _ = store.list(status="running", limit=1000)
    for job in jobs:
        host, _, pid = (job.worker or "").rpartition(":")
        if host != hostname or not pid.isdigit() or not applies(int(pid)):
            continue
        if store.release(job.job_id, job.worker or ""):
            released.append(job.job_id)
    return released
