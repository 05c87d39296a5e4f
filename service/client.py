"""CLI commands that talk to a running DaciaVision server over HTTP."""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from service.spec_arguments import spec_from_arguments
from worker.settings import get_settings

TERMINAL_STATUSES = {"succeeded", "failed", "cancelled"}
RETRY_PAUSE_SECONDS = 1.0


class ServerError(Exception):
    """The server answered with an error, or could not be reached."""

    def __init__(self, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.body = body


def api_client(arguments: argparse.Namespace) -> httpx.Client:
    settings = get_settings()
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    return httpx.Client(base_url=arguments.url or settings.api_url, timeout=60, headers=headers)


def api_call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as error:
        raise ServerError(f"cannot reach {client.base_url}: {error}") from error
    raise_for_error(response, method, path)
    return response.json()


def create_call(client: httpx.Client, path: str, body: Any, *, attempts: int = 3) -> Any:
    """POST a new job or study, retried when the connection fails.

    A timeout or a reset connection leaves the client unsure whether the server created
    it; every attempt carries the same Idempotency-Key, so the server answers a retry
    with what the first attempt created instead of training it twice.
    """
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    for attempt in range(1, attempts + 1):
        try:
            response = client.post(path, json=body, headers=headers)
        except httpx.TransportError as error:
            if attempt == attempts:
                raise ServerError(
                    f"cannot reach {client.base_url} after {attempts} attempts: {error}"
                ) from error
            time.sleep(RETRY_PAUSE_SECONDS * attempt)
            continue
        raise_for_error(response, "POST", path)
        return response.json()
    raise AssertionError("unreachable: the last attempt returns or raises")


def raise_for_error(response: httpx.Response, method: str, path: str) -> None:
    """Raise ServerError with the server's message if the response is an error."""
    if not response.is_error:
        return
    try:
        body = response.json()
        message = body["detail"]["message"]
    except (ValueError, KeyError, TypeError):
        body, message = None, response.text
    raise ServerError(f"{response.status_code} from {method} {path}: {message}", body)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def submit_command(arguments: argparse.Namespace) -> int:
    """Queue a job with the spec the user gave; the server fills in the recipe's defaults."""
    spec = spec_from_arguments(arguments)
    with api_client(arguments) as client:
        job = create_call(client, "/jobs", spec)
        print(f"queued job {job['job_id']} → model {job['model_name']}")
        if arguments.follow:
            return _follow(client, job["job_id"])
    return 0


def list_command(arguments: argparse.Namespace) -> int:
    params = {
        "limit": arguments.limit,
        "status": arguments.status,
        "model_name": arguments.model_name,
    }
    with api_client(arguments) as client:
        page = api_call(client, "GET", "/jobs", params={k: v for k, v in params.items() if v})
    print(f"{'job_id':<34}{'status':<11}{'model':<24}{'version':>8}  {'progress':<10}created")
    for job in page["items"]:
        progress = job["progress"]
        epochs = f"{progress['epoch']}/{progress['epochs']}" if progress else "-"
        version = job["version"] if job["version"] is not None else "-"
        print(
            f"{job['job_id']:<34}{job['status']:<11}{job['model_name']:<24}{version:>8}  "
            f"{epochs:<10}{job['created_at']}"
        )
    print(f"({len(page['items'])} of {page['total']})")
    return 0


def show_command(arguments: argparse.Namespace) -> int:
    with api_client(arguments) as client:
        _print_json(api_call(client, "GET", f"/jobs/{arguments.job_id}"))
    return 0


def cancel_command(arguments: argparse.Namespace) -> int:
    with api_client(arguments) as client:
        # A JSON body (empty): state-changing posts must not look like a web form's.
        job = api_call(client, "POST", f"/jobs/{arguments.job_id}/cancel", json={})
    state = "cancel requested" if job["status"] == "running" else job["status"]
    print(f"job {job['job_id']}: {state}")
    return 0


def follow_command(arguments: argparse.Namespace) -> int:
    with api_client(arguments) as client:
        return _follow(client, arguments.job_id)


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    """One line: status, a bar of finished epochs, and the last epoch's figures."""
    progress = job.get("progress")
    epochs = job["spec"].get("epochs") or 1
    done = progress["epoch"] if progress else 0
    filled = int(width * done / epochs)
    line = f"{job['status']:<9} [{'#' * filled}{'.' * (width - filled)}] {done}/{epochs}"
    if progress:
        line += f"  loss {progress['loss']:.4f}  acc {progress['accuracy']:.4f}"
        if progress.get("val_accuracy") is not None:
            line += f"  val_acc {progress['val_accuracy']:.4f}"
        line += f"  {progress['seconds']:.1f}s/epoch"
    return line


def _follow(client: httpx.Client, job_id: str, interval: float = 1.0) -> int:
    interactive = sys.stdout.isatty()
    last_line = ""
    while True:
        job = api_call(client, "GET", f"/jobs/{job_id}")
        line = progress_line(job)
        if line != last_line:
            print(f"\r{line}" if interactive else line, end="" if interactive else "\n", flush=True)
            last_line = line
        if job["status"] in TERMINAL_STATUSES:
            break
        time.sleep(interval)
    if interactive:
        print()
    if job["status"] == "succeeded":
        print(f"registered {job['model_name']} version {job['version']}")
        return 0
    if job["status"] == "failed":
        print(f"failed: {job['error']['type']}: {job['error']['message']}", file=sys.stderr)
    return 1


def predict_command(arguments: argparse.Namespace) -> int:
    params: dict[str, Any] = {"model_name": arguments.model_name, "top_k": arguments.top_k}
    if arguments.version:
        params["version"] = arguments.version
    files = []
    for name in arguments.files:
        path = Path(name)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files.append(("files", (path.name, path.read_bytes(), content_type)))
    with api_client(arguments) as client:
        result = api_call(client, "POST", "/predict", params=params, files=files)
    print(f"{result['model_name']} version {result['version']}")
    for name, prediction in zip(arguments.files, result["predictions"], strict=True):
        alternatives = ", ".join(
            f"{entry['label']} {entry['probability']:.3f}" for entry in prediction["top_k"]
        )
        print(
            f"{name}: {prediction['label']} ({prediction['confidence']:.3f})   top: {alternatives}"
        )
    return 0
