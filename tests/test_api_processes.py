"""`daciavision serve --api-processes 2`: two real API processes on one port.

Each answers predictions with the same model, and a Prometheus scrape of either sums
the counters of both.
"""

from __future__ import annotations

import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import keras
import numpy as np
import pytest

from service.api_processes import api_process_count
from service.cli import main
from tests.conftest import make_record
from tests.workers import Process, free_port, running, service_environment, wait_until
from trainer.architectures import build_model
from trainer.architectures.custom_cnn import CustomCnnHyperparameters
from trainer.errors import InvalidInputError
from trainer.registry import FileModelRegistry
from worker.settings import Settings, get_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL_NAME = "shared"
CONCURRENT_CLIENTS = 8
ROUNDS = 25


def _register_model(home: Path) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model(
        "custom_cnn", CustomCnnHyperparameters(filters1=4, filters2=4, dense_units=8), (8, 8, 1), 3
    )
    record = make_record(class_names=["a", "b", "c"], input_shape=[8, 8, 1])
    FileModelRegistry(home / "registry").register(MODEL_NAME, model.save, record)
    return model


def _api_process_ids(server_pid: int) -> set[int]:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return {
        int(child)
        for child in children
        if b"multiprocessing.spawn" in Path(f"/proc/{child}/cmdline").read_bytes()
    }


def _counter(metrics: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in metrics.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    raise AssertionError(f"{name}{{{wanted}}} not in the scrape:\n{metrics}")


def test_two_api_processes_serve_one_port_and_sum_their_telemetry(tmp_path: Path) -> None:
    model = _register_model(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 1))
    expected = model(pixels[None].astype("float32") / 255.0).numpy()[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    server = Process(
        [*command, "--api-processes", "2", "--workers", "1"],
        service_environment(tmp_path, None),
        tmp_path / "serve.log",
    )
    with running([server]):
        wait_until(lambda: _answers(f"{url}/health/live"), timeout=120, what="the API")
        assert len(_api_process_ids(server.popen.pid)) == 2
        body = {"instances": [pixels.tolist()], "pixel_range": "0-255"}

        def predict_on_a_new_connection(_: int) -> None:
            # Each process loads the model on its first request, beside the suite's
            # other tests on two cores: allow more than httpx's default 5 s for that.
            answer = httpx.post(
                f"{url}/predict?model_name={MODEL_NAME}&top_k=3", json=body, timeout=60
            )
            assert answer.status_code == 200, answer.text
            probabilities = {
                p["label"]: p["probability"] for p in answer.json()["predictions"][0]["top_k"]
            }
            np.testing.assert_allclose(
                [probabilities[label] for label in "abc"], expected, atol=1e-5
            )

        # Both processes accept on one socket, and whichever wakes first takes the
        # connection: one after another from an idle client, a single process can take
        # them all (it did, 40 of 40, on a clean-clone run). Clients at once keep one
        # process busy while the other accepts, as under real load; send rounds of them
        # until both have counted.
        telemetry = tmp_path / "run"
        sent = 0
        with ThreadPoolExecutor(CONCURRENT_CLIENTS) as clients:
            for _ in range(ROUNDS):
                list(clients.map(predict_on_a_new_connection, range(CONCURRENT_CLIENTS)))
                sent += CONCURRENT_CLIENTS
                if len(_counting_processes(telemetry)) == 2:
                    break
        writers = _counting_processes(telemetry)
        assert len(writers) == 2, f"both processes should have counted requests: {writers}"

        def requests_counted(scrape: str) -> float:
            return _counter(
                scrape, "daciavision_http_requests_total", method="POST", route="/predict",
                status="200",
            )  # fmt: skip

        # The middleware counts a request once its response has gone out, so the client
        # can hold the last answer a moment before its process has counted it.
        def scrape_with_every_request() -> str | None:
            scrape = httpx.get(f"{url}/monitoring/prometheus/metrics").text
            return scrape if requests_counted(scrape) >= sent else None

        scrape = wait_until(
            scrape_with_every_request, timeout=10, what=f"{sent} /predict requests counted"
        )
        assert (
            _counter(scrape, "daciavision_predictions_total", model_name=MODEL_NAME, version="1")
            == sent
        )
        assert requests_counted(scrape) == sent
    assert not any(telemetry.iterdir()), "the telemetry folder outlives the server"


def _counting_processes(telemetry: Path) -> set[str]:
    """The processes (by the pid in their file names) that wrote a counter."""
    return {path.name.rsplit("_", 1)[-1] for path in telemetry.glob("*/counter_*.db")}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_the_option_overrides_the_setting_within_its_bounds() -> None:
    settings = Settings(api_processes=3)
    assert api_process_count(None, settings) == 3
    assert api_process_count(2, settings) == 2
    with pytest.raises(InvalidInputError, match="greater than or equal to 1"):
        api_process_count(0, settings)
    with pytest.raises(InvalidInputError, match="less than or equal to 64"):
        api_process_count(65, settings)


def test_the_command_refuses_zero_processes_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DACIAVISION_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert main(["serve", "--api-processes", "0"]) == 2
    finally:
        get_settings.cache_clear()
    error = capsys.readouterr().err
    assert "--api-processes 0: Input should be greater than or equal to 1" in error
    assert not (tmp_path / "logs").exists(), "no embedded worker may start"
