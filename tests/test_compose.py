"""docker-compose.yml, checked without a Docker engine.

`docker-compose config` validates and normalizes the file. Then the `api` and
`worker` services' own commands run here as local processes with their own
environment; only network addresses (Redis host, listening port) and volume
paths (to temporary directories) are rewritten. A job goes in over HTTP, a
worker trains and registers it, the API serves it: the compose wiring (shared
registry volume, broker URL, commands) works end to end.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
import yaml
from PIL import Image

from service.security import new_key, settings_entry
from tests.workers import (
    REDIS_DATABASES,
    REDIS_HOST,
    REDIS_PORT,
    Process,
    ensure_redis,
    free_port,
    running,
)
from tests.workers import wait_until as _wait_until
from trainer.data import load_raw

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
TEST_REDIS_DB = REDIS_DATABASES["compose"]
MODEL_NAME = "compose-digits"
APP_SERVICES = ("api", "worker")
# The API listens on 0.0.0.0, so compose must not start without keys.
API_KEY = new_key()
API_KEYS_ENTRY = settings_entry(API_KEY, ["admin"])
EXPECTED_ENVIRONMENT = {
    "REDIS_URL": "redis://redis:6379/0",
    "DACIAVISION_HOME": "/var/lib/daciavision",
    "REGISTRY_DIR": "/var/lib/daciavision/registry",
    "DATA_DIR": "/data",
    "DACIAVISION_API_KEYS": API_KEYS_ENTRY,
}
# Variables of the host shell that would otherwise leak into the services.
SETTINGS_VARIABLES = ("REDIS_URL", "DATA_DIR", "REGISTRY_DIR")


def compose_config(**variables: str) -> dict[str, Any]:
    """`docker-compose config` of the project's file, parsed; fails on a non-zero exit."""
    result = run_compose_config({"DACIAVISION_API_KEYS": API_KEYS_ENTRY, **variables})
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def run_compose_config(variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DACIAVISION_", "COMPOSE_", "DOCKER_"))
    }
    environment.update(variables)
    return subprocess.run(
        ["docker-compose", "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_compose_refuses_to_start_without_api_keys() -> None:
    result = run_compose_config({})
    assert result.returncode != 0
    assert "DACIAVISION_API_KEYS" in result.stderr


def dockerfile_instruction(name: str) -> str:
    """The arguments of the Dockerfile's last `name` instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    matches = re.findall(rf"^{name}\s+(.*)$", text, flags=re.MULTILINE)
    assert matches, f"the Dockerfile has no {name} instruction"
    return str(matches[-1]).strip()


def split_command(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def parse_volume(spec: str) -> tuple[str, str]:
    """(source, target) of a normalized short volume spec `source:target[:mode]`."""
    source, target, *_ = spec.split(":")
    return source, target


def test_compose_config_describes_redis_api_and_scalable_workers() -> None:
    config = compose_config(DACIAVISION_DATA_DIR="/srv/datasets")
    services = config["services"]
    assert set(services) == {"redis", "api", "worker"}

    redis_service = services["redis"]
    assert redis_service["image"] == "redis:7"
    assert split_command(redis_service["command"])[-2:] == ["--appendonly", "yes"]
    redis_volumes = dict(parse_volume(spec) for spec in redis_service["volumes"])
    assert set(redis_volumes.values()) == {"/data"}
    assert set(redis_volumes) <= set(config["volumes"]), "Redis data must be a named volume"
    assert "redis-cli" in redis_service["healthcheck"]["test"]
    assert "ping" in redis_service["healthcheck"]["test"]

    api, worker = services["api"], services["worker"]
    assert split_command(api["command"]) == [
        "daciavision", "serve", "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip
    assert split_command(worker["command"]) == ["daciavision", "worker", "--concurrency", "1"]
    # The image's default command is the API's.
    assert json.loads(dockerfile_instruction("CMD")) == split_command(api["command"])
    assert [port["target"] for port in api["ports"]] == [8000]
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])

    for service in (api, worker):
        assert service["image"] == api["image"]
        assert service["build"]["context"] == str(ROOT)
        assert service["environment"] == EXPECTED_ENVIRONMENT
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}
        volumes = dict(parse_volume(spec) for spec in service["volumes"])
        assert volumes == {"daciavision-home": "/var/lib/daciavision", "/srv/datasets": "/data"}
    assert "daciavision-home" in config["volumes"]
    assert any(spec.endswith(":/data:ro") for spec in api["volumes"]), "datasets are read-only"

    # `--scale worker=N` needs containers that can be many: no fixed name, no host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    # Without DACIAVISION_DATA_DIR the datasets come from ./data beside the file.
    default_volumes = compose_config()["services"]["worker"]["volumes"]
    assert f"{ROOT / 'data'}:/data:ro" in default_volumes


class LocalDeployment:
    """The compose services' commands and environment, run on this machine."""

    def __init__(self, config: dict[str, Any], root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.hostname = socket.gethostname()
        # One host directory per volume source: services sharing a named
        # volume share the directory, exactly as the containers would.
        self.volume_dirs: dict[str, Path] = {}
        self.services = config["services"]

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def host_path(self, service: str, container_path: str) -> str:
        """Where a path inside `service`'s container lives here."""
        path = PurePosixPath(container_path)
        for spec in self.services[service]["volumes"]:
            source, target = parse_volume(spec)
            if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
                directory = self.volume_dirs.setdefault(
                    source, self.root / re.sub(r"[^A-Za-z0-9_.-]", "_", source.strip("/"))
                )
                directory.mkdir(parents=True, exist_ok=True)
                return str(directory / path.relative_to(target))
        return container_path

    def environment(self, service: str) -> dict[str, str]:
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("DACIAVISION_") and key not in SETTINGS_VARIABLES
        }
        # `daciavision` resolves from this virtualenv, as from the image's PATH.
        inherited["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{inherited['PATH']}"
        inherited.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", HOSTNAME=self.hostname)
        for name, value in self.services[service]["environment"].items():
            if name == "REDIS_URL":
                value = self.local_redis_url(value)
            elif value.startswith("/"):
                value = self.host_path(service, value)
            inherited[name] = value
        return inherited

    def local_redis_url(self, url: str) -> str:
        parts = urlsplit(url)
        assert parts.hostname in self.services, f"REDIS_URL must name a compose service: {url}"
        return urlunsplit(
            parts._replace(netloc=f"{REDIS_HOST}:{REDIS_PORT}", path=f"/{TEST_REDIS_DB}")
        )

    def command(self, service: str) -> list[str]:
        arguments = split_command(self.services[service]["command"])
        for option, value in (("--port", str(self.port)), ("--host", "127.0.0.1")):
            if option in arguments:
                arguments[arguments.index(option) + 1] = value
        return arguments

    def healthcheck(self, service: str) -> list[str]:
        """The service's healthcheck command, as Docker would run it in the container."""
        test = self.services[service]["healthcheck"]["test"]
        if test[0] == "CMD-SHELL":
            # Compose turns `$$` into `$`; the shell then expands it.
            return ["sh", "-c", self.local_addresses(test[1].replace("$$", "$"))]
        assert test[0] == "CMD", f"unexpected healthcheck form {test[0]!r}"
        return [self.local_addresses(argument) for argument in test[1:]]

    def local_addresses(self, text: str) -> str:
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")

    def start(self, service: str) -> Process:
        return Process(
            self.command(service), self.environment(service), self.root / f"{service}.log"
        )


def wait_until(condition: Any, *, timeout: float, what: str, processes: list[Process]) -> Any:
    """Like tests.workers.wait_until, but a service that exits fails at once."""

    def check() -> Any:
        for process in processes:
            code = process.popen.poll()
            assert code is None, f"{process.command} exited with {code} while waiting for {what}"
        return condition()

    return _wait_until(check, timeout=timeout, what=what, interval=0.5)


def run_healthcheck(deployment: LocalDeployment, command: list[str], service: str) -> None:
    result = subprocess.run(
        command,
        env=deployment.environment(service),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        f"healthcheck {command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


def digit_png() -> bytes:
    image = Image.fromarray(load_raw("digits", None).x_test[0])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/health/ready").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def redis_database() -> Iterator[redis.Redis]:
    ensure_redis()
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=TEST_REDIS_DB)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()


@pytest.mark.integration
@pytest.mark.slow
def test_compose_services_train_register_and_serve_without_docker(
    tmp_path: Path, redis_database: redis.Redis
) -> None:
    deployment = LocalDeployment(compose_config(), tmp_path)
    processes: list[Process] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        running(processes),
        httpx.Client(base_url=deployment.url(), timeout=30, headers=headers) as client,
    ):
        for service in APP_SERVICES:
            processes.append(deployment.start(service))

        wait_until(lambda: ready(client), timeout=90, what="/health/ready", processes=processes)
        # Bound to 0.0.0.0 in the containers, so keys are on: no key, no access.
        anonymous = httpx.get(deployment.url("/models"), timeout=30)
        assert anonymous.status_code == 401, anonymous.text
        response = client.post(
            "/jobs",
            json={
                "dataset": "digits",
                "epochs": 3,
                "hyperparameters": {"filters1": 8, "filters2": 16, "dense_units": 32},
                "model_name": MODEL_NAME,
            },
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
            return job if job["status"] in {"succeeded", "failed", "cancelled"} else None

        job = wait_until(finished, timeout=180, what=f"job {job_id}", processes=processes)
        assert job["status"] == "succeeded", json.dumps(job, indent=2)
        assert job["model_name"] == MODEL_NAME

        # The worker wrote the version into the shared volume; the API sees it.
        model = client.get(f"/models/{MODEL_NAME}")
        assert model.status_code == 200, model.text
        assert job["version"] in [entry["version"] for entry in model.json()["versions"]]
        registry_dir = Path(deployment.environment("api")["REGISTRY_DIR"])
        assert (registry_dir / MODEL_NAME / str(job["version"])).is_dir()

        prediction = client.post(
            "/predict",
            params={"model_name": MODEL_NAME},
            files={"files": ("digit.png", digit_png(), "image/png")},
        )
        assert prediction.status_code == 200, prediction.text
        body = prediction.json()
        assert body["version"] == job["version"]
        assert body["predictions"][0]["label"] in {str(digit) for digit in range(10)}

        # Both services' compose healthchecks, and the image's own, pass.
        run_healthcheck(deployment, deployment.healthcheck("api"), "api")
        run_healthcheck(deployment, deployment.healthcheck("worker"), "worker")
        image_check = json.loads(dockerfile_instruction("HEALTHCHECK").split("CMD", 1)[1])
        run_healthcheck(deployment, [deployment.local_addresses(a) for a in image_check], "api")
