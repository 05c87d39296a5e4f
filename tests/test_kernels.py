"""Processes that train run TensorFlow's oneDNN kernels; processes that serve keep its default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from trainer.kernels import ONEDNN_VARIABLE, onednn_is_tensorflows_default

# TensorFlow logs this line when it loads with its oneDNN kernels on.
ONEDNN_ON = "oneDNN custom operations are on"


def _load_tensorflow_after(statement: str, **variables: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != ONEDNN_VARIABLE}
    environment.update(TF_CPP_MIN_LOG_LEVEL="0", **variables)
    script = (
        f"{statement}\nimport os, tensorflow\n"
        f"print('variable:', os.environ.get({ONEDNN_VARIABLE!r}))"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, check=True, timeout=120, env=environment,
    )  # fmt: skip


# What `celery -A worker.app worker` does before its pool forks the children that train.
WORKER_START = "import worker.app, celery\ncelery.signals.worker_init.send(sender=None)"


def test_a_worker_trains_with_onednn_kernels(tmp_path: Path) -> None:
    loaded = _load_tensorflow_after(WORKER_START, DACIAVISION_HOME=str(tmp_path))
    assert "variable: 1" in loaded.stdout
    assert ONEDNN_ON in loaded.stderr


def test_the_users_choice_of_kernels_wins(tmp_path: Path) -> None:
    loaded = _load_tensorflow_after(
        WORKER_START, DACIAVISION_HOME=str(tmp_path), **{ONEDNN_VARIABLE: "0"}
    )
    assert "variable: 0" in loaded.stdout
    assert ONEDNN_ON not in loaded.stderr


def test_the_api_keeps_tensorflows_default_kernels() -> None:
    # Small-batch inference is faster with TensorFlow's default on AVX2-only CPUs.
    loaded = _load_tensorflow_after("import service.app, worker.app")
    assert "variable: None" in loaded.stdout


def test_cli_training_asks_for_onednn_kernels(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ONEDNN_VARIABLE, raising=False)
    # A bad spec stops before training; the kernels are chosen before the spec is read.
    assert main(["train", "--dataset", "digits", "-p", "filters1=-3"]) == 2
    assert os.environ[ONEDNN_VARIABLE] == "1"


def test_we_know_when_tensorflow_enables_onednn_by_itself() -> None:
    # The benchmarks name the baseline's kernels from this; TensorFlow is the judge.
    loaded = _load_tensorflow_after("pass")
    assert (ONEDNN_ON in loaded.stderr) == onednn_is_tensorflows_default()
