"""The worker's side of a job: fencing, time limits and cancellation in every phase.

``run_job`` runs for real against an embedded (SQLite) store; only the training is
replaced by a loop that reports an epoch every 50 ms until it is told to stop, so
each test takes a second or two instead of a training's minutes.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from trainer import run as run_module
from trainer import train as train_module
from trainer.errors import TrainingCancelledError
from trainer.progress import EpochProgress
from trainer.registry import FileModelRegistry
from trainer.run import train_and_register
from trainer.spec import parse_training_spec
from trainer.train import inference_copy
from worker import runner
from worker.jobstore import Job, SqliteJobStore
from worker.settings import Settings

SPEC = {"dataset": "digits", "epochs": 3, "hyperparameters": {"filters1": 4, "filters2": 4}}
TINY = {**SPEC, "hyperparameters": {"filters1": 4, "filters2": 4, "dense_units": 8}}


def endless_training(on_epoch: Callable[[int], None]) -> Callable[..., Any]:
    def train(*_: Any, progress: Any, should_cancel: Callable[[], bool], **__: Any) -> Any:
        for number in range(1, 1200):
            if should_cancel():
                raise TrainingCancelledError("training was cancelled on request")
            record = EpochProgress(epoch=number, epochs=3, loss=1.0, accuracy=0.5, seconds=0.05)
            for listener in progress:
                listener(record)
            on_epoch(number)
            time.sleep(0.05)
        raise AssertionError("the training was never stopped")

    return train


def queued_job(store: SqliteJobStore, spec: dict[str, Any]) -> Job:
    job = Job.new(spec=spec, model_name="digits-runner")
    store.create(job)
    return job


def take_over(store: SqliteJobStore, job_id: str) -> None:
    """Another worker claims the job, as if its worker had stalled past its lease."""
    store._update(
        job_id,
        lambda current, now: current.model_copy(
            update={"lease_expires_at": now - timedelta(seconds=1)}
        ),
    )
    assert store.claim(job_id, "worker-2:1", 60) is not None


def test_a_stale_worker_is_refused_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path, job_lease_seconds=30)
    store = SqliteJobStore(settings.jobs_db_path)
    job = queued_job(store, SPEC)

    def take_over_at_the_third_epoch(number: int) -> None:
        if number == 3:
            take_over(store, job.job_id)

    monkeypatch.setattr(
        runner, "train_and_register", endless_training(take_over_at_the_third_epoch)
    )
    started = time.monotonic()
    outcome = runner.run_job(job.job_id, settings)
    assert outcome == {"job_id": job.job_id, "status": "lease_lost"}
    assert time.monotonic() - started < 10
    current = store.get(job.job_id)
    # The new holder's job, untouched by the stale worker: no epochs, no ending.
    assert (current.status, current.worker, current.history) == ("running", "worker-2:1", [])
    assert current.finished_at is None


def test_a_job_past_its_time_limit_is_stopped_and_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path, job_lease_seconds=4)
    store = SqliteJobStore(settings.jobs_db_path)
    job = queued_job(store, {**SPEC, "time_limit_seconds": 1})
    monkeypatch.setattr(runner, "train_and_register", endless_training(lambda _: None))

    started = time.monotonic()
    assert runner.run_job(job.job_id, settings)["status"] == "failed"
    assert time.monotonic() - started < 10
    ended = store.get(job.job_id)
    assert ended.status == "failed"
    assert ended.error is not None and ended.error.type == "TimeLimitExceeded"
    assert "time_limit_seconds" in ended.error.message
    assert len(ended.history) >= 5  # it did run until the limit


def test_a_cancel_during_data_preparation_stops_before_training(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    calls: list[int] = []

    def cancel_after_the_first_check() -> bool:
        calls.append(1)
        return len(calls) > 1  # true as soon as the data is prepared

    epochs: list[EpochProgress] = []
    with pytest.raises(TrainingCancelledError, match="after data preparation"):
        train_and_register(
            parse_training_spec(TINY),
            data_dir=None,
            registry=registry,
            progress=[epochs.append],
            should_cancel=cancel_after_the_first_check,
        )
    assert epochs == []
    assert registry.list_models() == []


def test_a_cancel_after_the_last_batch_stops_before_registration(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    cancelled = False

    def cancel_when_training_ends(progress: EpochProgress) -> None:
        nonlocal cancelled
        cancelled = progress.epoch == progress.epochs

    with pytest.raises(TrainingCancelledError, match="before evaluation"):
        train_and_register(
            parse_training_spec({**TINY, "epochs": 1}),
            data_dir=None,
            registry=registry,
            progress=[cancel_when_training_ends],
            should_cancel=lambda: cancelled,
        )
    assert registry.list_models() == []


def test_a_stored_spec_this_release_refuses_fails_the_job_at_once(tmp_path: Path) -> None:
    # As a job queued before an upgrade that no longer accepts its spec would be.
    settings = Settings(home=tmp_path)
    store = SqliteJobStore(settings.jobs_db_path)
    job = queued_job(store, {**SPEC, "epochs": -1})

    assert runner.run_job(job.job_id, settings) == {"job_id": job.job_id, "status": "failed"}
    failed = store.get(job.job_id)
    assert failed.status == "failed" and failed.lease_expires_at is None
    assert failed.error is not None and failed.error.type == "InvalidSpec"
    assert "epochs" in failed.error.message


def test_a_diverging_training_fails_its_job_and_leaves_every_record_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A NaN stored in the job's history would be written as null and make the record
    # unreadable, and with it every sweep. Keras reports the loss of the second epoch as
    # NaN here: real divergence is not the same on every CPU (SGD at a learning rate of
    # 10 with batch norm gave NaN by the second epoch on an AVX2 EPYC, and a finite 1e24
    # on an AMX Xeon, whose oneDNN kernels also turn a NaN pixel into zeros).
    report_epoch = train_module._ProgressCallback.on_epoch_end

    def diverging_from_epoch_two(callback: Any, epoch: int, logs: Any = None) -> None:
        report_epoch(callback, epoch, {**(logs or {}), "loss": math.nan} if epoch >= 1 else logs)

    monkeypatch.setattr(train_module._ProgressCallback, "on_epoch_end", diverging_from_epoch_two)
    settings = Settings(home=tmp_path)
    store = SqliteJobStore(settings.jobs_db_path)
    job = queued_job(store, {**TINY, "epochs": 4})

    assert runner.run_job(job.job_id, settings) == {"job_id": job.job_id, "status": "failed"}
    failed = store.get(job.job_id)
    assert failed.error is not None and failed.error.type == "TrainingDivergedError"
    assert "lower learning_rate" in failed.error.message
    assert len(failed.history) == 1  # stopped at the first NaN, not after the budget
    assert store.list(limit=10)[1] == 1
    assert store.requeue_orphans(3) == ([], [])
    assert FileModelRegistry(settings.resolved_registry_dir).list_models() == []


def run_with_while_saving(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: Callable[[SqliteJobStore, str], object],
) -> tuple[dict[str, Any], SqliteJobStore, Job, Settings]:
    """Run a one-epoch job for real, with ``meanwhile`` happening as its model is saved."""
    settings = Settings(home=tmp_path)
    store = SqliteJobStore(settings.jobs_db_path)
    job = queued_job(store, {**TINY, "epochs": 1})

    def copy_and_meanwhile(model: Any) -> Any:
        meanwhile(store, job.job_id)
        return inference_copy(model)

    monkeypatch.setattr(run_module, "inference_copy", copy_and_meanwhile)
    return runner.run_job(job.job_id, settings), store, job, settings


def test_a_cancel_while_the_version_is_saved_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cancel lands after the last check of the background flag, while the model is
    # copied and saved (seconds on a large model): the job still ends cancelled, and
    # the registry shows no version and keeps no staging folder.
    outcome, store, job, settings = run_with_while_saving(
        tmp_path, monkeypatch, lambda store, job_id: store.request_cancel(job_id)
    )
    assert outcome["status"] == "cancelled"
    assert store.get(job.job_id).status == "cancelled"
    registry = FileModelRegistry(settings.resolved_registry_dir)
    assert registry.list_models() == []
    leftovers = [path for path in settings.resolved_registry_dir.rglob("*") if path.is_file()]
    assert leftovers == []


def _run_a_training_that_never_checks(home: str, job_id: str) -> None:
    # In a process of its own, as a worker child: the stuck training ends the process.
    def stuck(*_: Any, **__: Any) -> Any:
        time.sleep(600)  # a stalled download or file system: no cancel check in here

    pytest.MonkeyPatch().setattr(runner, "train_and_register", stuck)
    settings = Settings(home=Path(home), job_lease_seconds=4, job_stop_grace_seconds=2)
    runner.run_job(job_id, settings)


@pytest.mark.parametrize("stopped_by", ["time limit", "cancel"])
def test_a_training_that_does_not_stop_is_ended_with_its_process(
    tmp_path: Path, stopped_by: str
) -> None:
    store = SqliteJobStore(Settings(home=tmp_path).jobs_db_path)
    spec = {**SPEC, "time_limit_seconds": 1} if stopped_by == "time limit" else SPEC
    job = queued_job(store, spec)
    child = multiprocessing.get_context("spawn").Process(
        target=_run_a_training_that_never_checks, args=(str(tmp_path), job.job_id)
    )
    child.start()
    if stopped_by == "cancel":
        deadline = time.monotonic() + 60
        while store.get(job.job_id).status != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        store.request_cancel(job.job_id)
    child.join(timeout=90)
    assert child.exitcode == runner.EXIT_UNRESPONSIVE_TRAINING
    ended = store.get(job.job_id)
    if stopped_by == "time limit":
        assert ended.status == "failed"
        assert ended.error is not None and ended.error.type == "TimeLimitExceeded"
        assert "did not stop within 2 s" in ended.error.message
    else:
        assert ended.status == "cancelled"
    assert ended.finished_at is not None and ended.lease_expires_at is None


def test_a_worker_that_lost_its_job_while_saving_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This worker stalled past its lease while saving and another took the job over:
    # that one publishes the job's version, so this one must not publish a second.
    outcome, store, job, settings = run_with_while_saving(tmp_path, monkeypatch, take_over)
    assert outcome["status"] == "lease_lost"
    assert FileModelRegistry(settings.resolved_registry_dir).list_models() == []
    current = store.get(job.job_id)
    assert (current.status, current.worker) == ("running", "worker-2:1")


@pytest.mark.parametrize("failing", ["record_epoch", "renew_lease", "finish"])
def test_a_store_hiccup_while_training_or_publishing_does_not_cost_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    # At an epoch's end (its progress is recorded), before publishing (the lease and
    # cancel are confirmed) and after (the version is recorded), one failed store call
    # is tried again, not the training thrown away.
    settings = Settings(home=tmp_path)
    store = SqliteJobStore(settings.jobs_db_path)
    job = queued_job(store, {**TINY, "epochs": 1})
    original = getattr(store, failing)
    refusals: list[str] = []

    def after_a_hiccup(*arguments: Any, **options: Any) -> Any:
        publishing = failing != "finish" or arguments[1] == "succeeded"
        if publishing and not refusals:
            refusals.append("once")
            raise ConnectionError("the store is briefly unreachable")
        return original(*arguments, **options)

    monkeypatch.setattr(store, failing, after_a_hiccup)
    monkeypatch.setattr(runner, "open_job_store", lambda *_, **__: store)
    outcome = runner.run_job(job.job_id, settings)
    assert outcome["version"] == 1 and refusals == ["once"]
    ended = store.get(job.job_id)
    assert (ended.status, ended.version) == ("succeeded", 1)
