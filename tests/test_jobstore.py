"""Contract tests for the job store, run against both backends.

SQLite runs in tmp_path; Redis runs against the real server on 127.0.0.1:6379
(db 15, a random key prefix per test, deleted afterwards). Time is a fake clock
so lease expiry is tested without sleeping, except in the cross-process race,
where each process uses the real clock.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from tests.conftest import make_record
from tests.workers import ensure_redis, redis_url
from trainer.errors import ConflictError, JobNotFoundError, LeaseLostError
from trainer.files import utc_now
from trainer.registry import FileModelRegistry
from worker.jobstore import (
    EpochProgress,
    Job,
    JobError,
    JobStore,
    RedisJobStore,
    SqliteJobStore,
    open_job_store,
)
from worker.jobstore.base import Clock
from worker.recovery import release_jobs_of_dead_local_workers, requeue_orphaned_jobs
from worker.settings import Settings
from worker.studies.runtime import ADVANCE_STUDY_TASK

REDIS_URL = redis_url("jobstore")


@dataclass(frozen=True)
class Backend:
    """Where a store lives; picklable, so spawned processes can open the same store."""

    kind: str
    sqlite_path: Path
    redis_prefix: str

    def open(self, clock: Clock = utc_now) -> JobStore:
        if self.kind == "sqlite":
            return SqliteJobStore(self.sqlite_path, clock=clock)
        return RedisJobStore(REDIS_URL, prefix=self.redis_prefix, clock=clock)


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def redis_server() -> None:
    """Make sure the test Redis server answers, starting one if needed."""
    ensure_redis()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    prefix = f"test-jobstore-{uuid.uuid4().hex}"
    description = Backend(request.param, tmp_path / "data" / "jobs.sqlite3", prefix)
    if request.param == "sqlite":
        yield description
        return
    request.getfixturevalue("redis_server")
    yield description
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(backend: Backend, clock: FakeClock) -> Iterator[JobStore]:
    opened = backend.open(clock)
    yield opened
    opened.close()


def add_job(store: JobStore, clock: FakeClock, model_name: str = "digits") -> Job:
    """Create a job stamped with the fake clock, then move time on so jobs sort by age."""
    now = clock()
    job = Job.new({"dataset": "digits", "epochs": 3}, model_name).model_copy(
        update={"created_at": now, "updated_at": now, "enqueued_at": now}
    )
    store.create(job)
    clock.advance(1)
    return job


def epoch(number: int) -> EpochProgress:
    return EpochProgress(
        epoch=number,
        epochs=3,
        loss=1.0 / number,
        accuracy=0.5 + number / 10,
        val_loss=None,
        val_accuracy=0.4 + number / 10,
        seconds=2.5,
    )


def test_new_job_is_queued_with_hex_id_and_aware_timestamps() -> None:
    job = Job.new({"epochs": 1}, "digits")
    assert job.status == "queued"
    assert len(job.job_id) == 32
    int(job.job_id, 16)
    assert job.created_at.tzinfo is not None
    assert job.created_at == job.updated_at


def test_create_then_get_returns_the_same_job(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    stored = store.get(job.job_id)
    assert stored == job
    assert stored.created_at.tzinfo is not None


def test_create_with_existing_id_raises_conflict(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    with pytest.raises(ConflictError, match=job.job_id):
        store.create(job.model_copy(update={"model_name": "other"}))
    assert store.get(job.job_id).model_name == "digits"


def test_get_unknown_job_raises_not_found_naming_the_id(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError, match="no-such-job") as raised:
        store.get("no-such-job")
    assert raised.value.code == "job_not_found"


def test_mutations_of_unknown_job_raise_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError):
        store.claim("missing", "worker-1", 30)
    with pytest.raises(JobNotFoundError):
        store.request_cancel("missing")
    with pytest.raises(JobNotFoundError):
        store.finish("missing", "succeeded", version=1)


def test_list_is_newest_first_with_pagination_and_total(store: JobStore, clock: FakeClock) -> None:
    ids = [add_job(store, clock).job_id for _ in range(5)]
    newest_first = list(reversed(ids))

    page, total = store.list(limit=2)
    assert [job.job_id for job in page] == newest_first[:2]
    assert total == 5
    page, total = store.list(limit=2, offset=2)
    assert [job.job_id for job in page] == newest_first[2:4]
    page, total = store.list(limit=2, offset=4)
    assert [job.job_id for job in page] == newest_first[4:]
    assert store.list(limit=2, offset=10) == ([], 5)
    assert store.list(limit=0) == ([], 5)


def test_list_filters_by_status_and_model_name(store: JobStore, clock: FakeClock) -> None:
    digits_old = add_job(store, clock, "digits")
    flowers = add_job(store, clock, "flowers")
    digits_new = add_job(store, clock, "digits")
    store.claim(digits_old.job_id, "worker-1", 30)
    store.claim(flowers.job_id, "worker-1", 30)

    running, total = store.list(status="running")
    assert [job.job_id for job in running] == [flowers.job_id, digits_old.job_id]
    assert total == 2
    digits, total = store.list(model_name="digits")
    assert [job.job_id for job in digits] == [digits_new.job_id, digits_old.job_id]
    assert total == 2
    both, total = store.list(status="running", model_name="digits", limit=1)
    assert [job.job_id for job in both] == [digits_old.job_id]
    assert total == 1
    assert store.list(status="succeeded") == ([], 0)
    assert store.list(model_name="nobody") == ([], 0)


def test_claim_takes_a_queued_job_exactly_once(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    claimed = store.claim(job.job_id, "worker-1", 30)

    assert claimed is not None
    assert claimed.status == "running"
    assert claimed.worker == "worker-1"
    assert claimed.attempts == 1
    assert claimed.started_at == clock()
    assert claimed.lease_expires_at == clock() + timedelta(seconds=30)
    assert store.get(job.job_id) == claimed
    assert store.claim(job.job_id, "worker-2", 30) is None
    assert store.claim(job.job_id, "worker-1", 30) is None
    assert store.get(job.job_id).worker == "worker-1"


def test_expired_lease_lets_another_worker_claim(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    first = store.claim(job.job_id, "worker-1", 10)
    assert first is not None
    store.record_epoch(job.job_id, epoch(1))

    clock.advance(9)
    assert store.claim(job.job_id, "worker-2", 10) is None
    clock.advance(2)
    second = store.claim(job.job_id, "worker-2", 10)

    assert second is not None
    assert second.worker == "worker-2"
    assert second.attempts == 2
    assert second.started_at == first.started_at
    # The new attempt trains from scratch, so the lost attempt's epochs are dropped.
    assert second.history == []
    assert second.progress is None
    assert store.renew_lease(job.job_id, "worker-1", 10) is False


def test_claim_refuses_ended_and_cancel_requested_jobs(store: JobStore, clock: FakeClock) -> None:
    ended = add_job(store, clock)
    store.finish(ended.job_id, "failed", error=JobError(type="ValueError", message="bad"))
    cancelled_while_running = add_job(store, clock)
    store.claim(cancelled_while_running.job_id, "worker-1", 5)
    store.request_cancel(cancelled_while_running.job_id)
    clock.advance(60)

    assert store.claim(ended.job_id, "worker-2", 30) is None
    assert store.claim(cancelled_while_running.job_id, "worker-2", 30) is None
    assert store.get(cancelled_while_running.job_id).worker == "worker-1"


def test_renew_lease_extends_only_for_the_holder(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    store.claim(job.job_id, "worker-1", 10)
    clock.advance(8)

    assert store.renew_lease(job.job_id, "worker-1", 10) is True
    assert store.get(job.job_id).lease_expires_at == clock() + timedelta(seconds=10)
    assert store.renew_lease(job.job_id, "worker-2", 10) is False
    clock.advance(8)  # past the first lease, within the renewed one
    assert store.claim(job.job_id, "worker-2", 10) is None

    store.finish(job.job_id, "succeeded", version=1)
    assert store.renew_lease(job.job_id, "worker-1", 10) is False


def test_record_epoch_sets_progress_and_appends_history(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    store.claim(job.job_id, "worker-1", 30)
    store.record_epoch(job.job_id, epoch(1))
    clock.advance(3)
    store.record_epoch(job.job_id, epoch(2))

    stored = store.get(job.job_id)
    assert stored.progress == epoch(2)
    assert stored.history == [epoch(1), epoch(2)]
    assert stored.updated_at == clock()

    store.finish(job.job_id, "succeeded", version=1)
    with pytest.raises(ConflictError, match="succeeded"):
        store.record_epoch(job.job_id, epoch(3))
    assert len(store.get(job.job_id).history) == 2


def test_finish_records_outcome_and_refuses_a_second_finish(
    store: JobStore, clock: FakeClock
) -> None:
    job = add_job(store, clock)
    store.claim(job.job_id, "worker-1", 30)
    clock.advance(5)
    finished = store.finish(job.job_id, "succeeded", version=3)

    assert finished.status == "succeeded"
    assert finished.version == 3
    assert finished.finished_at == clock()
    assert finished.lease_expires_at is None
    assert store.get(job.job_id) == finished
    with pytest.raises(ConflictError, match="already ended with status 'succeeded'"):
        store.finish(job.job_id, "failed", error=JobError(type="X", message="late"))
    assert store.get(job.job_id).status == "succeeded"


def test_finish_as_failed_keeps_the_error(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    error = JobError(type="DatasetNotFoundError", message="dataset 'cats' not found")
    store.finish(job.job_id, "failed", error=error)
    assert store.get(job.job_id).error == error


def test_cancel_of_queued_job_ends_it_at_once(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    cancelled = store.request_cancel(job.job_id)

    assert cancelled.status == "cancelled"
    assert cancelled.finished_at == clock()
    assert store.is_cancel_requested(job.job_id) is True
    assert store.claim(job.job_id, "worker-1", 30) is None


def test_cancel_of_running_job_flags_it_for_the_worker(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    store.claim(job.job_id, "worker-1", 30)
    assert store.is_cancel_requested(job.job_id) is False

    flagged = store.request_cancel(job.job_id)
    assert flagged.status == "running"
    assert flagged.finished_at is None
    assert store.is_cancel_requested(job.job_id) is True
    # The worker notices the flag, stops training and records the outcome.
    assert store.finish(job.job_id, "cancelled").status == "cancelled"


def test_cancel_of_ended_job_raises_conflict_naming_the_status(
    store: JobStore, clock: FakeClock
) -> None:
    job = add_job(store, clock)
    store.finish(job.job_id, "succeeded", version=2)
    with pytest.raises(ConflictError, match="already ended with status 'succeeded'"):
        store.request_cancel(job.job_id)
    assert store.get(job.job_id).status == "succeeded"


def test_requeue_orphans_requeues_expired_jobs_under_the_attempt_limit(
    store: JobStore, clock: FakeClock
) -> None:
    orphan = add_job(store, clock)
    alive = add_job(store, clock)
    store.claim(orphan.job_id, "worker-1", 10)
    store.claim(alive.job_id, "worker-2", 100)
    clock.advance(20)

    assert store.requeue_orphans(max_attempts=3) == ([orphan.job_id], [])
    requeued = store.get(orphan.job_id)
    assert requeued.status == "queued"
    assert requeued.worker is None
    assert requeued.lease_expires_at is None
    assert store.get(alive.job_id).status == "running"
    reclaimed = store.claim(orphan.job_id, "worker-3", 10)
    assert reclaimed is not None
    assert reclaimed.attempts == 2
    assert store.requeue_orphans() == ([], [])


def test_requeue_orphans_fails_jobs_that_ran_out_of_attempts(
    store: JobStore, clock: FakeClock
) -> None:
    job = add_job(store, clock)
    for attempt in range(1, 3):
        store.claim(job.job_id, f"worker-{attempt}", 10)
        clock.advance(11)
        assert store.requeue_orphans(max_attempts=3) == ([job.job_id], [])
    store.claim(job.job_id, "worker-3", 10)
    clock.advance(11)

    assert store.requeue_orphans(max_attempts=3) == ([], [job.job_id])
    failed = store.get(job.job_id)
    assert failed.status == "failed"
    assert failed.finished_at == clock()
    assert failed.error is not None
    assert failed.error.type == "WorkerLost"
    assert "stopped responding 3 times" in failed.error.message


def test_requeue_orphans_cancels_orphans_whose_cancel_was_requested(
    store: JobStore, clock: FakeClock
) -> None:
    job = add_job(store, clock)
    store.claim(job.job_id, "worker-1", 10)
    store.request_cancel(job.job_id)
    clock.advance(11)

    assert store.requeue_orphans() == ([], [job.job_id])
    assert store.get(job.job_id).status == "cancelled"


@pytest.mark.parametrize("cancel_requested", [False, True])
def test_the_sweep_finds_done_an_orphan_that_had_registered_its_version(
    store: JobStore, clock: FakeClock, tmp_path: Path, cancel_requested: bool
) -> None:
    # Its worker died between publishing the version and recording it, on the last
    # attempt: the model is there, so the job succeeded; failing (or cancelling) it
    # would disown a version clients can already predict with.
    registry = FileModelRegistry(tmp_path / "registry")
    job = add_job(store, clock, model_name="digits-cnn")
    other = add_job(store, clock, model_name="digits-cnn")
    registry.register(
        "digits-cnn", lambda path: path.write_bytes(b"other"), make_record(job_id=other.job_id)
    )
    version = registry.register(
        "digits-cnn", lambda path: path.write_bytes(b"model"), make_record(job_id=job.job_id)
    )
    store.claim(job.job_id, "worker-1", 10)
    if cancel_requested:
        store.request_cancel(job.job_id)  # too late: the version was already published
    clock.advance(11)
    broker = RecordingBroker()

    assert requeue_orphaned_jobs(store, broker, max_attempts=1, registry=registry) == []
    done = store.get(job.job_id)
    assert (done.status, done.version, done.error) == ("succeeded", version, None)
    assert done.finished_at == clock()
    assert store.list(status="running")[0] == []


def test_the_sweep_without_a_registered_version_still_fails_a_hopeless_orphan(
    store: JobStore, clock: FakeClock, tmp_path: Path
) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    job = add_job(store, clock, model_name="digits-cnn")
    registry.register(
        "digits-cnn", lambda path: path.write_bytes(b"x"), make_record(job_id="other")
    )
    store.claim(job.job_id, "worker-1", 10)
    clock.advance(11)

    requeue_orphaned_jobs(store, RecordingBroker(), max_attempts=1, registry=registry)
    failed = store.get(job.job_id)
    assert (failed.status, failed.version) == ("failed", None)
    assert failed.error is not None and failed.error.type == "WorkerLost"


def test_count_by_status_includes_every_status(store: JobStore, clock: FakeClock) -> None:
    assert store.count_by_status() == {
        "queued": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    jobs = [add_job(store, clock) for _ in range(4)]
    store.claim(jobs[0].job_id, "worker-1", 30)
    store.claim(jobs[1].job_id, "worker-1", 30)
    store.finish(jobs[1].job_id, "succeeded", version=1)
    store.request_cancel(jobs[2].job_id)

    assert store.count_by_status() == {
        "queued": 1,
        "running": 1,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 1,
    }


def test_every_update_bumps_updated_at(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    steps: list[Any] = [
        lambda: store.claim(job.job_id, "worker-1", 30),
        lambda: store.renew_lease(job.job_id, "worker-1", 30),
        lambda: store.record_epoch(job.job_id, epoch(1)),
        lambda: store.request_cancel(job.job_id),
        lambda: store.finish(job.job_id, "cancelled"),
    ]
    for step in steps:
        clock.advance(1)
        step()
        assert store.get(job.job_id).updated_at == clock()


def test_jobs_survive_reopening_the_store(backend: Backend, clock: FakeClock) -> None:
    first = backend.open(clock)
    job = add_job(first, clock)
    first.claim(job.job_id, "worker-1", 30)
    first.record_epoch(job.job_id, epoch(1))
    before = first.get(job.job_id)
    first.close()

    reopened = backend.open(clock)
    try:
        assert reopened.get(job.job_id) == before
        assert reopened.list() == ([before], 1)
        assert reopened.count_by_status()["running"] == 1
    finally:
        reopened.close()


def test_ping_succeeds_on_a_reachable_backend(store: JobStore) -> None:
    store.ping()
    assert store.count_by_status()["queued"] == 0


def test_ping_raises_when_redis_is_unreachable() -> None:
    unreachable = RedisJobStore("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(redis.ConnectionError):
            unreachable.ping()
    finally:
        unreachable.close()


def test_open_job_store_prefers_redis_when_a_url_is_given(tmp_path: Path) -> None:
    embedded = open_job_store(None, tmp_path / "jobs.sqlite3")
    assert isinstance(embedded, SqliteJobStore)
    assert (tmp_path / "jobs.sqlite3").exists()
    remote = open_job_store(REDIS_URL, tmp_path / "unused.sqlite3")
    try:
        assert isinstance(remote, RedisJobStore)
        assert not (tmp_path / "unused.sqlite3").exists()
    finally:
        remote.close()


def claim_all_in_subprocess(
    backend: Backend,
    job_ids: list[str],
    worker: str,
    start_together: Barrier,
    results: multiprocessing.Queue[list[str] | str],
) -> None:
    """Runs in a spawned process: claim every job, report the ones this worker won."""
    store = backend.open()
    try:
        start_together.wait(timeout=60)
        won = [job_id for job_id in job_ids if store.claim(job_id, worker, 60) is not None]
        results.put(won)
    except Exception as error:  # noqa: BLE001
        # Report instead of dying silently, so the parent fails fast with the cause.
        results.put(f"{worker} failed: {error!r}")
    finally:
        store.close()


def test_racing_processes_claim_each_job_exactly_once(backend: Backend) -> None:
    store = backend.open()
    job_ids = []
    for _ in range(8):
        job = Job.new({"epochs": 1}, "digits")
        store.create(job)
        job_ids.append(job.job_id)

    context = multiprocessing.get_context("spawn")
    workers = 4
    start_together = context.Barrier(workers)
    results: multiprocessing.Queue[list[str] | str] = context.Queue()
    processes = [
        context.Process(
            target=claim_all_in_subprocess,
            args=(backend, job_ids, f"worker-{index}", start_together, results),
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    won_by_worker = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    failures = [report for report in won_by_worker if isinstance(report, str)]
    assert failures == []
    all_wins = [job_id for won in won_by_worker for job_id in won]
    assert sorted(all_wins) == sorted(job_ids)
    for job_id in job_ids:
        assert store.get(job_id).attempts == 1
    store.close()


# ------------------------------------------------------------- fencing, sending, releasing


def test_only_the_claim_holder_records_epochs_and_finishes(
    store: JobStore, clock: FakeClock
) -> None:
    job = add_job(store, clock)
    store.claim(job.job_id, "worker-1", 10)
    store.record_epoch(job.job_id, epoch(1), worker="worker-1")
    clock.advance(11)  # worker-1 stalls past its lease; worker-2 takes over
    assert store.claim(job.job_id, "worker-2", 10) is not None

    with pytest.raises(LeaseLostError, match="no longer held by worker 'worker-1'"):
        store.record_epoch(job.job_id, epoch(2), worker="worker-1")
    with pytest.raises(LeaseLostError):
        store.finish(job.job_id, "succeeded", version=7, worker="worker-1")
    current = store.get(job.job_id)
    assert (current.status, current.worker, current.history) == ("running", "worker-2", [])

    store.record_epoch(job.job_id, epoch(1), worker="worker-2")
    ended = store.finish(job.job_id, "succeeded", version=1, worker="worker-2")
    assert (ended.status, ended.version, len(ended.history)) == ("succeeded", 1, 1)


def test_a_worker_whose_job_was_requeued_is_refused(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    store.claim(job.job_id, "worker-1", 10)
    clock.advance(11)
    assert store.requeue_orphans(max_attempts=3) == ([job.job_id], [])
    with pytest.raises(LeaseLostError, match="status 'queued'"):
        store.finish(
            job.job_id, "failed", error=JobError(type="X", message="late"), worker="worker-1"
        )
    assert store.get(job.job_id).status == "queued"


def test_queued_jobs_are_sent_again_when_never_sent_or_sent_long_ago(
    store: JobStore, clock: FakeClock
) -> None:
    fresh = add_job(store, clock)
    assert store.jobs_to_send(resend_after_seconds=600) == []  # Job.new counts as sent
    clock.advance(600)
    assert store.jobs_to_send(resend_after_seconds=600) == [fresh.job_id]
    assert store.get(fresh.job_id).enqueued_at == clock()
    assert store.jobs_to_send(resend_after_seconds=600) == []  # stamped: not twice in a row

    orphan = add_job(store, clock)
    store.claim(orphan.job_id, "worker-1", 5)
    clock.advance(6)
    store.requeue_orphans(max_attempts=3)
    assert store.jobs_to_send(resend_after_seconds=600) == [orphan.job_id]  # at once
    store.mark_unsent(orphan.job_id)  # the send failed
    assert store.jobs_to_send(resend_after_seconds=600) == [orphan.job_id]

    store.request_cancel(fresh.job_id)
    clock.advance(601)
    assert store.jobs_to_send(resend_after_seconds=600) == [orphan.job_id]


def test_release_requeues_without_spending_an_attempt(store: JobStore, clock: FakeClock) -> None:
    job = add_job(store, clock)
    store.claim(job.job_id, "worker-1", 30)
    store.record_epoch(job.job_id, epoch(1), worker="worker-1")
    assert store.release(job.job_id, "worker-2") is False
    assert store.release(job.job_id, "worker-1") is True
    released = store.get(job.job_id)
    assert (released.status, released.attempts, released.worker) == ("queued", 0, None)
    assert released.history == [] and released.enqueued_at is None
    assert store.jobs_to_send(resend_after_seconds=600) == [job.job_id]
    reclaimed = store.claim(job.job_id, "worker-3", 30)
    assert reclaimed is not None and reclaimed.attempts == 1
    assert store.release(job.job_id, "worker-1") is False


class FlakyBroker:
    """A Celery app stand-in whose broker refuses the first message."""

    def __init__(self, home: Path) -> None:
        self.sent: list[str] = []
        self.calls = 0
        self.conf = SimpleNamespace(broker_transport_options={})

    def send_task(self, name: str, *, args: list[str], **options: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("broker hiccup")
        self.sent.append(args[0])


def test_one_failed_resend_does_not_strand_the_other_orphans(
    store: JobStore, clock: FakeClock, tmp_path: Path
) -> None:
    orphans = [add_job(store, clock) for _ in range(3)]
    for number, job in enumerate(orphans):
        store.claim(job.job_id, f"worker-{number}", 5)
    clock.advance(10)
    broker = FlakyBroker(tmp_path)

    requeued = requeue_orphaned_jobs(store, broker, max_attempts=3)
    assert sorted(requeued) == sorted(job.job_id for job in orphans)
    assert len(broker.sent) == 2  # the first send failed, the other two went out
    (unsent,) = {job.job_id for job in orphans} - set(broker.sent)
    assert store.get(unsent).enqueued_at is None

    requeue_orphaned_jobs(store, broker, max_attempts=3)
    assert sorted(broker.sent) == sorted(job.job_id for job in orphans)
    assert all(store.get(job.job_id).status == "queued" for job in orphans)


class RecordingBroker:
    """A Celery app stand-in that keeps what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str]]] = []
        self.conf = SimpleNamespace(broker_transport_options={})

    def send_task(self, name: str, *, args: list[str], **options: Any) -> None:
        self.sent.append((name, args))


def test_the_sweep_has_the_study_of_a_job_it_ends_advance(
    store: JobStore, clock: FakeClock
) -> None:
    # A study's job whose worker died for good: nothing else would advance the study
    # until a worker starts, so it would show "running" with a stage that cannot end.
    study_id = uuid.uuid4().hex
    now = clock()
    lost, cancelled, own = (
        Job.new({"dataset": "digits"}, "digits").model_copy(
            update={"job_id": job_id, "created_at": now, "updated_at": now, "enqueued_at": now}
        )
        for job_id in (f"{study_id}-variations-0", f"{study_id}-variations-1", uuid.uuid4().hex)
    )
    for job in (lost, cancelled, own):
        store.create(job)
        store.claim(job.job_id, "worker-1", 10)
    store.request_cancel(cancelled.job_id)
    clock.advance(11)
    broker = RecordingBroker()

    requeue_orphaned_jobs(store, broker, max_attempts=1)
    assert store.get(lost.job_id).status == "failed"
    assert store.get(cancelled.job_id).status == "cancelled"
    assert store.get(own.job_id).status == "failed"
    assert broker.sent == [(ADVANCE_STUDY_TASK, [study_id])]


def test_jobs_of_dead_local_workers_are_released_others_kept(
    store: JobStore, clock: FakeClock
) -> None:
    finished_process = subprocess.Popen(["true"])
    finished_process.wait()
    host = socket.gethostname()
    workers = {
        "dead": f"{host}:{finished_process.pid}",
        "alive": f"{host}:{os.getpid()}",
        "elsewhere": f"another-host:{finished_process.pid}",
    }
    jobs = {}
    for name, worker in workers.items():
        jobs[name] = add_job(store, clock)
        store.claim(jobs[name].job_id, worker, 60)

    assert release_jobs_of_dead_local_workers(store) == [jobs["dead"].job_id]
    assert store.get(jobs["dead"].job_id).status == "queued"
    assert store.get(jobs["dead"].job_id).attempts == 0
    assert store.get(jobs["alive"].job_id).status == "running"
    assert store.get(jobs["elsewhere"].job_id).status == "running"


def test_redis_clients_have_explicit_socket_timeouts(tmp_path: Path) -> None:
    from worker.app import broker_options

    store = open_job_store(REDIS_URL, tmp_path / "unused.sqlite3", socket_timeout=2.5)
    assert isinstance(store, RedisJobStore)
    options = store.client.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (2.5, 2.5)
    settings = Settings(home=tmp_path, redis_url=REDIS_URL, redis_socket_timeout_seconds=3)
    _, transport = broker_options(settings)
    assert (transport["socket_timeout"], transport["socket_connect_timeout"]) == (3, 3)


def test_redis_leases_run_on_the_servers_clock_not_the_hosts(
    redis_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # API and workers on several machines stamp and check the same leases: a host
    # whose clock is an hour off must neither shorten nor stretch them.
    prefix = f"test-jobstore-{uuid.uuid4().hex}"
    store = RedisJobStore(REDIS_URL, prefix=prefix)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        job = Job.new({"dataset": "digits"}, "digits")
        store.create(job)
        seconds, microseconds = client.time()
        server_now = datetime.fromtimestamp(seconds + microseconds / 1e6, UTC)

        class HourAhead(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> HourAhead:
                return cls.fromtimestamp(time.time() + 3600, tz)

        monkeypatch.setattr("trainer.files.datetime", HourAhead)  # this host's clock
        claimed = store.claim(job.job_id, "worker-1", 60)
        assert claimed is not None and claimed.lease_expires_at is not None
        lease = (claimed.lease_expires_at - server_now).total_seconds()
        assert 59 <= lease <= 65
        assert store.requeue_orphans() == ([], [])  # not expired, whatever this host says
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
        store.close()
