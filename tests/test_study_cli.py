"""`daciavision study`: sends only what the user gave, draws stage bars, saves reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service import study_cli
from service.app import create_app
from service.cli import build_parser, main
from worker.settings import Settings

STUDY: dict[str, Any] = {
    "study_id": "a" * 32, "status": "succeeded", "progress": 1.0,
    "report_url": f"/studies/{'a' * 32}/report",
    "stages": [
        {"name": "variations", "progress": 1.0, "status": "succeeded",
         "winner": {"label": "64/128/256"}, "error": None, "jobs": [{}, {}, {}]},
        {"name": "alexnet", "progress": 1.0, "status": "succeeded",
         "winner": {"label": "alexnet"}, "error": None, "jobs": [{}]},
        {"name": "augmentation", "progress": 0.5, "status": "running", "winner": None,
         "error": None, "jobs": [{}, {}]},
    ],
}  # fmt: skip


def _serve(monkeypatch: pytest.MonkeyPatch, seen: list[httpx.Request]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith(".png"):
            return httpx.Response(200, content=b"\x89PNG")
        if request.url.params.get("format") == "markdown":
            plot = f"/studies/{'a' * 32}/plots/accuracy_vs_cost.png"
            return httpx.Response(200, text=f"# Study\n\n![plot]({plot})\n")
        return httpx.Response(202 if request.method == "POST" else 200, json=STUDY)

    transport = httpx.MockTransport(handler)
    monkeypatch.setattr(
        study_cli,
        "api_client",
        lambda arguments: httpx.Client(base_url="http://t", transport=transport),
    )


def test_run_sends_only_the_given_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []
    _serve(monkeypatch, seen)
    assert main(["study", "run", "cnn-lab", "--quick", "--epochs", "3"]) == 0
    assert seen[0].method == "POST" and seen[0].url.path == "/studies"
    assert seen[0].read() == b'{"preset":"cnn-lab","quick":true,"epochs":3}'


def test_run_sends_the_seed_and_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []
    _serve(monkeypatch, seen)
    assert main(["study", "run", "cnn-lab", "--seed", "7", "--name", "lab, seed 7"]) == 0
    assert seen[0].read() == b'{"preset":"cnn-lab","seed":7,"name":"lab, seed 7"}'


def test_stage_lines_show_a_bar_and_the_winner() -> None:
    lines = study_cli.stage_lines(STUDY, width=10)
    assert "[##########] succeeded" in lines[1] and "winner: 64/128/256" in lines[1]
    assert "model: alexnet" in lines[2] and "winner" not in lines[2]
    assert "[#####.....] running" in lines[3]


def test_follow_into_a_log_prints_only_the_lines_that_changed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    running = {**STUDY, "status": "running", "progress": 0.8}
    answers = iter([running, running, STUDY])
    monkeypatch.setattr(study_cli, "api_call", lambda *args, **kwargs: next(answers))
    monkeypatch.setattr("service.study_cli.time.sleep", lambda seconds: None)
    with httpx.Client(base_url="http://lab.example:8000") as client:
        assert study_cli._follow(client, "a" * 32) == 0
    printed = capsys.readouterr().out.splitlines()
    # The first poll prints every line; the unchanged second prints nothing; the last
    # prints only the study line, whose status changed.
    assert printed[:4] == study_cli.stage_lines(running)
    assert printed[4:] == [
        study_cli.stage_lines(STUDY)[0],
        # A link to open, and the command that saves it.
        f"report: http://lab.example:8000{STUDY['report_url']}?format=html",
        f"  save it: daciavision study report {STUDY['study_id']} --output report.html",
    ]


def test_markdown_report_is_saved_with_its_plots(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[httpx.Request] = []
    _serve(monkeypatch, seen)
    # Into a folder that does not exist yet, as `--output docs/examples/lab.md` would.
    output = tmp_path / "examples" / "lab.md"
    assert main(["study", "report", "a" * 32, "--output", str(output)]) == 0
    assert "](lab_plots/accuracy_vs_cost.png)" in output.read_text()
    assert (output.parent / "lab_plots" / "accuracy_vs_cost.png").read_bytes() == b"\x89PNG"


def test_the_preset_choices_come_from_the_definitions() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["study", "run", "no-such-preset"])


def test_a_seed_out_of_range_is_refused_by_the_server_with_its_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI does not bound the seed itself: the API's StudyRequest does, one definition.
    app = create_app(Settings(home=tmp_path))
    monkeypatch.setattr(study_cli, "api_client", lambda arguments: TestClient(app))
    assert main(["study", "run", "cnn-lab", "--seed", "-1"]) == 2  # invalid input, as locally
    error = capsys.readouterr().err
    assert "422 from POST /studies" in error and "seed" in error


def test_an_output_of_an_unknown_kind_is_invalid_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "report", "a" * 32, "--output", "lab.txt"]) == 2
    assert (
        "--output must end in one of .html, .htm, .md, .json, got lab.txt"
        in capsys.readouterr().err
    )
