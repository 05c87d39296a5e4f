"""Studies without workers: statistics, picking, the preset, transitions, the store, routes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from scipy.stats import binomtest

from service.studies import cancel_study
from tests.conftest import make_record
from tests.workers import ensure_redis, redis_url
from trainer import study_presets, study_spec
from trainer.architectures import ARCHITECTURES
from trainer.errors import ConflictError, InvalidInputError
from trainer.registry import FileModelRegistry
from trainer.selection import Candidate, pick_best
from trainer.statistics import (
    accuracy_interval,
    binomial_two_sided_p,
    holm_adjusted,
    mcnemar_exact,
)
from trainer.study_presets import VARIATIONS, expand
from trainer.study_spec import StudyRequest, check_stages, study_of_job
from worker.jobstore import JobError, RedisJobStore, SqliteJobStore
from worker.recovery import send_running_studies_an_advance
from worker.settings import Settings
from worker.studies import RedisStudyStore, SqliteStudyStore, Study
from worker.studies.advance import advance_study
from worker.studies.base import JobOutcome, advanced, cancelled
from worker.studies.runtime import (
    ADVANCE_STUDY_TASK,
    advance,
    advance_after_job,
    advance_running_studies,
    study_store_for,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("successes", "trials"), [(0, 0), (3, 10), (1, 12), (40, 60), (7, 7)])
def test_binomial_p_value_equals_scipy(successes: int, trials: int) -> None:
    expected = 1.0 if trials == 0 else binomtest(successes, trials, 0.5).pvalue
    assert binomial_two_sided_p(successes, trials) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_counts_only_the_discordant_images() -> None:
    # 20 images both right, 5 both wrong, a alone right on 2, b alone right on 10.
    y = np.zeros(37, dtype=int)
    a = np.array([0] * 20 + [1] * 5 + [0] * 2 + [1] * 10)
    b = np.array([0] * 20 + [1] * 5 + [1] * 2 + [0] * 10)
    result = mcnemar_exact(y, a, b)
    assert (result.only_a_correct, result.only_b_correct) == (2, 10)
    # Exact: 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096.
    assert result.p_value == pytest.approx(2 * 79 / 4096)
    assert result.significant
    assert not mcnemar_exact(y[:27], a[:27], b[:27]).significant  # 2 vs 0: p = 0.5


def test_bootstrap_interval_covers_the_true_accuracy() -> None:
    generator = np.random.default_rng(0)
    covered = 0
    for trial in range(40):
        y = generator.integers(0, 10, 500)
        right = generator.random(500) < 0.8  # the true accuracy is 0.8
        predictions = np.where(right, y, (y + 1) % 10)
        interval = accuracy_interval(y, predictions, resamples=500, seed=trial)
        assert interval.low <= interval.estimate <= interval.high
        covered += interval.low <= 0.8 <= interval.high
    # A 95% interval misses now and then; 40 trials missing more than 6 times is ~0.1% likely.
    assert covered >= 34


def test_the_winner_is_chosen_on_validation_even_when_the_test_ranking_differs() -> None:
    # test_accuracy would favour "b"; selection cannot even see it.
    test_accuracy = {"a": 0.70, "b": 0.90}
    candidates = [
        Candidate(label="a", model_name="m-a", version=1, validation_accuracy=0.85,
                  validation_loss=0.5),
        Candidate(label="b", model_name="m-b", version=1, validation_accuracy=0.80,
                  validation_loss=0.4),
    ]  # fmt: skip
    winner = pick_best(candidates)
    assert winner.label == "a" and max(test_accuracy, key=test_accuracy.__getitem__) == "b"
    assert "validation accuracy" in winner.reason and "0.8500" in winner.reason
    assert "test" not in Candidate.model_fields


def test_a_margin_within_the_sampling_error_is_flagged_and_a_clear_one_is_not() -> None:
    def candidates(runner_up_accuracy: float) -> list[Candidate]:
        return [
            Candidate(label="a", model_name="m-a", version=1, validation_accuracy=0.6672,
                      validation_loss=1.07, validation_samples=1250),
            Candidate(label="b", model_name="m-b", version=1,
                      validation_accuracy=runner_up_accuracy, validation_loss=1.5,
                      validation_samples=1250),
        ]  # fmt: skip

    # One standard error of 0.6672 on 1,250 images is 0.0133.
    close = pick_best(candidates(0.6648))
    assert close.label == "a"
    assert "within two standard errors" in close.reason and "0.0133" in close.reason
    clear = pick_best(candidates(0.6300))
    assert clear.label == "a" and "standard error" not in clear.reason


def test_ties_go_to_the_lower_validation_loss() -> None:
    candidates = [
        Candidate(label="a", model_name="m-a", version=1, validation_accuracy=0.8,
                  validation_loss=0.6),
        Candidate(label="b", model_name="m-b", version=1, validation_accuracy=0.8,
                  validation_loss=0.3),
    ]  # fmt: skip
    assert pick_best(candidates).label == "b"


def test_the_preset_is_the_labs_protocol_from_the_definitions() -> None:
    stages = {stage.name: stage for stage in check_stages(expand(StudyRequest(preset="cnn-lab")))}
    variations = stages["variations"].trainings
    assert [t.label for t in variations] == [label for label, _ in VARIATIONS]
    assert all(t.spec and t.spec["dataset"] == "cifar10" for t in variations)
    assert all(t.spec and t.spec["sample_fraction"] == 0.25 and t.spec["epochs"] == 30
               for t in variations)  # fmt: skip
    assert variations[1].spec and variations[1].spec["hyperparameters"]["filters1"] == 64
    assert variations[2].spec and variations[2].spec["hyperparameters"]["kernel_size"] == 5
    assert stages["alexnet"].trainings[0].spec["epochs"] == 50  # type: ignore[index]
    assert stages["secondary_custom"].trainings[0].overrides["dataset"] == "mnist"
    assert stages["augmentation"].trainings[1].reference_winner == "best"
    # One schedule for every training: the retrains inherit their winner's.
    specs = [t.spec for stage in stages.values() for t in stage.trainings if t.spec]
    assert {spec["lr_schedule"] for spec in specs} == {"one_cycle"}
    assert stages["secondary_custom"].trainings[0].overrides["lr_schedule"] == "one_cycle"
    assert all("lr_schedule" not in t.overrides for t in stages["augmentation"].trainings)
    reference = stages["reference"].trainings[0].spec
    assert reference is not None and reference["architecture"] in ARCHITECTURES
    # The whitened_cnn recipe's own epochs, not a number of ours.
    assert reference["architecture"] == "whitened_cnn"
    assert reference["epochs"] == ARCHITECTURES["whitened_cnn"].spec.model_fields["epochs"].default
    assert stages["variations"].pick == "validation_accuracy"
    assert "reference" not in {
        s.name for s in expand(StudyRequest(preset="cnn-lab", include_reference=False))
    }


def test_the_second_dataset_stages_run_only_on_a_second_dataset() -> None:
    def names(**request: Any) -> list[str]:
        return [s.name for s in expand(StudyRequest(preset="cnn-lab", **request))]

    lab = ["variations", "alexnet", "best", "augmentation", "reference", "report"]
    secondary = ["secondary_custom", "secondary_alexnet"]
    assert names() == [*lab[:2], *secondary, *lab[2:]]
    # On digits twice, they would train the first two stages' models again.
    assert names(quick=True) == lab
    assert names(primary_dataset="mnist", secondary_dataset="mnist") == lab
    assert names(quick=True, secondary_dataset="fashion_mnist") == names()


def test_explicit_stages_must_come_after_what_they_use() -> None:
    request = StudyRequest(stages=[
        {"name": "retrain", "trainings": [{"label": "x", "from_winner": "base"}],
         "depends_on": ["base"]},
        {"name": "base", "trainings": [{"label": "y", "spec": {"dataset": "digits"}}]},
    ])  # fmt: skip
    with pytest.raises(InvalidInputError, match="not stages listed before it"):
        check_stages(request.stages or [])


def _study() -> Study:
    request = StudyRequest(
        preset="cnn-lab", quick=True, include_reference=False, secondary_dataset="mnist"
    )
    return Study.new(request.model_dump(mode="json"), check_stages(expand(request)), None)


def _succeeded(
    study: Study, stage: str, accuracies: list[float], samples: int | None = None
) -> dict[str, JobOutcome]:
    return {
        model.job_id: JobOutcome(status="succeeded", version=1, validation_accuracy=accuracy,
                                 validation_loss=1 - accuracy, validation_samples=samples)
        for model, accuracy in zip(study.stage(stage).models, accuracies, strict=True)
    }  # fmt: skip


def test_advancing_starts_stages_as_their_dependencies_succeed() -> None:
    study = _study()
    first = advanced(study, {}, NOW)
    assert first is not None
    running = {s.name for s in first.stages if s.status == "running"}
    assert running == {"variations", "alexnet", "secondary_alexnet"}
    assert advanced(first, {}, NOW) is None  # nothing new: no write, nothing started twice

    outcomes = {**_succeeded(first, "variations", [0.6, 0.9, 0.7]),
                **_succeeded(first, "alexnet", [0.8])}  # fmt: skip
    second = advanced(first, outcomes, NOW)
    assert second is not None
    winner = second.stage("variations").winner
    assert winner is not None and winner.label == f"variations: {VARIATIONS[1][0]}"
    best = second.stage("best").winner
    assert second.stage("best").status == "succeeded" and best is not None
    assert best.label.startswith("variations")  # 0.9 beats alexnet's 0.8
    assert second.stage("augmentation").status == "running"
    assert second.stage("secondary_custom").status == "running"
    assert second.stage("report").status == "pending"


def test_a_stage_winner_by_a_margin_within_the_sampling_error_says_so() -> None:
    first = advanced(_study(), {}, NOW)
    assert first is not None
    outcomes = {**_succeeded(first, "variations", [0.6672, 0.6648, 0.6544], samples=1250),
                **_succeeded(first, "alexnet", [0.80], samples=1250)}  # fmt: skip
    second = advanced(first, outcomes, NOW)
    assert second is not None
    close = second.stage("variations").winner
    assert close is not None and close.validation_samples == 1250
    assert "within two standard errors" in close.reason
    # The best stage compares the winners again, with their sample counts.
    clear = second.stage("best").winner
    assert clear is not None and clear.label == "alexnet"
    assert "standard error" not in clear.reason and clear.validation_samples == 1250


def test_a_failed_job_fails_its_stage_and_skips_what_depends_on_it() -> None:
    first = advanced(_study(), {}, NOW)
    assert first is not None
    job_id = first.stage("variations").models[0].job_id
    outcome = {job_id: JobOutcome(status="failed", error="OOM")}
    second = advanced(first, outcome, NOW)
    assert second is not None
    assert second.stage("variations").status == "failed"
    assert "OOM" in (second.stage("variations").error or "")
    assert second.stage("best").status == "skipped"
    assert second.stage("report").status == "skipped"
    assert second.status == "running"  # alexnet and secondary_alexnet still run


def test_job_ids_are_derived_and_name_their_study() -> None:
    study = _study()
    again = [m.job_id for s in study.stages for m in s.models]
    assert len(set(again)) == len(again)
    assert all(study_of_job(job_id) == study.study_id for job_id in again)
    assert study_of_job("0" * 32) is None


def test_sqlite_store_applies_changes_atomically(tmp_path: Path) -> None:
    store = SqliteStudyStore(tmp_path / "jobs.sqlite3")
    study = _study()
    store.create(study)
    assert store.update(study.study_id, lambda s, now: advanced(s, {}, now)) is not None
    assert store.update(study.study_id, lambda s, now: advanced(s, {}, now)) is None
    stopped = store.update(study.study_id, cancelled)
    assert stopped is not None and stopped.status == "cancelled"
    items, total = store.list(status="cancelled")
    assert total == 1 and items[0].study_id == study.study_id
    assert all(s.is_terminal for s in store.get(study.study_id).stages)


def _error(response: Any) -> dict[str, Any]:
    detail: dict[str, Any] = response.json()["detail"]
    return detail


def test_routes_answer_with_the_one_error_shape(client: TestClient) -> None:
    missing = client.get("/studies/" + "0" * 32)
    assert missing.status_code == 404 and _error(missing)["code"] == "study_not_found"
    # Bounded before it is echoed back in the 404.
    for path in (
        "/studies/" + "0" * 5000,
        "/studies/" + "0" * 32 + "/plots/" + "x" * 5000 + ".svg",
    ):
        too_long = client.get(path)
        assert too_long.status_code == 422 and "at most" in _error(too_long)["message"]
    bad = client.post("/studies", json={"preset": "cnn-lab", "stages": []})
    assert bad.status_code == 422 and _error(bad)["code"] == "invalid_input"
    unknown = client.post("/studies", json={"preset": "cnn-lab", "primary_dataset": "imagenet"})
    assert unknown.status_code == 422


def test_a_study_is_listed_cancelled_and_has_no_report_before_its_end(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(
        "worker.studies.runtime.enqueue_training", lambda app, job_id: sent.append(job_id)
    )
    created = client.post("/studies", json={"preset": "cnn-lab", "quick": True})
    assert created.status_code == 202, created.text
    study = created.json()
    assert {job["job_id"] for s in study["stages"] if s["status"] == "running"
            for job in s["jobs"]} == set(sent)  # fmt: skip
    # 3 variations, alexnet, reference; quick mode trains on digits only, so no second dataset
    assert len(sent) == 5
    for job_id in sent:
        assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
    not_ready = client.get(f"/studies/{study['study_id']}/report")
    assert not_ready.status_code == 409 and _error(not_ready)["code"] == "report_not_ready"
    assert "written when every stage has succeeded" in _error(not_ready)["message"]
    assert client.get("/studies").json()["total"] == 1
    stopped = client.post(f"/studies/{study['study_id']}/cancel")
    assert stopped.status_code == 202 and stopped.json()["status"] == "cancelled"
    never = _error(client.get(f"/studies/{study['study_id']}/report"))
    assert never["code"] == "report_not_ready" and "ended cancelled" in never["message"]
    assert "never" in never["message"] and "yet" not in never["message"]
    assert all(client.get(f"/jobs/{job_id}").json()["status"] == "cancelled" for job_id in sent)
    again = client.post(f"/studies/{study['study_id']}/cancel")
    assert again.status_code == 409 and _error(again)["code"] == "conflict"


REDIS_URL = redis_url("studies")


@pytest.fixture(params=["sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A study store and a job store of one backend."""
    if request.param == "sqlite":
        yield SqliteStudyStore(tmp_path / "db.sqlite3"), SqliteJobStore(tmp_path / "db.sqlite3")
        return
    ensure_redis()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    yield RedisStudyStore(REDIS_URL, prefix=prefix), RedisJobStore(REDIS_URL, prefix=prefix)
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def test_jobs_created_while_the_study_is_cancelled_are_cancelled_too(
    stores: tuple[Any, Any], tmp_path: Path
) -> None:
    studies, jobs = stores
    study = _study()
    studies.create(study)
    sent: list[str] = []

    def cancel_the_study_meanwhile(job_id: str) -> None:
        # cancel_study runs between the advancer's read and its job creation: it cancels
        # the jobs that exist, which are not all of them yet.
        if not sent:
            cancel_study(study.study_id, studies, jobs)
        sent.append(job_id)

    ended = advance_study(
        study.study_id, studies=studies, jobs=jobs, registry=FileModelRegistry(tmp_path / "r"),
        enqueue_training=cancel_the_study_meanwhile, enqueue_report=sent.append,
    )  # fmt: skip
    assert ended.status == "cancelled"
    assert len(sent) > 1
    assert {jobs.get(job_id).status for job_id in sent} == {"cancelled"}


def test_advancing_twice_starts_each_training_once(stores: tuple[Any, Any], tmp_path: Path) -> None:
    studies, jobs = stores
    study = _study()
    studies.create(study)
    sent: list[str] = []
    registry = FileModelRegistry(tmp_path / "registry")

    def advance() -> Study:
        return advance_study(
            study.study_id, studies=studies, jobs=jobs, registry=registry,
            enqueue_training=sent.append, enqueue_report=sent.append,
        )  # fmt: skip

    first = advance()
    second = advance()
    assert len(sent) == 3 + 1 + 1  # variations, alexnet, secondary alexnet
    assert len(set(sent)) == len(sent)
    assert [s.status for s in first.stages] == [s.status for s in second.stages]
    assert {jobs.get(job_id).status for job_id in sent} == {"queued"}
    # A job that ended failed makes its stage fail on the next advance.
    jobs.finish(sent[0], "failed", error=JobError(type="Boom", message="out of memory"))
    third = advance()
    assert third.stage("variations").status == "failed"
    assert "out of memory" in (third.stage("variations").error or "")
    assert third.stage("best").status == "skipped"
    listed, total = studies.list(status="running")
    assert total == 1 and listed[0].stage("variations").status == "failed"


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    # Sorted p: 0.01*3, 0.02*2, 0.04*1 → 0.03, 0.04, 0.04 (monotone).
    assert holm_adjusted([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_adjusted([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_openapi_documents_the_study_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in (
        ("/studies", "post"), ("/studies", "get"), ("/studies/{study_id}", "get"),
        ("/studies/{study_id}/cancel", "post"), ("/studies/{study_id}/report", "get"),
        ("/studies/{study_id}/plots/{name}.{image_format}", "get"),
        ("/models/{model_name}/versions/{version}/report", "get"),
        ("/models/{model_name}/versions/{version}/plots/{name}.{image_format}", "get"),
    ):  # fmt: skip
        operation = paths[path][method]
        assert operation["summary"] and operation["description"], path
        if "404" in operation["responses"]:
            schema = operation["responses"]["404"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, path
    report = paths["/studies/{study_id}/report"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/html", "text/markdown"} <= set(report)


class _FakeCelery:
    """Records what would be sent to the queue."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.conf = SimpleNamespace(broker_transport_options={})

    def send_task(self, name: str, args: list[str], **_: Any) -> None:
        self.sent.append((name, args[0]))


def _train_without_tensorflow(settings: Settings, job_id: str, validation_accuracy: float) -> None:
    """What a worker does for a job, with a made-up card: claim, register, finish."""
    jobs = SqliteJobStore(settings.jobs_db_path)
    job = jobs.claim(job_id, "fake", 60)
    assert job is not None
    record = make_record(spec=job.spec)
    validation = record.metrics.validation.model_copy(update={"accuracy": validation_accuracy})
    record = record.model_copy(
        update={"metrics": record.metrics.model_copy(update={"validation": validation})}
    )
    registry = FileModelRegistry(settings.resolved_registry_dir)
    version = registry.register(job.model_name, lambda path: path.write_bytes(b"model"), record)
    jobs.finish(job_id, "succeeded", version=version)


def test_a_worker_start_advances_what_a_crash_left_behind(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    celery = _FakeCelery()
    studies = study_store_for(settings)
    study = _study()
    studies.create(study)
    advance_running_studies(settings, celery)
    queued = [job_id for _, job_id in celery.sent]
    variations = [m.job_id for m in study.stage("variations").models]
    alexnet = study.stage("alexnet").models[0].job_id
    assert set(variations) | {alexnet} <= set(queued)
    # The jobs end, but their worker dies before advancing the study.
    for job_id, accuracy in zip([*variations, alexnet], [0.5, 0.95, 0.6, 0.7], strict=True):
        _train_without_tensorflow(settings, job_id, accuracy)
    assert studies.get(study.study_id).stage("augmentation").status == "pending"

    advance_running_studies(settings, celery)  # a worker starts
    after = studies.get(study.study_id)
    best = after.stage("best").winner
    assert best is not None and best.model_name == study.stage("variations").models[1].model_name
    assert after.stage("augmentation").status == "running"
    jobs = SqliteJobStore(settings.jobs_db_path)
    uniform, targeted = (jobs.get(m.job_id) for m in after.stage("augmentation").models)
    assert uniform.spec["augmentation"]["enabled"] is True and uniform.spec["epochs"] == 2
    assert targeted.spec["augmentation"]["target_classes"] == "weak"
    # The two retrains differ in the targeting alone.
    assert {**targeted.spec["augmentation"], "target_classes": [], "reference_model": None} == (
        uniform.spec["augmentation"]
    )
    assert targeted.spec["augmentation"]["reference_model"] == {
        "model_name": best.model_name, "version": 1,
    }  # fmt: skip
    sent_before = len(celery.sent)
    created_before = jobs.list(limit=100)[1]
    advance_running_studies(settings, celery)  # and another: nothing starts twice
    assert jobs.list(limit=100)[1] == created_before
    # Nor is anything sent twice: a lost message is the job store's sweep's to resend.
    assert celery.sent[sent_before:] == []


class _BrokenCelery(_FakeCelery):
    def send_task(self, name: str, args: list[str], **_: Any) -> None:
        raise ConnectionError("broker down")


def test_a_study_job_the_broker_refused_is_sent_by_the_next_sweep(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    studies = study_store_for(settings)
    study = _study()
    studies.create(study)
    with pytest.raises(ConnectionError):
        advance(study.study_id, settings, _BrokenCelery(), studies=studies)
    jobs = SqliteJobStore(settings.jobs_db_path)
    refused = study.stage("variations").models[0].job_id
    assert jobs.get(refused).status == "queued"
    # The sweep sends the refused job now, not after job_resend_after_seconds.
    assert refused in jobs.jobs_to_send(settings.job_resend_after_seconds)


def test_explicit_stages_need_a_winner_where_one_is_used() -> None:
    small = {"label": "small", "spec": {"dataset": "digits"}}
    large = {"label": "large", "spec": {"dataset": "digits", "hyperparameters": {"filters1": 64}}}
    retrain = {"name": "augmented", "depends_on": ["variations"], "trainings": [
        {"label": "targeted", "from_winner": "variations",
         "overrides": {"augmentation": {"target_classes": "weak"}},
         "reference_winner": "variations"}]}  # fmt: skip
    picking = {"name": "variations", "trainings": [small, large], "pick": "validation_accuracy"}
    request = StudyRequest.model_validate({"stages": [picking, retrain]})
    assert [s.name for s in check_stages(request.stages or [])] == ["variations", "augmented"]
    not_picking = StudyRequest.model_validate({"stages": [{**picking, "pick": "none"}, retrain]})
    with pytest.raises(InvalidInputError, match="do not pick one"):
        check_stages(not_picking.stages or [])


def test_a_study_seed_beyond_what_the_trainings_take_is_a_422(client: TestClient) -> None:
    # Found by the schema fuzzer: the study accepted it, its first training spec did not (500).
    response = client.post("/studies", json={"preset": "cnn-lab", "seed": 2**32})
    assert response.status_code == 422
    assert "seed" in response.text


def _one_stage(spec: dict[str, Any], **retrain: Any) -> dict[str, Any]:
    stages: list[dict[str, Any]] = [
        {"name": "base", "pick": "validation_accuracy",
         "trainings": [{"label": "small", "spec": {"dataset": "digits", "epochs": 1}},
                       {"label": "asked", "spec": spec}]},
    ]  # fmt: skip
    if retrain:
        training = {"label": "retrain", "from_winner": "base", **retrain}
        stages.append({"name": "again", "depends_on": ["base"], "trainings": [training]})
    return {"stages": stages}


@pytest.mark.parametrize(
    ("body", "code", "said"),
    [
        # What POST /jobs refuses, a study refuses too: it is no way around the limits.
        (_one_stage({"dataset": "cifar10", "architecture": "custom_cnn",
                     "hyperparameters": {"filters1": 1024, "filters2": 1024, "dense_units": 2048}}),
         "resource_budget_exceeded", "larger than the service allows"),
        (_one_stage({"dataset": "digits", "hyperparameters": {"dense_units": 4096}}),
         "invalid_input", "hyperparameters.dense_units: Input should be less than or equal"),
        (_one_stage({"dataset": "digits", "time_limit_seconds": 600_000}),
         "invalid_input", "time_limit_seconds"),
        (_one_stage({"dataset": "digits",
                     "augmentation": {"enabled": True, "target_classes": ["nope"]}}),
         "invalid_input", "not classes of digits"),
        # A retrain of whichever training wins must be valid whichever it is.
        (_one_stage({"dataset": "digits"}, overrides={"epochs": -5}), "invalid_input", "epochs"),
        (_one_stage({"dataset": "digits"}, overrides={"time_limit_seconds": 600_000}),
         "invalid_input", "time_limit_seconds"),
    ],
)  # fmt: skip
def test_a_study_is_held_to_what_a_job_is_held_to(
    client: TestClient, body: dict[str, Any], code: str, said: str
) -> None:
    response = client.post("/studies", json=body)
    assert response.status_code == 422, response.text
    error = _error(response)
    assert error["code"] == code
    assert said in error["message"] and "stage '" in error["message"]
    assert client.get("/studies").json()["total"] == 0
    assert client.get("/jobs").json()["total"] == 0


def test_a_preset_its_trainings_refuse_is_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    # Should a preset ever pass on a value its training specs refuse, the caller gets a
    # clear invalid-input error (422), not a validation traceback (500).
    monkeypatch.setattr(study_presets, "LAB_FRACTION", 0.0)
    with pytest.raises(InvalidInputError, match="cnn-lab preset cannot build"):
        study_presets.expand(StudyRequest(preset="cnn-lab"))


def test_a_study_with_too_many_candidate_specs_is_refused_before_they_are_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def sixteen(stage: str, **source: Any) -> dict[str, Any]:
        trainings = [{"label": f"t{index}", **source} for index in range(16)]
        return {"name": stage, "trainings": trainings, "pick": "validation_accuracy"}

    spec = {"spec": {"dataset": "digits"}}
    stages: list[dict[str, Any]] = [
        sixteen("a", **spec),
        {"name": "b", "kind": "select", "depends_on": ["a"]},
        {**sixteen("c", from_winner="b"), "depends_on": ["b"]},  # 256: the most allowed
        {"name": "d", "kind": "select", "depends_on": ["c"]},
        {**sixteen("e", from_winner="d"), "depends_on": ["d"]},  # 4,096
    ]
    parsed: list[str] = []
    parse = study_spec._parsed

    def counted(stage: str, label: str, spec: dict[str, Any]) -> Any:
        parsed.append(stage)
        return parse(stage, label, spec)

    monkeypatch.setattr(study_spec, "_parsed", counted)
    request = StudyRequest(stages=stages)
    with pytest.raises(InvalidInputError, match="stage 'e' could run 4096 different specs"):
        study_spec.training_specs(check_stages(request.stages or []))
    assert "e" not in parsed


def test_a_stored_study_an_older_release_accepted_still_loads(
    client: TestClient, home: Path
) -> None:
    # Labels are bounded when a study is created; one stored before the bound still reads.
    long_label = "x" * 120
    stages = check_stages(StudyRequest(stages=[
        {"name": "base", "trainings": [{"label": long_label, "spec": {"dataset": "digits"}}]},
    ]).stages or [])  # fmt: skip
    study = Study.new({"stages": "as stored"}, stages, "older")
    study_store_for(Settings(home=home)).create(study)
    listed = client.get("/studies")
    assert listed.status_code == 200 and listed.json()["items"][0]["study_id"] == study.study_id
    shown = client.get(f"/studies/{study.study_id}").json()
    assert shown["stages"][0]["jobs"][0]["label"] == long_label
    refused = client.post("/studies", json={"stages": [
        {"name": "base", "trainings": [{"label": long_label, "spec": {"dataset": "digits"}}]},
    ]})  # fmt: skip
    assert refused.status_code == 422 and "1 to 100 printable" in _error(refused)["message"]


def test_a_study_whose_advance_failed_is_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job of the study ends while the store is briefly down: the advance that its
    # worker runs fails, so that worker asks the queue for another; and the API's
    # sweep asks for one for every running study, whatever went wrong.
    settings = Settings(home=tmp_path)
    celery = _FakeCelery()
    studies = study_store_for(settings)
    study = _study()
    studies.create(study)
    job_id = study.stage("variations").models[0].job_id

    def store_down(*_: Any, **__: Any) -> None:
        raise ConnectionError("the store is briefly unreachable")

    monkeypatch.setattr("worker.studies.runtime.advance", store_down)
    advance_after_job(job_id, settings, celery)  # never raises
    assert celery.sent == [(ADVANCE_STUDY_TASK, study.study_id)]

    ended = _study()
    studies.create(ended)
    studies.update(ended.study_id, cancelled)
    swept = _FakeCelery()
    assert send_running_studies_an_advance(studies, swept) == [study.study_id]
    assert swept.sent == [(ADVANCE_STUDY_TASK, study.study_id)]


def test_a_study_id_is_created_once_with_its_indexes(stores: tuple[Any, Any]) -> None:
    studies, _ = stores
    study = _study()
    studies.create(study)
    with pytest.raises(ConflictError):
        studies.create(study)
    listed, total = studies.list(status="running")
    assert total == 1 and [s.study_id for s in listed] == [study.study_id]
    assert studies.list()[1] == 1


def test_the_redis_study_store_has_explicit_socket_timeouts(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, redis_url=REDIS_URL, redis_socket_timeout_seconds=2.5)
    store = study_store_for(settings)
    assert isinstance(store, RedisStudyStore)
    options = store.client.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (2.5, 2.5)
