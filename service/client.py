"""CLI commands that talk to a running DaciaVision server over HTTP."""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from service.spec_arguments import spec_from_arguments
from trainer.errors import InvalidInputError
from worker.settings import get_settings

TERMINAL_STATUSES = {"succeeded", "failed", "cancelled"}
RETRY_PAUSE_SECONDS = 1.0
# Of a body that is not the service's JSON error (a proxy's HTML page, say).
QUOTED_BODY_CHARACTERS = 300


class ServerError(Exception):
    """The server answered with an error, or could not be reached."""

    def __init__(self, message: str, body: Any = None, status: int | None = None) -> None:
        super().__init__(message)
        self.body = body
        self.status = status


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``, else a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not from {low} to {high}")
        return value

    return parse


def api_client(arguments: argparse.Namespace) -> httpx.Client:
    settings = get_settings()
    url = arguments.url or settings.api_url
    if "://" not in url:
        where = "--url" if arguments.url else "DACIAVISION_API_URL"
        raise InvalidInputError(f"{where} {url!r} needs its scheme: http://{url} or https://{url}")
    key = (settings.api_key or "").strip()  # a key file's trailing newline
    if not all("!" <= character <= "~" for character in key):
        # Never echo the key: the message goes to terminals and logs.
        raise InvalidInputError(
            "DACIAVISION_API_KEY holds characters an HTTP header cannot carry (spaces, "
            "control or non-ASCII characters); set it to the key `daciavision keys new` printed"
        )
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, timeout=60, headers=headers)


def api_call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as error:
        raise ServerError(f"cannot reach {client.base_url}: {error}") from error
    raise_for_error(response, method, path)
    return json_of(response, method, path)


def json_of(response: httpx.Response, method: str, path: str) -> Any:
    try:
        return response.json()
    except ValueError as error:
        kind = response.headers.get("content-type", "no content type")
        raise ServerError(
            f"{response.url} answered {method} {path} with {kind}, not JSON: is "
            "--url (or DACIAVISION_API_URL) a DaciaVision server?"
        ) from error


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
        return json_of(response, "POST", path)
    raise AssertionError("unreachable: the last attempt returns or raises")


def raise_for_error(response: httpx.Response, method: str, path: str) -> None:
    """Raise ServerError with the server's message if the response is an error."""
    if not response.is_error:
        return
    try:
        body = response.json()
        message = f"{body['detail']['message']} ({body['detail']['code']})"
    except (ValueError, KeyError, TypeError):
        body, message = None, response.text[:QUOTED_BODY_CHARACTERS]
    if response.status_code in (401, 403):
        message += (
            "; this command sends DACIAVISION_API_KEY as the key"
            if get_settings().api_key
            else "; set DACIAVISION_API_KEY to a key (`daciavision keys new` makes one)"
        )
    raise ServerError(
        f"{response.status_code} from {method} {path}: {message}", body, response.status_code
    )


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def submit_command(arguments: argparse.Namespace) -> int:
    """Queue a job with the spec the user gave; the server fills in the recipe's defaults."""
    spec = spec_from_arguments(arguments)
    with api_client(arguments) as client:
        job = create_call(client, "/jobs", spec)
        if arguments.json:
            _print_json(job)
        else:
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
        page = api_call(
            client, "GET", "/jobs", params={k: v for k, v in params.items() if v is not None}
        )
    if arguments.json:
        _print_json(page)
        return 0
    rows = [("job_id", "status", "model", "version", "progress", "created")]
    for job in page["items"]:
        progress = job["progress"]
        epochs = f"{progress['epoch']}/{progress['epochs']}" if progress else "-"
        version = str(job["version"]) if job["version"] is not None else "-"
        rows.append((job["job_id"], job["status"], job["model_name"], version, epochs,
                     job["created_at"]))  # fmt: skip
    # Columns as wide as their widest cell (a study's job ids are 45 characters), two
    # spaces apart, so `awk` and eyes split them alike.
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]))
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
        if not path.is_file():
            raise InvalidInputError(f"{name}: no such image file")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files.append(("files", (path.name, path.read_bytes(), content_type)))
    with api_client(arguments) as client:
        result = api_call(client, "POST", "/predict", params=params, files=files)
    if arguments.json:
        _print_json(result)
        return 0
    print(f"{result['model_name']} version {result['version']}")
    for name, prediction in zip(arguments.files, result["predictions"], strict=True):
        alternatives = ", ".join(
            f"{entry['label']} {entry['probability']:.3f}" for entry in prediction["top_k"]
        )
        print(
            f"{name}: {prediction['label']} ({prediction['confidence']:.3f})   top: {alternatives}"
        )
    return 0
