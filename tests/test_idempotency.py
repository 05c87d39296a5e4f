"""Idempotency keys on POST /jobs and POST /studies: a retry never creates twice."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from service.client import ServerError, create_call
from service.deps import JobDispatcher, get_dispatcher
from service.security import new_key, settings_entry
from tests.conftest import ClientFactory
from tests.test_api import CLOSED_REDIS, detail, queued_messages
from worker.app import create_celery_app
from worker.settings import Settings

SPEC = {"dataset": "digits", "epochs": 1, "model_name": "retried"}
STUDY = {"preset": "cnn-lab", "quick": True, "include_reference": False}


def post_job(client: TestClient, key: str, spec: dict[str, Any] = SPEC, **headers: str) -> Response:
    return client.post("/jobs", json=spec, headers={"Idempotency-Key": key, **headers})


def test_a_retried_job_returns_the_first_one_and_queues_it_once(
    client: TestClient, home: Path
) -> None:
    key = str(uuid.uuid4())
    first = post_job(client, key)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    again = post_job(client, key)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    # A quoted key (the IETF draft's structured-field string) is the same key.
    assert post_job(client, f'"{key}"').json()["job_id"] == first.json()["job_id"]

    assert client.get("/jobs").json()["total"] == 1
    assert list(queued_messages(home)) == [first.json()["job_id"]]
    # Another key, or none, is another job.
    assert post_job(client, str(uuid.uuid4())).json()["job_id"] != first.json()["job_id"]
    assert client.post("/jobs", json=SPEC).status_code == 202
    assert client.get("/jobs").json()["total"] == 3


def test_a_key_reused_with_another_body_is_a_422_that_names_the_first_job(
    client: TestClient,
) -> None:
    first = post_job(client, "nightly-2026-12-05").json()
    reused = post_job(client, "nightly-2026-12-05", {**SPEC, "epochs": 2})
    error = detail(reused, 422, "idempotency_key_reused")
    assert error["job_id"] == first["job_id"] and "new key" in error["message"]
    assert client.get("/jobs").json()["total"] == 1


def test_simultaneous_retries_create_one_job(client: TestClient) -> None:
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: post_job(client, key), range(8)))
    assert {response.status_code for response in responses} == {202}
    assert len({response.json()["job_id"] for response in responses}) == 1
    assert sum("Idempotent-Replayed" in response.headers for response in responses) == 7
    assert client.get("/jobs").json()["total"] == 1


def test_keys_of_different_api_keys_never_meet(make_client: ClientFactory) -> None:
    alice, bob = new_key(), new_key()
    client = make_client(api_keys=";".join(settings_entry(k, ["train"]) for k in (alice, bob)))
    as_alice = post_job(client, "1", Authorization=f"Bearer {alice}")
    as_bob = client.post("/jobs", json=SPEC, headers={"Idempotency-Key": "1", "X-API-Key": bob})
    assert as_alice.status_code == as_bob.status_code == 202
    assert as_alice.json()["job_id"] != as_bob.json()["job_id"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("x" * 258, "at most 257 characters"),
        ("x" * 256, "1 to 255 visible ASCII characters"),
        ("two words", "without spaces"),
        ('""', "1 to 255"),
        ('"a"b"', "without spaces or double quotes"),
    ],
)
def test_a_malformed_key_is_a_422_naming_the_header(
    client: TestClient, key: str, expected: str
) -> None:
    error = detail(post_job(client, key), 422, "invalid_input")
    (entry,) = error["errors"]
    assert entry["field"] == "header.Idempotency-Key" and expected in entry["expected"]
    assert client.get("/jobs").json()["total"] == 0


def test_a_retry_after_the_broker_refused_shows_why_the_job_failed(
    client: TestClient, tmp_path: Path
) -> None:
    # The 503 ended the job; the retry tells the client so rather than training a copy.
    unreachable = JobDispatcher(create_celery_app(Settings(home=tmp_path, redis_url=CLOSED_REDIS)))
    client.app.dependency_overrides[get_dispatcher] = lambda: unreachable  # type: ignore[attr-defined]
    detail(post_job(client, "k"), 503, "broker_unavailable")
    replay = post_job(client, "k")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["status"] == "failed"
    assert replay.json()["error"]["type"] == "BrokerUnavailable"


def test_a_retried_study_returns_the_first_one(client: TestClient) -> None:
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post("/studies", json=STUDY, headers=headers)
    assert first.status_code == 202, first.text
    again = client.post("/studies", json=STUDY, headers=headers)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["study_id"] == first.json()["study_id"]
    assert client.get("/studies").json()["total"] == 1
    # The first stage's jobs were queued once, by the first request.
    started = client.get("/jobs").json()["total"]
    assert started > 0 and started == len(
        [
            job
            for stage in again.json()["stages"]
            for job in stage["jobs"]
            if job["status"] != "pending"
        ]
    )

    reused = client.post("/studies", json={**STUDY, "name": "other"}, headers=headers)
    assert detail(reused, 422, "idempotency_key_reused")["study_id"] == first.json()["study_id"]


class LosesTheFirstAnswer(httpx.BaseTransport):
    """Delivers every request to the app, but drops the first answer, as a timed-out client
    sees it."""

    def __init__(self, app: TestClient) -> None:
        self.app = app
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.app.request(
            request.method,
            request.url.raw_path.decode(),
            headers=dict(request.headers),
            content=request.read(),
        )
        if len(self.requests) == 1:
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return httpx.Response(
            answer.status_code, headers=answer.headers.multi_items(), content=answer.content
        )


def test_the_cli_retries_a_lost_answer_with_the_same_key(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.client.RETRY_PAUSE_SECONDS", 0)
    transport = LosesTheFirstAnswer(client)
    with httpx.Client(transport=transport, base_url="http://testserver") as flaky:
        job = create_call(flaky, "/jobs", SPEC)
    first, retry = transport.requests
    assert first.headers["Idempotency-Key"] == retry.headers["Idempotency-Key"]
    # The first attempt created the job; the retry returned it rather than a second one.
    assert client.get("/jobs").json()["items"] == [job]


def test_the_cli_gives_up_on_a_server_it_cannot_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.client.RETRY_PAUSE_SECONDS", 0)
    with (
        httpx.Client(base_url="http://127.0.0.1:9") as nowhere,
        pytest.raises(ServerError, match="after 3 attempts"),
    ):
        create_call(nowhere, "/jobs", SPEC)


def test_a_study_retried_after_a_503_starts_what_the_broker_refused_to(
    client: TestClient, home: Path, tmp_path: Path
) -> None:
    unreachable = JobDispatcher(create_celery_app(Settings(home=tmp_path, redis_url=CLOSED_REDIS)))
    client.app.dependency_overrides[get_dispatcher] = lambda: unreachable  # type: ignore[attr-defined]
    headers = {"Idempotency-Key": "lab-1"}
    detail(client.post("/studies", json=STUDY, headers=headers), 503, "broker_unavailable")
    assert queued_messages(home) == {}
    client.app.dependency_overrides.clear()  # type: ignore[attr-defined]

    replay = client.post("/studies", json=STUDY, headers=headers)
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    running = {job["job_id"] for stage in replay.json()["stages"] if stage["status"] == "running"
               for job in stage["jobs"]}  # fmt: skip
    # The first stages' other jobs are queued now; the one the broker refused is the
    # job store's to resend at its next sweep (it is marked unsent).
    sent = set(queued_messages(home))
    assert sent < running and len(running - sent) == 1
    (refused,) = running - sent
    assert client.get(f"/jobs/{refused}").json()["status"] == "queued"
