"""The training precision is measured once per machine, remembered, and measured again when
what it depends on changes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer import precision
from trainer.precision import Verdict
from trainer.registry import FileModelRegistry
from trainer.run import train_and_register
from trainer.spec import parse_training_spec


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    precision.preferred_verdict.cache_clear()
    yield
    precision.preferred_verdict.cache_clear()


@pytest.fixture
def measurements(monkeypatch: pytest.MonkeyPatch) -> list[Verdict]:
    """Stand in for the child process, counting how often the machine is measured."""
    made: list[Verdict] = []

    def measure() -> Verdict:
        made.append(Verdict(True, 120.0, 80.0, "bfloat16 steps ran 1.50x as fast"))
        return made[-1]

    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)
    monkeypatch.setattr(precision, "_measure_in_child", measure)
    return made


def test_a_cpu_without_native_bfloat16_trains_in_float32_without_measuring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    monkeypatch.setattr(precision, "_measure_in_child", lambda: pytest.fail("measured"))
    assert precision.bfloat16_trains_faster() is False
    assert not precision.cache_file().exists()


def test_a_machine_is_measured_once_and_the_verdict_is_stored(
    measurements: list[Verdict],
) -> None:
    assert precision.bfloat16_trains_faster() is True
    precision.preferred_verdict.cache_clear()  # as a new process would start
    assert precision.bfloat16_trains_faster() is True
    assert len(measurements) == 1
    stored = json.loads(precision.cache_file().read_text())
    assert stored[precision.machine_key()]["bfloat16_step_milliseconds"] == 80.0


def test_a_changed_machine_or_library_is_measured_again(
    measurements: list[Verdict], monkeypatch: pytest.MonkeyPatch
) -> None:
    precision.bfloat16_trains_faster()
    precision.preferred_verdict.cache_clear()
    monkeypatch.setattr(precision, "_tensorflow_version", lambda: "99.0.0")
    precision.bfloat16_trains_faster()
    assert len(measurements) == 2
    assert len(json.loads(precision.cache_file().read_text())) == 2


def test_capping_onednns_instruction_set_is_measured_again(
    measurements: list[Verdict], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An AMX Xeon capped at AVX512_CORE_BF16 computes bfloat16 as a Xeon without AMX.
    precision.bfloat16_trains_faster()
    precision.preferred_verdict.cache_clear()
    uncapped = precision.machine_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    precision.bfloat16_trains_faster()
    assert len(measurements) == 2
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "")  # set but empty: no cap
    assert precision.machine_key() == uncapped


def test_a_damaged_cache_file_is_measured_over(measurements: list[Verdict]) -> None:
    precision.cache_file().parent.mkdir(parents=True)
    precision.cache_file().write_text("{not json")
    assert precision.bfloat16_trains_faster() is True
    assert len(measurements) == 1
    assert precision.machine_key() in json.loads(precision.cache_file().read_text())


def test_a_failed_measurement_falls_back_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)
    monkeypatch.setattr(sys, "executable", "/bin/false")
    verdict = precision.preferred_verdict()
    assert verdict.use_bfloat16 is False
    assert "measurement failed" in verdict.reason
    assert not precision.cache_file().exists(), "a failure is not remembered as the machine's"


@pytest.mark.skipif(
    not precision.cpu_has_native_bfloat16(),
    # The service never measures there (the test above), and emulated bfloat16 steps
    # took longer than the child's 300-second limit on an AVX2-only EPYC.
    reason="this CPU computes bfloat16 only by emulation; the service trains in float32",
)
def test_the_measurement_times_both_precisions_in_a_child_process() -> None:
    verdict = precision._measure_in_child()
    assert verdict.float32_step_milliseconds is not None, verdict.reason
    assert verdict.bfloat16_step_milliseconds is not None
    assert verdict.float32_step_milliseconds > 0
    assert verdict.bfloat16_step_milliseconds > 0
    speedup = verdict.float32_step_milliseconds / verdict.bfloat16_step_milliseconds
    # Rounded figures: the verdict follows the measured ratio, whichever way it falls.
    if abs(speedup - precision.REQUIRED_SPEEDUP) > 0.01:
        assert verdict.use_bfloat16 is (speedup >= precision.REQUIRED_SPEEDUP)


@pytest.mark.parametrize(("bfloat16", "expected"), [(True, "mixed_bfloat16"), (False, "float32")])
def test_the_card_records_the_precision_the_model_trained_in(
    bfloat16: bool, expected: str, tmp_path: Path
) -> None:
    spec = parse_training_spec(
        {
            "dataset": "digits",
            "hyperparameters": {
                "filters1": 16, "filters2": 32, "dense_units": 64, "bfloat16": bfloat16
            },
            "epochs": 4,
            "batch_size": 32,
            "model_name": "digits-precision",
        }
    )  # fmt: skip
    registry = FileModelRegistry(tmp_path / "registry")
    card = train_and_register(spec, data_dir=None, registry=registry).card
    assert card.compute_precision == expected
    assert card.metrics.test.accuracy >= 0.8, card.metrics.test.accuracy
