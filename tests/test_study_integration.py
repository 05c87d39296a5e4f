"""A quick cnn-lab study end to end: real Redis, real `celery worker` processes, and a
real API process that is killed right after it accepted the study.

The workers, not the API, advance a study: it completes while no API runs, and a new
API process then serves its report. Every figure of the report must equal the figure
in the registry's model card.
"""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.test_worker_integration import Deployment
from tests.workers import (
    REDIS_HOST,
    REDIS_PORT,
    Process,
    ensure_redis,
    free_port,
    redis_database,
    running,
    wait_until,
)
from trainer.registry import FileModelRegistry
from worker.command import celery_worker_command
from worker.studies import RedisStudyStore

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    ensure_redis()
    database = redis_database("study_integration")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=database)
    client.flushdb()
    deployment = Deployment(tmp_path / f"home-{uuid.uuid4().hex[:6]}", database, lease_seconds=6)
    try:
        with running(deployment.workers):
            yield deployment
    finally:
        client.flushdb()


def _start_worker(deployment: Deployment, name: str) -> Process:
    # The product's worker command, as `daciavision worker` and `serve` run it.
    command = celery_worker_command(node_name=f"{name}@%h")
    process = Process(command, deployment.environment, deployment.home / f"{name}.log")
    deployment.workers.append(process)
    return process


def _start_api(deployment: Deployment, port: int, name: str) -> Process:
    # The product's own command: `daciavision serve` (API only when REDIS_URL is set).
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    process = Process(command, deployment.environment, deployment.home / f"{name}.log")
    deployment.workers.append(process)  # stopped with the workers
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/health/live", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, timeout=120, what=f"the API ({name}) to answer")
    return process


def test_a_quick_study_completes_without_the_api_and_reports_card_figures(
    deployment: Deployment,
) -> None:
    _start_worker(deployment, "first")
    _start_worker(deployment, "second")
    port = free_port()
    api = _start_api(deployment, port, "api-1")
    url = f"http://127.0.0.1:{port}"
    body = {"preset": "cnn-lab", "quick": True, "include_reference": False, "epochs": 2,
            "name": "quick-lab"}  # fmt: skip
    response = httpx.post(f"{url}/studies", json=body, timeout=30)
    assert response.status_code == 202, response.text
    study = response.json()
    study_id = study["study_id"]
    first_stages = {s["name"]: s["status"] for s in study["stages"]}
    assert first_stages["variations"] == "running" and first_stages["augmentation"] == "pending"

    api.kill_group(signal.SIGKILL)  # no API from here until the study has ended
    api.popen.wait(timeout=10)
    store = RedisStudyStore(deployment.redis_url)
    ended = wait_until(
        lambda: (s := store.get(study_id)).is_terminal and s,
        timeout=900, interval=2, what="the study to end with no API running",
    )  # fmt: skip
    assert ended.status == "succeeded", [(s.name, s.status, s.error) for s in ended.stages]

    _start_api(deployment, port, "api-2")
    with httpx.Client(base_url=url, timeout=120) as client:
        view = client.get(f"/studies/{study_id}").json()
        assert view["status"] == "succeeded" and view["progress"] == 1.0
        assert view["report_url"] == f"/studies/{study_id}/report"
        stages = {stage["name"]: stage for stage in view["stages"]}
        # Stage jobs are normal jobs.
        job_ids = {job["job_id"] for stage in view["stages"] for job in stage["jobs"]}
        listed = {job["job_id"] for job in client.get("/jobs?limit=200").json()["items"]}
        assert len(job_ids) == 6 and job_ids <= listed  # 3 variations, alexnet, 2 retrains

        registry = FileModelRegistry(deployment.settings.resolved_registry_dir)
        cards = {
            job["model_name"]: registry.get_card(job["model_name"], job["version"])
            for stage in view["stages"]
            for job in stage["jobs"]
        }
        # The winner is the variation with the best validation accuracy.
        variations = [cards[job["model_name"]] for job in stages["variations"]["jobs"]]
        best = max(
            variations, key=lambda c: (c.metrics.validation.accuracy, -c.metrics.validation.loss)
        )
        assert stages["variations"]["winner"]["model_name"] == best.model_name
        assert "validation" in stages["variations"]["winner"]["reason"]
        augmented = [cards[job["model_name"]] for job in stages["augmentation"]["jobs"]]
        assert augmented[0].spec.augmentation.enabled
        reference = augmented[1].spec.augmentation.reference_model
        assert reference is not None
        assert reference.model_name == stages["best"]["winner"]["model_name"]

        report = client.get(f"/studies/{study_id}/report").json()
        for section in ("models", "selections", "comparisons", "augmentation", "discussion"):
            assert report[section], section
        assert len(report["augmentation"]) == 2
        for model in report["models"]:
            card = cards[model["model_name"]]
            assert model["test_accuracy"]["estimate"] == card.metrics.test.accuracy
            assert model["test_accuracy"]["low"] <= card.metrics.test.accuracy
            assert model["test_accuracy"]["high"] >= card.metrics.test.accuracy
            assert model["test_loss"] == card.metrics.test.loss
            assert model["validation_accuracy"] == card.metrics.validation.accuracy
            assert model["generalization_gap"] == card.metrics.generalization_gap
            assert model["parameter_count"] == card.parameter_count
            assert model["model_file_bytes"] == card.model_file_bytes
            assert model["fit_seconds"] == card.timings.fit_seconds
            assert model["epochs_run"] == card.timings.epochs_run
            assert model["layers"] == [layer.model_dump(mode="json") for layer in card.layers]
            assert model["per_class"] == [
                c.model_dump(mode="json") for c in card.metrics.test.per_class
            ]
            assert model["confusion_matrix"]["matrix"] == card.metrics.test.confusion_matrix.matrix
            assert model["history"] == [e.model_dump(mode="json") for e in card.history]
            assert model["inference_batch1_milliseconds"] == card.inference.batch1_milliseconds  # type: ignore[union-attr]
        for effect in report["augmentation"]:
            base = next(m for m in report["models"] if m["key"] == effect["base"])
            variant = next(m for m in report["models"] if m["key"] == effect["variant"])
            for change, before, after in zip(
                effect["per_class"], base["per_class"], variant["per_class"], strict=True
            ):
                assert change["f1_before"] == before["f1"] and change["f1_after"] == after["f1"]
                assert change["f1_delta"]["estimate"] == pytest.approx(
                    after["f1"] - before["f1"], abs=1e-5
                )

        html = client.get(f"/studies/{study_id}/report", headers={"accept": "text/html"})
        assert html.headers["content-type"].startswith("text/html")
        page = html.text
        assert "Plotly.newPlot" in page and "<script src=" not in page  # plotly.js inlined
        for heading in ("Discussion", "Comparison", "Model selection", "McNemar", "Per-class F1"):
            assert heading in page, heading
        markdown = client.get(f"/studies/{study_id}/report?format=markdown").text
        assert f"](/studies/{study_id}/plots/accuracy_vs_cost.png)" in markdown
        for sentence in report["discussion"]:
            assert sentence in markdown
        svg = client.get(f"/studies/{study_id}/plots/accuracy_vs_cost.svg")
        assert svg.status_code == 200 and svg.text.lstrip().startswith("<?xml")
        version = client.get(f"/models/{best.model_name}/versions/1/report")
        assert version.status_code == 200 and "Plotly.newPlot" in version.text
        plot = client.get(f"/models/{best.model_name}/versions/1/plots/confusion.svg")
        assert plot.status_code == 200 and "<svg" in plot.text
        png = client.get(f"/studies/{study_id}/plots/accuracy_vs_cost.png")
        assert png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
        png = client.get(f"/models/{best.model_name}/versions/1/plots/confusion.png")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        wrong = client.get(f"/studies/{study_id}/plots/accuracy_vs_cost.gif")
        assert wrong.status_code == 422 and "svg" in wrong.text and "png" in wrong.text
