"""The load scenario, shortened: /predict at concurrency 32 while a job trains and an alias moves.

A real Redis, a real Celery worker process and the API under uvicorn over a
socket (``bench/load_scenario.py``, shared with ``bench/load.py``), driven by an
async httpx client so each answer can be checked. No timing is asserted: the
figures are printed, and measured properly by the benchmark.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from bench.load_scenario import (
    LoadResult,
    LoadTarget,
    RequestRecord,
    ScenarioConfig,
    ScenarioResult,
    run_scenario,
)
from service.schemas_predict import PredictResponse
from tests.workers import REDIS_HOST, REDIS_PORT, ensure_redis, redis_database, redis_url

pytestmark = pytest.mark.integration

MODEL_NAME = "digits-load"
SMALL_CNN = {"filters1": 8, "filters2": 16, "dense_units": 32}
REQUESTS = 600
CONCURRENCY = 32


def _spec(**fields: object) -> dict[str, object]:
    return {"dataset": "digits", "architecture": "custom_cnn", "hyperparameters": SMALL_CNN,
            "batch_size": 32, "epochs": 1, **fields}  # fmt: skip


async def _drive(target: LoadTarget) -> LoadResult:
    """``target.requests`` uploads, ``target.concurrency`` in flight at any time."""
    records: list[RequestRecord] = []
    issued = iter(range(target.requests))
    limits = httpx.Limits(max_connections=target.concurrency)

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one_client() -> None:
            for index in issued:
                png = target.pngs[index % len(target.pngs)]
                files = [("files", (f"digit-{index}.png", png, "image/png"))]
                started = time.monotonic()
                try:
                    response = await client.post(target.url, files=files)
                    status, body = response.status_code, response.text
                except httpx.TransportError as error:
                    status, body = None, f"{type(error).__name__}: {error}"
                records.append(RequestRecord(started, time.monotonic(), status, body))

        began = time.monotonic()
        await asyncio.gather(*(one_client() for _ in range(target.concurrency)))
        wall = time.monotonic() - began
    failed = [record for record in records if record.status is None or record.status >= 300]
    return LoadResult(
        requests=len(records),
        errors=len(failed),
        latencies=[r.finished - r.started for r in records if r not in failed],
        wall_seconds=wall,
        error_samples=[
            f"{record.status} at {record.started - began:.2f}–{record.finished - began:.2f} s: "
            f"{record.body[:300]}"
            for record in failed[:5]
        ],
        records=records,
    )


def _expected_versions(record: RequestRecord, result: ScenarioResult) -> set[int]:
    """The versions ``production`` may have meant while this request was in flight."""
    first, second = result.versions
    move_to_second, move_back = result.moves
    if record.finished < move_to_second.started:
        return {first}
    if record.started > move_to_second.finished and record.finished < move_back.started:
        return {second}
    if record.started > move_back.finished:
        return {first}
    return {first, second}  # overlapped a move: either is right


def _log_tail(path: Path) -> str:
    """What the API logged last, to tell a server-side failure from a client-side one."""
    return path.read_text(errors="replace")[-3000:] if path.exists() else f"no {path.name}"


@pytest.fixture
def load_redis_url() -> Iterator[str]:
    ensure_redis()
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_database("load"))
    client.flushdb()
    yield redis_url("load")
    client.flushdb()


def test_predict_under_load_while_a_job_trains_and_the_alias_moves_twice(
    tmp_path: Path, load_redis_url: str
) -> None:
    config = ScenarioConfig(
        home=tmp_path / "home",
        redis_url=load_redis_url,
        data_dir=None,
        model_name=MODEL_NAME,
        version_specs=(_spec(seed=1), _spec(seed=2)),
        job_spec={**_spec(epochs=12, batch_size=16), "model_name": MODEL_NAME},
        requests=REQUESTS,
        concurrency=CONCURRENCY,
        images=20,
    )
    began = time.monotonic()

    def log(line: str) -> None:
        print(f"{time.monotonic() - began:5.1f} s  {line}", flush=True)

    result = run_scenario(config, lambda target: asyncio.run(_drive(target)), log=log)
    log(f"job {result.job['status']} at {result.job['finished_at']}")
    load = result.load
    log(
        f"{load.requests} requests in {load.wall_seconds:.1f} s ({load.throughput:.0f}/s), "
        f"p50 {load.percentile(0.5) * 1000:.0f} ms, p99 {load.percentile(0.99) * 1000:.0f} ms; "
        f"served by version: {result.predictions_by_version}; moves: "
        + ", ".join(
            f"{move.from_version}→{move.to_version} at {move.predictions_before} "
            f"in {move.finished - move.started:.2f} s"
            for move in result.moves
        )
        + f"; job {result.job['status']}, "
        f"training throughout the load: {result.job_covered_load}"
    )

    assert load.requests == REQUESTS
    assert load.errors == 0, (load.error_samples, _log_tail(tmp_path / "home" / "api.log"))
    first, second = result.versions
    for move in result.moves:
        assert move.status == 200, move.body
    moved = [(move.from_version, move.to_version) for move in result.moves]
    assert moved == [(first, second), (second, first)], "the load ended before both moves"

    served: dict[int, int] = {}
    for record in load.records:
        answer = PredictResponse.model_validate_json(record.body)
        assert answer.model_name == MODEL_NAME
        assert answer.version in _expected_versions(record, result), record
        (prediction,) = answer.predictions
        assert prediction.class_index in range(10)
        assert prediction.label == str(prediction.class_index)
        assert prediction.top_k[0].label == prediction.label
        assert prediction.confidence == pytest.approx(prediction.top_k[0].probability)
        assert 0 < sum(entry.probability for entry in prediction.top_k) <= 1 + 1e-5
        served[answer.version] = served.get(answer.version, 0) + 1
    assert set(served) == {first, second}, "traffic followed the alias to version 2 and back"
    assert served == result.predictions_by_version  # the API counted what the client saw

    assert result.job_status_at_load_start == "running"
    assert result.job["status"] == "succeeded", result.job["error"]
    assert result.job["version"] not in served, "a new version takes no traffic by itself"
    moves = [(entry["from_version"], entry["to_version"]) for entry in result.alias_history]
    assert moves == [(None, first), (first, second), (second, first)]
