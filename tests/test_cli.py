"""The `daciavision` command: local training, and the client against a real server."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.cli import main
from service.client import ServerError, api_client, progress_line, raise_for_error
from service.download import write_checked
from tests.workers import Process, free_port, running, service_environment, wait_until
from trainer.data import load_raw
from trainer.registry import FileModelRegistry
from worker.settings import get_settings

CLI = [sys.executable, "-m", "service.cli"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("DACIAVISION_HOME", str(tmp_path))
    for name in ("REDIS_URL", "DATA_DIR", "REGISTRY_DIR"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_train_registers_a_version_and_prints_the_report(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["train", "--dataset", "digits", "--epochs", "6", "--batch-size", "32",
         "-p", "filters1=8", "-p", "filters2=16", "-p", "dense_units=32",
         "--model-name", "digits-cli"]
    )  # fmt: skip
    output = capsys.readouterr().out
    assert code == 0
    assert "registered digits-cli version 1" in output
    assert "test accuracy" in output and "weak classes" in output
    card = FileModelRegistry(home / "registry").get_card("digits-cli", 1).model_dump(mode="json")
    assert card["spec"]["hyperparameters"]["filters1"] == 8
    assert card["metrics"]["test"]["accuracy"] >= 0.8
    assert f"{card['metrics']['test']['accuracy']:.4f}" in output
    # Training accuracy as validation's is measured, not the lab's running figure.
    assert f"train accuracy {card['metrics']['train_accuracy']:.4f}" in output

    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "digits-cli" in listing and f"{card['metrics']['test']['accuracy']:.4f}" in listing
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["model_name"] == "digits-cli" and rows[0]["version"] == 1


def test_train_rejects_a_bad_spec_with_the_field_named(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--dataset", "digits", "-p", "filters1=-3"])
    assert code == 2
    error = capsys.readouterr().err
    # One line per field, without the union's internal names.
    assert "  hyperparameters.filters1: Input should be greater than or equal to 1" in error
    assert "custom_cnn" not in error and "function-after" not in error
    assert not (home / "registry" / "digits-custom-cnn").exists()


def test_train_rejects_a_sample_too_small_to_split_as_the_api_does(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--dataset", "digits", "--sample-fraction", "0.001"])
    assert code == 2
    error = capsys.readouterr().err
    assert "sample_fraction 0.001 keeps 2 of the 1,437 training images of digits" in error
    assert not (home / "registry").exists() or not any((home / "registry").iterdir())


NOWHERE = "http://127.0.0.1:9"  # nothing listens on port 9


@pytest.mark.parametrize(
    ("arguments", "environment", "expected", "status"),
    [
        # Invalid input, found before anything is sent: 2, as argparse's own errors.
        (["predict", "no-such.png", "--model-name", "m"], {}, "no-such.png: no such image", 2),
        (["predict", ".", "--model-name", "m"], {}, ".: no such image file", 2),
        (["jobs", "list", "--url", "localhost:8000"], {}, "needs its scheme: http://localhost", 2),
        (["jobs", "list"], {"DACIAVISION_API_KEY": "dv_clé"}, "characters an HTTP header", 2),
        # The file system refused a file the command was to write: 1.
        (["study", "report", "a" * 32, "--output", "/proc/no/such/r.html"], {}, "/proc/no", 1),
    ],
)
def test_a_users_mistake_is_one_line_not_a_traceback(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    environment: dict[str, str],
    expected: str,
    status: int,
) -> None:
    monkeypatch.setenv("DACIAVISION_API_URL", NOWHERE)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    assert main(arguments) == status
    error = capsys.readouterr().err
    assert error.startswith("error: ") and expected in error and "Traceback" not in error
    assert "clé" not in error  # never the key itself


def test_a_key_file_s_trailing_newline_is_not_part_of_the_key(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DACIAVISION_API_KEY", "dv_abc\n")
    get_settings.cache_clear()
    with api_client(argparse.Namespace(url=NOWHERE)) as client:
        assert client.headers["Authorization"] == "Bearer dv_abc"


@pytest.mark.parametrize(
    "arguments",
    [["serve", "--port", "99999"], ["serve", "--workers", "-1"], ["jobs", "list", "--limit", "0"],
     ["jobs", "list", "--status", "done"], ["alias", "set", "m", "production", "0"],
     ["alias", "set", "m", "production", "v2"]],
)  # fmt: skip
def test_out_of_range_numbers_are_usage_errors(
    arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(arguments)
    assert exit_.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_a_refused_key_says_which_setting_the_cli_sends(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusal = httpx.Response(
        401,
        json={"detail": {"code": "unauthenticated", "message": "a valid API key is needed"}},
        request=httpx.Request("GET", f"{NOWHERE}/jobs"),
    )
    with pytest.raises(ServerError, match="set DACIAVISION_API_KEY to a key"):
        raise_for_error(refusal, "GET", "/jobs")
    monkeypatch.setenv("DACIAVISION_API_KEY", "dv_wrong")
    get_settings.cache_clear()
    with pytest.raises(ServerError, match="this command sends DACIAVISION_API_KEY"):
        raise_for_error(refusal, "GET", "/jobs")


def test_a_server_that_is_not_ours_is_named_not_a_json_traceback(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>a router's login page</html>")

        def log_message(self, *arguments: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["jobs", "list", "--url", url]) == 1
    finally:
        server.shutdown()
        server.server_close()
    error = capsys.readouterr().err
    assert "with text/html, not JSON: is --url" in error and "Traceback" not in error


def test_a_reader_that_leaves_early_gets_no_traceback(home: Path, tmp_path: Path) -> None:
    # `daciavision keys new ... | head -0`: the pipe is closed before the command writes.
    reader, writer = os.pipe()
    os.close(reader)
    finished = subprocess.run(
        [*CLI, "keys", "new", "--scopes", "predict"], stdout=writer, stderr=subprocess.PIPE,
        env={**os.environ, "DACIAVISION_HOME": str(tmp_path)}, text=True, timeout=60,
    )  # fmt: skip
    os.close(writer)
    assert finished.stderr == ""


def test_progress_line_draws_finished_epochs() -> None:
    job = {
        "status": "running",
        "spec": {"epochs": 10},
        "progress": {"epoch": 5, "epochs": 10, "loss": 0.5, "accuracy": 0.8,
                     "val_loss": 0.6, "val_accuracy": 0.75, "seconds": 2.0},
    }  # fmt: skip
    line = progress_line(job, width=10)
    assert "[#####.....] 5/10" in line and "val_acc 0.7500" in line
    assert "[..........] 0/10" in progress_line({"status": "queued", "spec": {"epochs": 10}}, 10)


@pytest.mark.integration
def test_embedded_serve_runs_jobs_and_the_client_cli_talks_to_it(tmp_path: Path) -> None:
    """The README's run command: API plus worker with no external server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = service_environment(tmp_path / "home", None, DACIAVISION_API_URL=url)
    server = Process([*CLI, "serve", "--port", str(port)], environment, tmp_path / "serve.log")
    with running([server]):
        wait_until(lambda: _ready(url), timeout=60, what="the embedded server to be ready")
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"dataset": "digits", "epochs": 4, "batch_size": 32}))
        submitted = subprocess.run(
            [*CLI, "jobs", "submit", str(spec), "--model-name", "digits-served", "--follow"],
            env=environment, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "registered digits-served version 1" in submitted.stdout
        assert "4/4" in submitted.stdout

        elsewhere = {**environment, "DACIAVISION_API_URL": "http://127.0.0.1:9"}
        listed = subprocess.run(
            [*CLI, "jobs", "list", "--url", url],
            env=elsewhere, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "succeeded" in listed.stdout and "digits-served" in listed.stdout
        # Whitespace splits every row into its six columns, however long the ids.
        assert {len(line.split()) for line in listed.stdout.splitlines()[:-1]} == {6}

        image = tmp_path / "digit.png"
        raw = load_raw("digits", None)
        buffer = io.BytesIO()
        Image.fromarray(raw.x_test[3]).save(buffer, format="PNG")
        image.write_bytes(buffer.getvalue())
        predicted = subprocess.run(
            [*CLI, "predict", str(image), "--model-name", "digits-served"],
            env=environment, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert predicted.returncode == 0, predicted.stderr
        assert "digits-served version 1" in predicted.stdout
        assert f"{image}:" in predicted.stdout

        downloaded = subprocess.run(
            [*CLI, "download", "digits-served", "--output", str(tmp_path)],
            env=environment, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert downloaded.returncode == 0, downloaded.stderr
        saved = tmp_path / "digits-served-v1.keras"
        assert f"saved {saved}" in downloaded.stdout
        registered = tmp_path / "home" / "registry" / "digits-served" / "1" / "model.keras"
        assert saved.read_bytes() == registered.read_bytes()
        assert not list(tmp_path.glob(".digits-served-v1.keras.*"))  # no partial file left
        # Again, into the folder and onto the file: the file holds the version, kept as is.
        modified = saved.stat().st_mtime_ns
        for output in (tmp_path, saved):
            again = subprocess.run(
                [*CLI, "download", "digits-served", "--output", str(output)],
                env=environment, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert again.returncode == 0, again.stderr
            assert f"{saved} holds this version already" in again.stdout
        assert saved.stat().st_mtime_ns == modified

        missing = subprocess.run(
            [*CLI, "jobs", "show", "no-such-job"],
            env=environment, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert missing.returncode == 1
        assert "404" in missing.stderr and "job_not_found" in missing.stderr

    # A readable start: the lines a user needs, not the embedded worker's banner.
    start = server.log()
    registry = tmp_path / "home" / "registry"
    expected_lines = (f"API        {url}", f"dashboard  {url}/", f"docs       {url}/docs",
                      "mode       embedded", f"registry   {registry}",
                      "workers    1 embedded")  # fmt: skip
    for line in expected_lines:
        assert line in start, start
    assert "celery@" not in start and "[tasks]" not in start and "Started server" not in start
    worker_log = (tmp_path / "home" / "logs" / "worker-0.log").read_text()
    assert "embedded0@" in worker_log and "ready" in worker_log


def test_download_to_a_missing_folder_says_so_before_asking_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-folder" / "model.keras"
    # No server listens on port 9: the folder is checked first.
    arguments = ["download", "digits", "--output", str(missing), "--url", "http://127.0.0.1:9"]
    assert main(arguments) == 2
    assert f"--output {missing}: neither it nor its folder exists" in capsys.readouterr().err


def test_a_download_that_fails_its_checksum_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model.keras"
    target.write_bytes(b"the version saved before")
    chunks = iter([b"half of a ", b"model file"])
    with pytest.raises(ServerError, match="nothing was saved"):
        write_checked(chunks, target, hashlib.sha256(b"the whole model file").hexdigest())
    assert target.read_bytes() == b"the version saved before"
    assert [path.name for path in tmp_path.iterdir()] == ["model.keras"]

    write_checked(
        iter([b"the whole ", b"model file"]),
        target,
        hashlib.sha256(b"the whole model file").hexdigest(),
    )
    assert target.read_bytes() == b"the whole model file"
    assert [path.name for path in tmp_path.iterdir()] == ["model.keras"]
    # Not the temporary file's private mode: what the umask allows, as for any new file.
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_keys_new_refuses_to_extend_a_broken_key_list(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DACIAVISION_API_KEYS", "not-a-hash:predict")
    get_settings.cache_clear()
    assert main(["keys", "new", "--scopes", "predict"]) == 2
    captured = capsys.readouterr()
    assert "DACIAVISION_API_KEYS set here is not valid" in captured.err and not captured.out
