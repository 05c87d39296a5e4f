"""`daciavision metrics`, `alias …`, `models --url` and the --json outputs, against the
API (in-process) over the models test_api trains once."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.cli import main
from tests.test_api import MODEL, trained_registry  # noqa: F401  (a fixture)
from trainer.data import load_raw
from worker.settings import get_settings

URL = ["--url", "http://testserver"]


@pytest.fixture
def home(tmp_path: Path, trained_registry: Path) -> Path:  # noqa: F811  (the fixture's use)
    shutil.copytree(trained_registry, tmp_path / "registry")
    return tmp_path


@pytest.fixture
def server(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    # The commands' HTTP client is the in-process app: the routes a server runs. Not
    # closed after each command: the app's lifespan is the fixture's.
    for module in ("service.client", "service.model_cli"):
        monkeypatch.setattr(f"{module}.api_client", lambda arguments: nullcontext(client))
    return client


def test_metrics_prints_the_per_class_report_and_its_json(
    server: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    report = server.get("/metrics", params={"model_name": MODEL, "version": "1"}).json()
    assert main(["metrics", MODEL, "--version", "1", *URL]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{MODEL} version 1: custom_cnn on digits, test accuracy ")
    assert f"{report['accuracy']:.4f}" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:12]}
    for entry in report["per_class"]:
        row = rows[entry["class_name"]]
        assert row[1:5] == [f"{entry['precision']:.4f}", f"{entry['recall']:.4f}",
                            f"{entry['f1']:.4f}", str(entry["support"])]  # fmt: skip
        weak = {weak["class_name"] for weak in report["weak_classes"]}
        assert (row[-1] == "weak") == (entry["class_name"] in weak)
    assert main(["metrics", MODEL, "--version", "1", "--json", *URL]) == 0
    assert json.loads(capsys.readouterr().out) == report


def test_alias_set_rollback_history_delete(
    server: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alias", "set", MODEL, "staging", "1", *URL]) == 0
    assert main(["alias", "set", MODEL, "staging", "2", *URL]) == 0
    assert main(["alias", "rollback", MODEL, "staging", *URL]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{MODEL}: staging unset → v1", f"{MODEL}: staging v1 → v2", f"{MODEL}: staging v2 → v1"
    ]  # fmt: skip
    assert server.get(f"/models/{MODEL}").json()["aliases"]["staging"] == 1
    assert main(["alias", "delete", MODEL, "staging", *URL]) == 0
    assert capsys.readouterr().out == f"{MODEL}: staging v1 → removed\n"
    assert main(["alias", "history", MODEL, "staging", *URL]) == 0
    moves = [line.split("  ")[1] for line in capsys.readouterr().out.splitlines()]
    assert moves == ["unset → v1", "v1 → v2", "v2 → v1", "v1 → removed"]
    # The server's refusal, as any command prints it.
    assert main(["alias", "rollback", MODEL, "never-set", *URL]) == 1
    assert "404" in capsys.readouterr().err


def test_models_lists_a_servers_registry_with_url(
    server: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--json", *URL]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(row["model_name"], row["version"]) for row in rows} >= {(MODEL, 1), (MODEL, 2)}


def test_jobs_list_submit_and_predict_print_json(
    server: TestClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["jobs", "submit", "--dataset", "digits", "--epochs", "1", "--json", *URL]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "queued" and job["spec"]["epochs"] == 1
    assert main(["jobs", "list", "--json", *URL]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == [job]

    image = tmp_path / "digit.png"
    buffer = io.BytesIO()
    Image.fromarray(load_raw("digits", None).x_test[0]).save(buffer, format="PNG")
    image.write_bytes(buffer.getvalue())
    assert main(["predict", str(image), "--model-name", MODEL, "--json", *URL]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model_name"] == MODEL and len(answer["predictions"]) == 1


def test_models_lists_the_server_that_daciavision_api_url_names(
    server: TestClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As the other client commands do; this machine's own registry is empty.
    monkeypatch.setenv("DACIAVISION_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("DACIAVISION_API_URL", "http://testserver")
    get_settings.cache_clear()
    try:
        assert main(["models", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert {(row["model_name"], row["version"]) for row in rows} >= {(MODEL, 1), (MODEL, 2)}
        monkeypatch.delenv("DACIAVISION_API_URL")
        get_settings.cache_clear()
        assert main(["models"]) == 0
        assert "DACIAVISION_API_URL lists a server's" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
