"""Access control: API keys and scopes on every route, CORS, Host checks, form posts.

The route list comes from the app's own OpenAPI document, so a route added later is
checked too: it fails here until it declares which scope it needs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from pydantic import AliasChoices

from service.app import create_app
from service.cli import main
from service.client import api_client
from service.security import (
    SCOPES,
    Keyring,
    check_scopes,
    hash_key,
    new_key,
    parse_api_keys,
    settings_entry,
)
from tests.workers import free_port, service_environment
from worker.settings import Settings, get_settings

KEYS = {scope: new_key() for scope in SCOPES}
KEYS_SETTING = ";".join(settings_entry(key, [scope]) for scope, key in KEYS.items())
PATH_VALUES = {
    "model_name": "no-such-model",
    "version": "1",
    "alias": "production",
    "job_id": "x",
    "study_id": "x",
    "name": "confusion",
    "image_format": "svg",
}


def expected_scope(method: str, path: str) -> str:
    """The scope each route needs, as the issue states it."""
    if path.startswith("/jobs"):
        return "train"
    if path.startswith("/studies"):
        # Reading a study is reading results; starting or cancelling one is training.
        return "predict" if method == "GET" else "train"
    if path.startswith("/models") and path.endswith("/model.keras"):
        # Weights are worth more than the predictions a predict key is for.
        return "train"
    if path.startswith("/models"):
        return "predict" if method == "GET" else "admin"
    if path.startswith(("/predict", "/v1/", "/metrics")):
        return "predict"
    if path.startswith("/monitoring"):
        return "admin"
    raise AssertionError(
        f"no access rule for {method} {path}: declare its scope in service/app.py and here"
    )


@pytest.fixture
def protected(tmp_path: Path) -> TestClient:
    app = create_app(Settings(home=tmp_path, api_keys=KEYS_SETTING))
    return TestClient(app, raise_server_exceptions=False)


def operations(client: TestClient) -> list[tuple[str, str, str]]:
    """(method, template, concrete path) of every documented route but the probes."""
    schema = client.get("/openapi.json").json()
    found: list[tuple[str, str, str]] = []
    for template, methods in schema["paths"].items():
        if template.startswith("/health/"):
            continue
        path = re.sub(r"\{(\w+)\}", lambda match: PATH_VALUES[match.group(1)], template)
        found.extend((method.upper(), template, path) for method in methods)
    return found


def call(client: TestClient, method: str, path: str, key: str | None = None) -> Response:
    headers = {"X-API-Key": key} if key else {}
    body: dict[str, Any] | None = {} if method in ("POST", "PUT") else None
    return client.request(method, path, headers=headers, json=body)


def test_every_route_needs_a_key_with_its_scope(protected: TestClient) -> None:
    checked = operations(protected)
    assert len(checked) >= 20  # jobs, models, aliases, predict, metrics, TF Serving, telemetry
    for method, template, path in checked:
        scope = expected_scope(method, template)
        anonymous = call(protected, method, path)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.json()["detail"]["code"] == "unauthenticated"
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = call(protected, method, path, key="dv_not-a-key")
        assert wrong.status_code == 401, (method, path)
        for key_scope, key in KEYS.items():
            response = call(protected, method, path, key=key)
            assert response.status_code != 500, (method, path, response.text)
            if key_scope in (scope, "admin"):
                assert response.status_code not in (401, 403), (method, path, key_scope)
            else:
                assert response.status_code == 403, (method, path, key_scope, response.text)
                detail = response.json()["detail"]
                assert (detail["code"], detail["required_scope"]) == ("forbidden", scope)


def test_a_model_file_head_needs_the_train_scope_as_its_get(protected: TestClient) -> None:
    # HEAD is out of the OpenAPI document, so the sweep above does not reach it.
    for path in ("/models/no-such-model/model.keras", "/models/m/versions/1/model.keras"):
        assert protected.head(path).status_code == 401
        assert protected.head(path, headers={"X-API-Key": KEYS["predict"]}).status_code == 403
        allowed = protected.head(path, headers={"X-API-Key": KEYS["train"]})
        assert allowed.status_code == 404 and allowed.content == b""


def test_tf_serving_refusals_carry_its_error_string(protected: TestClient) -> None:
    # Its routes check keys in their route class, inside the one adding "error".
    for key in (None, KEYS["train"]):
        response = call(protected, "POST", "/v1/models/m:predict", key=key)
        assert response.status_code in (401, 403), response.text
        assert response.json()["error"] == response.json()["detail"]["message"] != ""


def test_bearer_works_like_the_api_key_header_and_probes_stay_open(
    protected: TestClient,
) -> None:
    bearer = {"Authorization": f"Bearer {KEYS['train']}"}
    assert protected.get("/jobs", headers=bearer).status_code == 200
    assert protected.get("/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert protected.get("/health/live").status_code == 200
    assert protected.get("/health/ready").status_code == 200
    assert protected.get("/docs").status_code == 200


def test_telemetry_can_be_opened_on_purpose(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, api_keys=KEYS_SETTING, prometheus_open=True)
    client = TestClient(create_app(settings))
    assert client.get("/monitoring/prometheus/metrics").status_code == 200
    assert client.get("/jobs").status_code == 401


def test_openapi_declares_both_key_schemes_on_protected_routes(protected: TestClient) -> None:
    schema = protected.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["BearerKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key as `Authorization: Bearer <key>`.",
    }
    assert schemes["ApiKeyHeader"]["in"] == "header"
    assert schemes["ApiKeyHeader"]["name"] == "X-API-Key"
    either_key: list[dict[str, list[str]]] = [{"BearerKey": []}, {"ApiKeyHeader": []}]
    for path, method in [
        ("/jobs", "post"),
        ("/predict", "post"),
        ("/models", "get"),
        ("/monitoring/prometheus/metrics", "get"),
    ]:
        assert schema["paths"][path][method]["security"] == either_key, (path, method)
    assert "security" not in schema["paths"]["/health/live"]["get"]


def test_openapi_leaves_opened_telemetry_without_key_schemes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, api_keys=KEYS_SETTING, prometheus_open=True)
    schema = TestClient(create_app(settings)).get("/openapi.json").json()
    assert "security" not in schema["paths"]["/monitoring/prometheus/metrics"]["get"]
    assert "security" in schema["paths"]["/predict"]["post"]


def test_settings_hold_only_hashes_and_keys_compare_by_hash() -> None:
    key = new_key()
    entry = settings_entry(key, ["train", "predict"])
    assert key not in entry
    assert entry == f"{hash_key(key)}:predict,train"
    keyring = Keyring(parse_api_keys(f"{entry};{settings_entry(new_key(), ['admin'])}"))
    assert keyring.scopes_of(key) == frozenset({"predict", "train"})
    assert keyring.scopes_of(key[:-1]) is None
    assert keyring.scopes_of(hash_key(key)) is None  # the hash itself is not a key
    for bad in ("abc:predict", f"{'z' * 64}:predict", f"{'a' * 64}:root", f"{'a' * 64}"):
        with pytest.raises(ValueError, match=r"DACIAVISION_API_KEYS|scopes"):
            parse_api_keys(bad)
    with pytest.raises(ValueError, match="no scope given"):
        check_scopes([""])


def test_a_malformed_key_setting_stops_the_app_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DACIAVISION_API_KEYS entry 1"):
        create_app(Settings(home=tmp_path, api_keys="not-a-hash:admin"))


def test_keys_new_prints_a_key_and_the_entry_that_accepts_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DACIAVISION_API_KEYS", settings_entry(KEYS["admin"], ["admin"]))
    get_settings.cache_clear()
    try:
        assert main(["keys", "new", "--scopes", "predict,train"]) == 0
        output = capsys.readouterr().out
        key = re.search(r"key \(.*\): (\S+)", output)
        line = re.search(r"^DACIAVISION_API_KEYS=(\S+)$", output, flags=re.MULTILINE)
        assert key and line
        keyring = Keyring(parse_api_keys(line.group(1)))
        # The existing key keeps working next to the new one: rotation without downtime.
        assert keyring.scopes_of(key.group(1)) == frozenset({"predict", "train"})
        assert keyring.scopes_of(KEYS["admin"]) == frozenset({"admin"})
        assert main(["keys", "new", "--scopes", "root"]) == 2
    finally:
        get_settings.cache_clear()


def test_the_client_cli_sends_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DACIAVISION_API_KEY", KEYS["train"])
    get_settings.cache_clear()
    try:

        class Arguments:
            url = "http://127.0.0.1:1"

        with api_client(Arguments()) as client:  # type: ignore[arg-type]
            assert client.headers["Authorization"] == f"Bearer {KEYS['train']}"
    finally:
        get_settings.cache_clear()


# ----------------------------------------------------------------- browsers of other sites


@pytest.fixture
def open_client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(home=tmp_path)), raise_server_exceptions=False)


def test_open_mode_answers_only_loopback_and_dotless_host_names(open_client: TestClient) -> None:
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "testserver"):
        assert open_client.get("/jobs", headers={"Host": host}).status_code == 200, host
    # DNS rebinding: an attacker's name resolving to 127.0.0.1.
    response = open_client.get("/jobs", headers={"Host": "rebind.attacker.example"})
    assert response.status_code == 400
    assert response.json()["detail"]["code"] == "invalid_host"
    # Probes answer whatever name the orchestrator uses.
    assert open_client.get("/health/live", headers={"Host": "10.0.0.7:8000"}).status_code == 200


def test_configured_hosts_are_the_only_ones_answered(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, api_keys=KEYS_SETTING, allowed_hosts="api.example.org")
    client = TestClient(create_app(settings))
    headers = {"X-API-Key": KEYS["train"]}
    for host in ("api.example.org", "API.example.org:8443"):
        assert client.get("/jobs", headers={**headers, "Host": host}).status_code == 200
    # Not host names: whatever they start with, they name no allowed host.
    for host in (
        "evil.example",
        "api.example.org:443@evil.example",
        "api.example.org:x",
        "api.example.org/evil",
        "api.example.org:443:1",
        "",
    ):
        assert client.get("/jobs", headers={**headers, "Host": host}).status_code == 400, host


@pytest.mark.parametrize("configured", ["", " ", ","])
def test_an_empty_host_list_means_the_default_not_no_host(tmp_path: Path, configured: str) -> None:
    # As `DACIAVISION_ALLOWED_HOSTS=` in an env file leaves it: not a list of no names.
    open_app = TestClient(create_app(Settings(home=tmp_path, allowed_hosts=configured)))
    assert open_app.get("/jobs", headers={"Host": "localhost:8000"}).status_code == 200
    assert open_app.get("/jobs", headers={"Host": "rebind.attacker.example"}).status_code == 400
    keyed = Settings(home=tmp_path, api_keys=KEYS_SETTING, allowed_hosts=configured)
    headers = {"X-API-Key": KEYS["train"], "Host": "api.example.org"}
    assert TestClient(create_app(keyed)).get("/jobs", headers=headers).status_code == 200


def test_cors_allows_only_configured_origins(tmp_path: Path, open_client: TestClient) -> None:
    preflight = {
        "Origin": "https://ui.example.org",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "x-api-key,content-type",
    }
    # None by default: the browser gets no permission to read or send anything.
    default = open_client.options("/models/m/aliases/production", headers=preflight)
    assert "access-control-allow-origin" not in default.headers
    simple = open_client.get("/jobs", headers={"Origin": "https://ui.example.org"})
    assert "access-control-allow-origin" not in simple.headers

    settings = Settings(home=tmp_path, allowed_origins="https://ui.example.org")
    client = TestClient(create_app(settings))
    allowed = client.options("/models/m/aliases/production", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ui.example.org"
    refused = client.options(
        "/models/m/aliases/production", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in refused.headers


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/models/m/aliases/production/rollback", "application/x-www-form-urlencoded"),
        ("/models/m/aliases/production/rollback", "text/plain"),
        ("/jobs/x/cancel", "multipart/form-data; boundary=x"),
        ("/jobs", "text/plain"),
    ],
)
def test_a_cross_site_form_post_changes_nothing(
    open_client: TestClient, path: str, content_type: str
) -> None:
    # What <form method=post action=http://127.0.0.1:8000/...> on any page sends.
    body = '{"dataset": "digits"}' if path == "/jobs" else "a=b"
    response = open_client.post(path, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 415, response.text
    assert response.json()["detail"]["code"] == "unsupported_media_type"
    assert open_client.get("/jobs").json()["total"] == 0


def test_a_cross_origin_script_post_is_refused(open_client: TestClient) -> None:
    # fetch(..., {method: "POST", mode: "no-cors"}) sends no body but does send Origin.
    response = open_client.post(
        "/jobs/x/cancel", headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 403
    assert response.json()["detail"]["code"] == "forbidden"
    # The service's own pages (the docs' "Try it out") and plain tools are not browsers
    # of other sites: they reach the route (which then says the job does not exist).
    own = open_client.post("/jobs/x/cancel", headers={"Origin": "http://testserver"})
    assert own.status_code == 404
    assert open_client.post("/jobs/x/cancel").status_code == 404
    assert open_client.post("/jobs/x/cancel", json={}).status_code == 404


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", str(port)],
        env=service_environment(tmp_path, None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr
    assert "DACIAVISION_API_KEYS" in result.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2)


def test_check_bind_allows_loopback_open_and_anything_with_keys() -> None:
    from service.local import check_bind

    open_keyring = Keyring(())
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, open_keyring)
    check_bind("0.0.0.0", Keyring(parse_api_keys(KEYS_SETTING)))
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        with pytest.raises(Exception, match="refusing"):
            check_bind(host, open_keyring)


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    table = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = table.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        variable = (
            str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"DACIAVISION_{name}"
        )
        assert f"| `{variable.upper()}` |" in table, f"{variable.upper()} is not documented"
