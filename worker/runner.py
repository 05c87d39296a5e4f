"""Runs one training job inside a worker child: claim, train, register, finish.

Imported only from inside the Celery task, so TensorFlow loads in the child.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from trainer.errors import LeaseLostError, TrainingCancelledError
from trainer.registry import FileModelRegistry
from trainer.run import train_and_register
from trainer.spec import parse_training_spec
from worker.jobstore import EpochProgress, Job, JobError, JobStore, open_job_store
from worker.settings import Settings, get_settings

logger = logging.getLogger(__name__)
ResultT = TypeVar("ResultT")

# The exit status of a worker child ended because its training would not stop.
EXIT_UNRESPONSIVE_TRAINING = 70


class _LeaseKeeper(threading.Thread):
    """Renews the job's lease, mirrors its cancel flag and watches its time limit.

    Keeping the cancel flag in a local Event makes the per-batch cancel check
    free, instead of one store round trip per batch.
    """

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        worker: str,
        lease_seconds: float,
        time_limit_seconds: float,
        stop_grace_seconds: float = math.inf,
    ) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.store, self.job_id, self.worker = store, job_id, worker
        self.lease_seconds = lease_seconds
        self.deadline = time.monotonic() + time_limit_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self.stop_asked_at: float | None = None
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self.time_exceeded = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = min(1.0, self.lease_seconds / 4)
        renew_every = max(1, int(self.lease_seconds / 3 / interval))
        ticks = 0
        while not self.stopped.wait(interval):
            ticks += 1
            if time.monotonic() >= self.deadline:
                self.time_exceeded.set()
                self.cancel_requested.set()
            try:
                job = self.store.get(self.job_id)
                if job.cancel_requested:
                    self.cancel_requested.set()
                if job.status != "running" or job.worker != self.worker:
                    # Given back (its worker is stopping) or taken over: stop now, not at
                    # the next renewal, and write nothing more.
                    self.lease_lost.set()
                    self.cancel_requested.set()
                if ticks % renew_every == 0 and not self.store.renew_lease(
                    self.job_id, self.worker, self.lease_seconds
                ):
                    # Someone else owns the job now (we were presumed dead): stop,
                    # and write nothing more; the store would refuse it anyway.
                    self.lease_lost.set()
                    self.cancel_requested.set()
            except Exception:
                logger.exception("could not renew the lease of job %s", self.job_id)
            if self.cancel_requested.is_set() and self.stop_asked_at is None:
                self.stop_asked_at = time.monotonic()
            if (
                self.stop_asked_at is not None
                and time.monotonic() - self.stop_asked_at >= self.stop_grace_seconds
                and not self.stopped.is_set()
            ):
                self._end_unresponsive_training()

    def _end_unresponsive_training(self) -> None:
        # The training checks for a stop between steps and phases; one stuck inside a
        # step (a stalled download or file system, a deadlock) never would. Ending the
        # job and this worker child is the only way left to keep the promise that a
        # cancel or a time limit ends it: Celery replaces the child.
        grace = f"{self.stop_grace_seconds:g}"
        try:
            if self.lease_lost.is_set():
                pass  # another worker owns the job: write nothing
            elif self.time_exceeded.is_set():
                message = f"the job ran past its time limit and did not stop within {grace} s "
                message += "after it; its process was ended. Train fewer epochs or a smaller "
                message += "model, or raise time_limit_seconds"
                error = JobError(type="TimeLimitExceeded", message=message)
                self.store.finish(self.job_id, "failed", error=error, worker=self.worker)
            else:
                self.store.finish(self.job_id, "cancelled", worker=self.worker)
        except Exception:
            logger.exception("could not end job %s", self.job_id)  # its lease will run out
        logger.error("job %s did not stop within %s s; ending its process", self.job_id, grace)
        logging.shutdown()
        os._exit(EXIT_UNRESPONSIVE_TRAINING)


def _confirm_publish(store: JobStore, job_id: str, worker: str, settings: Settings) -> None:
    # Asked of the store right before the registry's rename, not of the lease thread's
    # flags, which lag by up to a poll: a cancel accepted until now publishes nothing,
    # and neither does a worker whose job another worker has taken over meanwhile (that
    # one publishes its own version; two for one job would be one too many).
    # Retried like the success record: a store hiccup here must not cost the training.
    renewed = _retrying(lambda: store.renew_lease(job_id, worker, settings.job_lease_seconds))
    if not renewed:
        raise LeaseLostError(f"job {job_id}: lease lost before publishing")
    if _retrying(lambda: store.is_cancel_requested(job_id)):
        raise TrainingCancelledError("training was cancelled on request (before publishing)")


def run_job(job_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """Execute job ``job_id`` once; a second delivery of a claimed or ended job is a no-op."""
    settings = settings or get_settings()
    store = open_job_store(
        settings.redis_url,
        settings.jobs_db_path,
        socket_timeout=settings.redis_socket_timeout_seconds,
    )
    registry = FileModelRegistry(settings.resolved_registry_dir)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    job = store.claim(job_id, worker, settings.job_lease_seconds)
    if job is None:
        logger.info("job %s is not claimable (ended, cancelled or running elsewhere)", job_id)
        return {"job_id": job_id, "skipped": True}

    try:
        return _run_claimed(job, worker, store, registry, settings)
    except LeaseLostError:
        # Another worker holds the job now (our lease expired): it owns the outcome.
        logger.warning("job %s: lease lost to another worker; stopping", job_id)
        return {"job_id": job_id, "status": "lease_lost"}


def _run_claimed(
    job: Job, worker: str, store: JobStore, registry: FileModelRegistry, settings: Settings
) -> dict[str, Any]:
    job_id = job.job_id
    # An earlier delivery may have registered its version and died before saying so.
    earlier_version = registry.version_of_job(job.model_name, job_id)
    if earlier_version is not None:
        store.finish(job_id, "succeeded", version=earlier_version, worker=worker)
        return {"job_id": job_id, "version": earlier_version}

    try:
        spec = parse_training_spec(job.spec)
    except ValueError as error:  # pydantic's ValidationError is one
        # A spec stored by an older release that this one no longer accepts: end the job
        # now with the reason, rather than leave it running until its lease runs out.
        logger.error("job %s: its stored spec is not valid: %s", job_id, error)
        message = f"the job's stored spec is not valid for this version of the service: {error}"
        reason = JobError(type="InvalidSpec", message=message[:2000])
        store.finish(job_id, "failed", error=reason, worker=worker)
        return {"job_id": job_id, "status": "failed"}
    time_limit = spec.time_limit_seconds or settings.job_time_limit_seconds
    lease = _LeaseKeeper(
        store,
        job_id,
        worker,
        settings.job_lease_seconds,
        time_limit,
        settings.job_stop_grace_seconds,
    )
    lease.start()

    def record_epoch(progress: EpochProgress) -> None:
        # Progress is what the API shows while the job runs, not its result (the card
        # keeps the whole history): a store that stays down must not cost the training.
        try:
            _retrying(lambda: store.record_epoch(job_id, progress, worker=worker))
        except LeaseLostError:
            raise
        except Exception:
            logger.warning(
                "job %s: epoch %d was not recorded", job_id, progress.epoch, exc_info=True
            )

    try:
        registered = train_and_register(
            spec,
            data_dir=settings.resolved_data_dir,
            registry=registry,
            job_id=job_id,
            progress=[record_epoch],
            should_cancel=lease.cancel_requested.is_set,
            confirm_publish=lambda: _confirm_publish(store, job_id, worker, settings),
        )
    except TrainingCancelledError:
        if lease.lease_lost.is_set():
            raise LeaseLostError(f"job {job_id}: lease lost") from None
        if lease.time_exceeded.is_set():
            reason = JobError(
                type="TimeLimitExceeded",
                message=f"the job ran longer than its limit of {time_limit:g} seconds and was "
                "stopped; train fewer epochs or a smaller model, or raise time_limit_seconds",
            )
            store.finish(job_id, "failed", error=reason, worker=worker)
            return {"job_id": job_id, "status": "failed"}
        store.finish(job_id, "cancelled", worker=worker)
        return {"job_id": job_id, "status": "cancelled"}
    except LeaseLostError:
        raise
    except Exception as error:
        logger.exception("job %s failed", job_id)
        store.finish(
            job_id,
            "failed",
            error=JobError(type=type(error).__name__, message=str(error)[:2000]),
            worker=worker,
        )
        return {"job_id": job_id, "status": "failed"}
    finally:
        lease.stopped.set()
        lease.join()
    _record_success(store, job_id, registered.version, worker)
    return {"job_id": job_id, "model_name": registered.model_name, "version": registered.version}


def _record_success(store: JobStore, job_id: str, version: int, worker: str) -> None:
    # The version is published: a store hiccup now must not cost the job. Unrecorded,
    # the job would be run again (and find its version), or on its last attempt end
    # failed with a model registered for it.
    _retrying(lambda: store.finish(job_id, "succeeded", version=version, worker=worker))


def _retrying(call: Callable[[], ResultT]) -> ResultT:
    """``call()``, tried again over about seven seconds while the job store fails."""
    for delay in (1.0, 2.0, 4.0):
        try:
            return call()
        except LeaseLostError:
            raise  # an answer, not a failure
        except Exception:
            logger.warning("the job store failed; trying again in %g s", delay, exc_info=True)
            time.sleep(delay)
    return call()
