"""CLI commands that run here: serve, worker, train (in-process), models."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service import __version__
from service.api_processes import api_process_count, shared_telemetry
from service.security import Keyring, check_scopes, new_key, parse_api_keys, settings_entry
from service.spec_arguments import spec_from_arguments
from trainer.architectures import ARCHITECTURES
from trainer.card import ModelCard
from trainer.datasets import check_split_sizes
from trainer.errors import InvalidInputError
from trainer.kernels import use_training_kernels
from trainer.registry import FileModelRegistry
from worker.command import celery_worker_command
from worker.settings import Settings, get_settings

_PR_SET_PDEATHSIG = 1
KEEP_ALIVE_SECONDS = 65


def _die_with_parent() -> None:
    # Linux: if `serve` itself is killed outright, its embedded workers get
    # SIGTERM instead of running on as orphans.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_command(arguments: argparse.Namespace) -> int:
    """Replace this process with a Celery worker (so signals reach Celery directly)."""
    command = celery_worker_command(concurrency=arguments.concurrency, loglevel=arguments.loglevel)
    os.execv(sys.executable, command)
    return 0  # not reached


def _start_embedded_workers(
    settings: Settings, count: int, verbose: bool
) -> list[subprocess.Popen[bytes]]:
    # Celery's banner and TensorFlow's warnings go to a log file a user can open
    # when something goes wrong; --verbose shows them here instead.
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    for index in range(count):
        command = celery_worker_command(node_name=f"embedded{index}@%h")
        output: Any = None if verbose else (log_dir / f"worker-{index}.log").open("ab")
        workers.append(
            subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                # A group of its own: stopping the worker then stops its pool children
                # too, so none trains on as an orphan after the server is gone.
                start_new_session=True,
            )
        )
        if output is not None:
            output.close()  # the child holds its own descriptor
    return workers


def _start_up_lines(
    settings: Settings, host: str, port: int, workers: int, processes: int = 1
) -> list[str]:
    url = f"http://{host}:{port}"
    served_by = f" ({processes} processes)" if processes > 1 else ""
    if settings.embedded:
        mode = "embedded (no Redis: broker and job store under the home folder)"
        worker_line = f"{workers} embedded, logs in {settings.home / 'logs'}"
    else:
        mode = "Redis (start workers with `daciavision worker`)"
        worker_line = "none here: `daciavision worker` runs them"
    return [
        f"DaciaVision {__version__}",
        f"  API        {url}{served_by}",
        f"  dashboard  {url}/",
        f"  docs       {url}/docs",
        f"  mode       {mode}",
        f"  data       {settings.resolved_data_dir}",
        f"  registry   {settings.resolved_registry_dir}",
        f"  workers    {worker_line}",
    ]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keyring: Keyring) -> None:
    """Refuse to serve an open API (no keys) on any address but loopback."""
    if keyring.open and not _is_loopback(host):
        raise InvalidInputError(
            f"refusing to listen on {host} without API keys: anyone who can reach it could "
            "train, delete and roll back models. Create a key with `daciavision keys new "
            "--scopes admin` and set DACIAVISION_API_KEYS, or listen on 127.0.0.1"
        )


def _access_line(keyring: Keyring) -> str:
    if keyring.open:
        return (
            "  access     OPEN: no API keys, so anyone on this machine can use the API; "
            "set DACIAVISION_API_KEYS before exposing it"
        )
    return f"  access     API keys required ({len(keyring.keys)} configured)"


def serve_command(arguments: argparse.Namespace) -> int:
    """Run the API; in embedded mode (no REDIS_URL) also run local worker processes."""
    settings = get_settings()
    try:
        keyring = Keyring(parse_api_keys(settings.api_keys))
    except ValueError as error:
        # Before anything starts: a server with a broken key list must not come up open.
        raise InvalidInputError(str(error)) from None
    check_bind(arguments.host, keyring)
    processes = api_process_count(arguments.api_processes, settings)
    workers: list[subprocess.Popen[bytes]] = []
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if settings.embedded:
        workers = _start_embedded_workers(settings, arguments.workers, arguments.verbose)
    lines = _start_up_lines(settings, arguments.host, arguments.port, len(workers), processes)
    print("\n".join(lines))
    print(_access_line(keyring))
    print("Press Ctrl+C to stop.", flush=True)
    try:
        _run_api(settings, arguments, processes)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        running = _running_job_ids(settings) if workers else []
        _stop_embedded_workers(workers)
        if workers:
            _release_jobs_of_stopped_workers(settings, running)
    return 0


def _run_api(settings: Settings, arguments: argparse.Namespace, processes: int) -> None:
    import uvicorn

    from service.http_protocol import BoundedHttpToolsProtocol

    options: dict[str, Any] = {
        "host": arguments.host,
        "port": arguments.port,
        "log_level": "info" if arguments.verbose else "warning",
        # An idle connection stays open longer than clients keep theirs (httpx 5 s,
        # aiohttp 15 s) and than load balancers' idle timeouts (60 s), so the client
        # side always closes first. With uvicorn's 5 s a client reusing a connection
        # idle for just under 5 s raced the server's close and got a reset.
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        # httptools, bounded: a request head past 64 KiB or 30 s closes its connection.
        "http": BoundedHttpToolsProtocol,
        "server_header": False,
    }
    if processes == 1:
        from service.app import create_app

        uvicorn.run(create_app(settings), **options)
        return
    # Each process builds its app from the same environment, as get_settings() reads it.
    with shared_telemetry(settings):
        uvicorn.run("service.app:create_app", factory=True, workers=processes, **options)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with Python's
    # default handler that would kill this process before it stops its workers.
    raise SystemExit(128 + signum)


def _stop_embedded_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for process in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in workers:
        # A training cannot finish in this time: it is stopped and its job released.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)  # reap it, or it would stay a zombie of this process
        _wait_until_group_is_gone(process.pid)


def _wait_until_group_is_gone(group: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _running_job_ids(settings: Settings) -> list[str]:
    from worker.jobstore import open_job_store

    try:
        jobs, _ = open_job_store(settings.redis_url, settings.jobs_db_path).list(
            status="running", limit=1000
        )
    except Exception:  # noqa: BLE001 - shutting down; only the report below needs them
        return []
    return [job.job_id for job in jobs]


def _release_jobs_of_stopped_workers(settings: Settings, were_running: list[str]) -> None:
    # We stopped these workers ourselves: their jobs go back to the queue at once and
    # without spending an attempt, instead of waiting for their leases to expire. A
    # worker gives its jobs back itself when told to stop; this catches the rest.
    from worker.jobstore import open_job_store
    from worker.recovery import release_jobs_of_dead_local_workers

    try:
        store = open_job_store(settings.redis_url, settings.jobs_db_path)
        release_jobs_of_dead_local_workers(store)
        for job_id in were_running:
            if store.get(job_id).status == "queued":
                print(
                    f"job {job_id} goes back to the queue (its worker was stopped with the server)"
                )
    except Exception as error:  # noqa: BLE001 - shutting down; the lease sweep catches up
        print(f"could not release the stopped workers' jobs: {type(error).__name__}")


def train_command(arguments: argparse.Namespace) -> int:
    """Train in this process with a progress bar per epoch, register, print the report."""
    use_training_kernels()  # before trainer.run imports TensorFlow
    from trainer.run import train_and_register
    from trainer.spec import parse_training_spec

    try:
        spec = parse_training_spec(spec_from_arguments(arguments))
    except ValidationError as error:
        print("error: invalid training spec", file=sys.stderr)
        for problem in error.errors():
            # The architecture's name leads each location (the union's tag): not a field.
            field = ".".join(str(part) for part in problem["loc"] if part not in ARCHITECTURES)
            print(f"  {field or 'spec'}: {problem['msg']}", file=sys.stderr)
        return 2
    try:
        # As POST /jobs checks it, before minutes of data loading could fail on it.
        check_split_sizes(spec.dataset, spec.sample_fraction, spec.validation_fraction)
    except InvalidInputError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    settings = get_settings()
    registry = FileModelRegistry(settings.resolved_registry_dir)
    print(f"training {spec.architecture} on {spec.dataset} ({spec.sample_fraction:.0%} sample)")
    # One line per epoch: Keras' bar counts compiled calls of 8 steps and showed "8/6"
    # at the end of a 6-step epoch.
    registered = train_and_register(
        spec, data_dir=settings.resolved_data_dir, registry=registry, verbose=2
    )
    print_report(registered.card, registry.root)
    return 0


def print_report(card: ModelCard, registry_root: Path) -> None:
    test = card.metrics.test
    print()
    print(f"registered {card.model_name} version {card.version}")
    print(f"  saved in         {registry_root / card.model_name / str(card.version)}")
    print(f"  test accuracy    {test.accuracy:.4f}   loss {test.loss:.4f}")
    print(f"  parameters       {card.parameter_count:,}")
    print(f"  training time    {card.timings.fit_seconds:.1f} s")
    train_accuracy = card.metrics.train_accuracy
    if train_accuracy is not None:
        # Both without dropout or augmentation, so the gap says how far the model fits its
        # own images better than new ones.
        validation = card.metrics.validation_accuracy
        print(
            f"  fit              train accuracy {train_accuracy:.4f}, validation "
            f"{validation:.4f} (gap {train_accuracy - validation:+.4f})"
        )
    else:
        print(f"  generalization   gap {card.metrics.generalization_gap:+.4f} (the lab's)")
    print()
    print(f"  {'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for entry in test.per_class:
        print(
            f"  {entry.class_name:<14}{entry.precision:>10.3f}{entry.recall:>10.3f}"
            f"{entry.f1:>10.3f}{entry.support:>10}"
        )
    macro = test.macro_avg
    print(f"  {'macro avg':<14}{macro.precision:>10.3f}{macro.recall:>10.3f}{macro.f1:>10.3f}")
    weak = ", ".join(f"{w.class_name} ({w.f1:.3f})" for w in test.weak_classes) or "none"
    print(f"\n  weak classes ({test.weak_class_rule}): {weak}")


def models_command(arguments: argparse.Namespace) -> int:
    """List models with versions, aliases and test accuracy, a server's or this machine's."""
    from service.reports import model_detail

    settings = get_settings()
    # Every other client command talks to DACIAVISION_API_URL when it is set; so does
    # this one, or a user pointed at a server would read an empty local registry.
    from_server = bool(arguments.url) or "api_url" in settings.model_fields_set
    if from_server:
        rows = _server_rows(arguments)
        where = arguments.url or settings.api_url
    else:
        registry = FileModelRegistry(settings.resolved_registry_dir)
        rows = [
            {"model_name": summary.model_name, **version.model_dump()}
            for summary in registry.list_models()
            for version in model_detail(registry, summary.model_name).versions
        ]
        where = str(registry.root)
    if arguments.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        hint = "" if from_server else " (--url or DACIAVISION_API_URL lists a server's)"
        print(f"no models registered in {where}{hint}")
        return 0
    print(f"{'model':<24}{'version':>8}  {'aliases':<20}{'architecture':<14}{'accuracy':>9}")
    for row in rows:
        accuracy = "-" if row["test_accuracy"] is None else f"{row['test_accuracy']:.4f}"
        print(
            f"{row['model_name']:<24}{row['version']:>8}  {','.join(row['aliases']):<20}"
            f"{row['architecture'] or '-':<14}{accuracy:>9}"
        )
    return 0


def _server_rows(arguments: argparse.Namespace) -> list[dict[str, Any]]:
    from service.client import api_call, api_client

    with api_client(arguments) as client:
        names = [summary["model_name"] for summary in api_call(client, "GET", "/models")]
        details = [api_call(client, "GET", f"/models/{name}") for name in names]
    return [
        {"model_name": detail["model_name"], **version}
        for detail in details
        for version in detail["versions"]
    ]


def keys_new_command(arguments: argparse.Namespace) -> int:
    """Print a new API key and the DACIAVISION_API_KEYS entry (its hash) that accepts it."""
    try:
        scopes = check_scopes(arguments.scopes.split(","))
    except ValueError as error:
        raise InvalidInputError(str(error)) from None
    current = get_settings().api_keys.strip().strip(";")
    try:
        parse_api_keys(current)
    except ValueError as error:
        # Appending to a broken list would print a setting the server refuses to start with.
        raise InvalidInputError(
            f"the DACIAVISION_API_KEYS set here is not valid ({error}); fix or unset it first"
        ) from None
    key = new_key()
    entry = settings_entry(key, scopes)
    print(f"key (give it to the client, it is shown only once): {key}")
    print(f"settings entry (only its hash is stored):           {entry}")
    print(f"DACIAVISION_API_KEYS={';'.join(filter(None, [current, entry]))}")
    return 0
