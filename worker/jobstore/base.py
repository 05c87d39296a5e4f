"""The JobStore protocol and the state transitions both backends share.

Each backend loads a job inside an atomic section (an SQLite ``BEGIN IMMEDIATE``
transaction, a Redis ``WATCH``/``MULTI`` loop), applies one of the pure
functions below and writes the result back. Keeping the rules here means the
two backends cannot drift apart in behaviour.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from trainer.errors import ConflictError, JobNotFoundError, LeaseLostError

from .models import EpochProgress, Job, JobError, JobStatus, TerminalStatus

Clock = Callable[[], datetime]
# The version a job registered in the model registry, or None (see recovered_orphan).
PublishedVersion = Callable[[Job], int | None]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class JobStore(Protocol):
    """Persistent, multi-process store of training jobs."""

    def create(self, job: Job) -> None: ...
    def get(self, job_id: str) -> Job: ...
    def list(
        self,
        *,
        status: JobStatus | None = None,
        model_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]: ...
    def claim(self, job_id: str, worker: str, lease_seconds: float) -> Job | None: ...
    def renew_lease(self, job_id: str, worker: str, lease_seconds: float) -> bool: ...
    def record_epoch(
        self, job_id: str, progress: EpochProgress, *, worker: str | None = None
    ) -> None: ...
    def finish(
        self,
        job_id: str,
        status: TerminalStatus,
        *,
        version: int | None = None,
        error: JobError | None = None,
        worker: str | None = None,
    ) -> Job: ...
    def release(self, job_id: str, worker: str) -> bool: ...
    def mark_unsent(self, job_id: str) -> None: ...
    def request_cancel(self, job_id: str) -> Job: ...
    def is_cancel_requested(self, job_id: str) -> bool: ...
    # builtins.list: inside the class body, plain ``list`` names the method above.
    def requeue_orphans(
        self, max_attempts: int = 3, published: PublishedVersion | None = None
    ) -> tuple[builtins.list[str], builtins.list[str]]: ...
    def jobs_to_send(self, resend_after_seconds: float) -> builtins.list[str]: ...
    def count_by_status(self) -> dict[str, int]: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


def microseconds(moment: datetime) -> int:
    """Microseconds since the Unix epoch."""
    # Integers sort exactly, unlike ISO strings with offsets or float timestamps.
    return (moment - EPOCH) // timedelta(microseconds=1)


def job_not_found(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(
        f"Job {job_id!r} does not exist. List jobs with GET /jobs to find a valid job_id.",
        job_id=job_id,
    )


def duplicate_job(job_id: str) -> ConflictError:
    return ConflictError(
        f"Job {job_id!r} already exists; create the job with a new id (Job.new makes one).",
        job_id=job_id,
    )


def lease_expired(job: Job, now: datetime) -> bool:
    # A running job without a lease can only come from a crash mid-write in an
    # older version; treating it as expired lets the orphan sweep recover it.
    return job.lease_expires_at is None or job.lease_expires_at <= now


def claimed(job: Job, worker: str, lease_seconds: float, now: datetime) -> Job | None:
    """The job as taken by ``worker``, or None when it may not be taken now."""
    # A cancel request outranks a takeover: a new worker would only have to stop again.
    takeover = job.status == "running" and lease_expired(job, now)
    if job.cancel_requested or not (job.status == "queued" or takeover):
        return None
    return job.model_copy(
        update={
            "status": "running",
            "worker": worker,
            "started_at": job.started_at or now,
            "attempts": job.attempts + 1,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            # Each attempt trains from epoch 1 again; keeping the previous
            # attempt's epochs would show duplicated epoch numbers.
            "progress": None,
            "history": [],
            "updated_at": now,
        }
    )


def renewed(job: Job, worker: str, lease_seconds: float, now: datetime) -> Job | None:
    """The job with a longer lease, or None when ``worker`` no longer runs it."""
    if job.status != "running" or job.worker != worker:
        return None
    return job.model_copy(
        update={"lease_expires_at": now + timedelta(seconds=lease_seconds), "updated_at": now}
    )


def _ended(job: Job, refusal: str) -> ConflictError:
    return ConflictError(
        f"Job {job.job_id!r} already ended with status {job.status!r}; {refusal}",
        job_id=job.job_id,
        status=job.status,
    )


def _check_holder(job: Job, worker: str | None) -> None:
    # Fencing: a worker whose lease expired may still be training. Once another worker
    # has claimed the job (or the sweep requeued or failed it), the old one's writes
    # are refused, and the refusal tells it to stop.
    if worker is None:
        return
    if job.status != "running" or job.worker != worker:
        holder = f"worker {job.worker!r}" if job.status == "running" else "no worker"
        raise LeaseLostError(
            f"Job {job.job_id!r} is no longer held by worker {worker!r} (status "
            f"{job.status!r}, held by {holder}); its lease expired. Stop working on it.",
            job_id=job.job_id,
            status=job.status,
        )


def with_epoch(job: Job, progress: EpochProgress, now: datetime, worker: str | None = None) -> Job:
    _check_holder(job, worker)
    if job.is_terminal:
        # A worker that lost its job (declared lost, then failed) must stop
        # writing; the error tells it so.
        raise _ended(job, "epochs can only be recorded while it is queued or running.")
    return job.model_copy(
        update={"progress": progress, "history": [*job.history, progress], "updated_at": now}
    )


def finished(
    job: Job,
    status: TerminalStatus,
    version: int | None,
    error: JobError | None,
    now: datetime,
    worker: str | None = None,
) -> Job:
    _check_holder(job, worker)
    if job.is_terminal:
        raise _ended(job, f"it cannot be finished again as {status!r}.")
    return job.model_copy(
        update={
            "status": status,
            "version": version,
            "error": error,
            "finished_at": now,
            "lease_expires_at": None,
            "updated_at": now,
        }
    )


def cancel_requested(job: Job, now: datetime) -> Job:
    if job.is_terminal:
        raise _ended(job, "only queued or running jobs can be cancelled.")
    if job.status == "queued":
        # No worker holds it yet, so nobody else has to act: cancel outright.
        return job.model_copy(
            update={
                "status": "cancelled",
                "cancel_requested": True,
                "finished_at": now,
                "updated_at": now,
            }
        )
    # A running training is stopped cooperatively by the worker's callback,
    # which then calls finish(..., "cancelled").
    return job.model_copy(update={"cancel_requested": True, "updated_at": now})


def recovered_orphan(
    job: Job, max_attempts: int, now: datetime, published: PublishedVersion | None = None
) -> Job | None:
    """What becomes of a running job whose worker vanished, or None if it is not one.

    ``published`` finds the version the job registered, if any: a worker can die after
    publishing and before recording it, and such a job is done, not to be trained again
    nor failed (nor cancelled: a cancel that arrives after publishing is too late).
    """
    if job.status != "running" or not lease_expired(job, now):
        return None
    base = {"worker": None, "lease_expires_at": None, "updated_at": now, "enqueued_at": None}
    version = published(job) if published is not None else None
    if version is not None:
        done = {"status": "succeeded", "version": version, "error": None, "finished_at": now}
        return job.model_copy(update={**base, **done})
    if job.cancel_requested:
        # Someone asked to stop it and nobody runs it any more: honour the request.
        return job.model_copy(update={**base, "status": "cancelled", "finished_at": now})
    if job.attempts < max_attempts:
        return job.model_copy(update={**base, "status": "queued"})
    error = JobError(
        type="WorkerLost",
        message=(
            f"Job {job.job_id!r} was abandoned: its worker stopped responding "
            f"{job.attempts} times (max_attempts={max_attempts}). A worker that dies "
            "repeatedly often ran out of memory; check the worker logs, reduce the "
            "batch size or image size, and submit the job again."
        ),
    )
    return job.model_copy(update={**base, "status": "failed", "error": error, "finished_at": now})


def released(job: Job, worker: str, now: datetime) -> Job | None:
    """A running job given back by (or for) a worker that was stopped on purpose.

    The attempt is not counted: a restart of the service is not the job's fault,
    while ``max_attempts`` is there to stop jobs that kill their workers.
    """
    if job.status != "running" or job.worker != worker:
        return None
    return job.model_copy(
        update={
            "status": "queued",
            "worker": None,
            "lease_expires_at": None,
            "attempts": max(0, job.attempts - 1),
            "progress": None,
            "history": [],
            "enqueued_at": None,
            "updated_at": now,
        }
    )


def due_for_sending(job: Job, resend_after_seconds: float, now: datetime) -> Job | None:
    """The job stamped as sent now, if it is queued and was never sent or long ago.

    A queued job whose broker message was lost would otherwise wait forever; sending
    it again is harmless, since a second delivery of a taken job is a no-op.
    """
    if job.status != "queued" or job.cancel_requested:
        return None
    cutoff = now - timedelta(seconds=resend_after_seconds)
    if job.enqueued_at is not None and job.enqueued_at > cutoff:
        return None
    return job.model_copy(update={"enqueued_at": now, "updated_at": now})


def unsent(job: Job, now: datetime) -> Job | None:
    """A queued job whose hand-over to the broker failed: the next sweep sends it."""
    if job.status != "queued":
        return None
    return job.model_copy(update={"enqueued_at": None, "updated_at": now})


Change = Callable[[Job, datetime], Job | None]


class JobTransitions:
    """The state-changing calls of a JobStore, written once on top of ``_update``.

    A backend provides ``get`` and an atomic ``_update(job_id, change)`` that
    loads the job, applies ``change`` and writes the result back (nothing when
    ``change`` returns None).
    """

    def get(self, job_id: str) -> Job:
        raise NotImplementedError

    def _update(self, job_id: str, change: Change) -> Job | None:
        raise NotImplementedError

    def claim(self, job_id: str, worker: str, lease_seconds: float) -> Job | None:
        """Take the job for ``worker`` if it is queued or its lease expired; else None."""
        return self._update(job_id, lambda job, now: claimed(job, worker, lease_seconds, now))

    def renew_lease(self, job_id: str, worker: str, lease_seconds: float) -> bool:
        """Extend the lease; False if ``worker`` no longer runs this job."""
        result = self._update(job_id, lambda job, now: renewed(job, worker, lease_seconds, now))
        return result is not None

    def record_epoch(
        self, job_id: str, progress: EpochProgress, *, worker: str | None = None
    ) -> None:
        """Set the latest progress and append it to the job's history.

        A worker passes its name: LeaseLostError if it no longer holds the job.
        """
        self._update(job_id, lambda job, now: with_epoch(job, progress, now, worker))

    def finish(
        self,
        job_id: str,
        status: TerminalStatus,
        *,
        version: int | None = None,
        error: JobError | None = None,
        worker: str | None = None,
    ) -> Job:
        """Move the job to a terminal status; ConflictError if it already ended.

        A worker passes its name: LeaseLostError if it no longer holds the job.
        """
        ended = self._update(
            job_id, lambda job, now: finished(job, status, version, error, now, worker)
        )
        assert ended is not None  # finished() never declines, it raises
        return ended

    def release(self, job_id: str, worker: str) -> bool:
        """Put a job back in the queue without spending an attempt; False if not held."""
        return self._update(job_id, lambda job, now: released(job, worker, now)) is not None

    def mark_unsent(self, job_id: str) -> None:
        """Record that sending the queued job failed, so the next sweep sends it."""
        self._update(job_id, unsent)

    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or flag a running one for its worker to stop."""
        cancelled = self._update(job_id, cancel_requested)
        assert cancelled is not None  # cancel_requested() never declines, it raises
        return cancelled

    def is_cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked to cancel the job (checked by the training callback)."""
        return self.get(job_id).cancel_requested
