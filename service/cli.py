"""The ``daciavision`` command: run the service, train locally, talk to a server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from service import client, download, local
from service.client import bounded_int
from service.model_cli import add_model_parsers
from service.spec_arguments import add_training_spec_arguments
from service.study_cli import add_study_parser
from trainer.errors import DaciaVisionError
from worker.jobstore.models import JOB_STATUSES


def _add_train_parser(commands: Any) -> None:
    train = commands.add_parser(
        "train",
        help="train in this process and register a version",
        description="Train in this process and register a version. Only the flags you give "
        "are sent: everything else comes from --spec FILE, then from the architecture's own "
        "recipe — the same spec POST /jobs builds from the same fields.",
    )
    train.add_argument(
        "--spec", metavar="FILE", help="a JSON training spec ('-' for stdin); flags override it"
    )
    add_training_spec_arguments(train)
    train.set_defaults(handler=local.train_command)
    models = commands.add_parser(
        "models",
        help="list registered models, versions and aliases",
        description="Models with their versions, aliases and test accuracy: from a "
        "server's registry with --url or DACIAVISION_API_URL, else from this machine's.",
    )
    models.set_defaults(handler=local.models_command)
    models.add_argument("--json", action="store_true", help="one JSON object per version")
    models.add_argument(
        "--url", help="list a running server's models (GET /models); default: DACIAVISION_API_URL"
    )


def _add_server_parsers(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="run the API (and, without REDIS_URL, an embedded worker)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=bounded_int(1, 65535), default=8000)
    serve.add_argument(
        "--workers",
        type=bounded_int(0, 64),
        default=1,
        help="embedded worker processes (embedded mode only; 0 for the API alone)",
    )
    serve.add_argument(
        "--api-processes",
        type=int,
        help="API server processes sharing the port (default: DACIAVISION_API_PROCESSES, 1)",
    )
    serve.add_argument(
        "--verbose",
        action="store_true",
        help="show the embedded workers' and the server's logs here instead of in log files",
    )
    serve.set_defaults(handler=local.serve_command)
    worker = commands.add_parser("worker", help="run a Celery worker for training jobs")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(handler=local.worker_command)
    keys = commands.add_parser("keys", help="API keys for DACIAVISION_API_KEYS")
    key_actions = keys.add_subparsers(dest="action", required=True)
    new = key_actions.add_parser("new", help="print a new key and its settings entry")
    new.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: predict (predict, read models and metrics), "
        "train (jobs, model files), admin (everything)",
    )
    new.set_defaults(handler=local.keys_new_command)


def _add_client_parsers(commands: Any) -> None:
    jobs = commands.add_parser(
        "jobs", help="training jobs on a running server (DACIAVISION_API_URL)"
    )
    actions = jobs.add_subparsers(dest="action", required=True)
    submit = actions.add_parser(
        "submit",
        help="queue a job from a JSON spec file and/or flags (the same flags as train)",
    )
    submit.add_argument(
        "spec", nargs="?", help="JSON spec file ('-' for stdin); flags given override it"
    )
    add_training_spec_arguments(submit)
    submit.add_argument("--follow", action="store_true", help="then show live progress")
    submit.add_argument("--json", action="store_true", help="print the queued job as JSON")
    submit.set_defaults(handler=client.submit_command)
    listing = actions.add_parser(
        "list", help="jobs, newest first", description="Jobs, newest first, one per line."
    )
    listing.add_argument("--status", choices=JOB_STATUSES, help="only jobs in this status")
    listing.add_argument("--model-name", help="only jobs of this model")
    listing.add_argument(
        "--limit", type=bounded_int(1, 200), default=20, help="jobs shown (20; at most 200)"
    )
    listing.add_argument("--json", action="store_true", help="the page of jobs as JSON")
    listing.set_defaults(handler=client.list_command)
    followers: list[argparse.ArgumentParser] = []
    for name, handler, text in (
        ("show", client.show_command, "one job as JSON"),
        ("cancel", client.cancel_command, "cancel a queued or running job"),
        ("follow", client.follow_command, "live progress bar until the job ends"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("job_id")
        action.set_defaults(handler=handler)
        followers.append(action)
    predict = commands.add_parser("predict", help="classify image files with a served model")
    predict.add_argument("files", nargs="+", help="PNG, JPEG, BMP or GIF images")
    predict.add_argument("--model-name", required=True, help="a registered model's name")
    predict.add_argument("--version", help="number or alias (default: production, else latest)")
    predict.add_argument("--top-k", type=int, default=3, help="classes shown per image (3)")
    predict.add_argument("--json", action="store_true", help="the server's answer as JSON")
    predict.set_defaults(handler=client.predict_command)
    download_parser = commands.add_parser(
        "download", help="save a version's model file (.keras), checked against its sha256"
    )
    download_parser.add_argument("model_name", help="a registered model's name")
    download_parser.add_argument(
        "--version", help="number or alias (default: production, else latest)"
    )
    download_parser.add_argument(
        "--output", "-o", help="file or folder (default: ./MODEL-vN.keras, as the server names it)"
    )
    download_parser.set_defaults(handler=download.download_command)
    commands_with_url = (submit, listing, *followers, predict, download_parser)
    for command in (*commands_with_url, *add_study_parser(commands)):
        command.add_argument(
            "--url", help="server URL (default: DACIAVISION_API_URL or http://127.0.0.1:8000)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daciavision", description="Train, version and serve image classifiers."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_server_parsers(commands)
    _add_train_parser(commands)
    _add_client_parsers(commands)
    add_model_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(build_parser().parse_args(argv))
    except BrokenPipeError:
        # `daciavision ... | head`: the reader left. Python's documented way out, so the
        # interpreter's last flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(arguments: argparse.Namespace) -> int:
    try:
        result: int = arguments.handler(arguments)
    except DaciaVisionError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    except client.ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        for entry in _field_errors(error.body):
            print(f"  {entry}", file=sys.stderr)
        # Invalid input is 2, as for a local command; anything the server could not do, 1.
        return 2 if error.status == 422 else 1
    except BrokenPipeError:
        raise  # for main(): the reader left, nothing to say
    except OSError as error:
        # A file named on the command line: missing, a folder, not writable.
        print(
            f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return result


def _field_errors(body: Any) -> list[str]:
    """'field: what was expected (received …)' for each entry of a 422's errors."""
    try:
        entries = body["detail"]["errors"]
        return [
            f"{entry['field']}: {entry['expected']} (received {json.dumps(entry['received'])})"
            for entry in entries
        ]
    except (KeyError, TypeError):
        return []


if __name__ == "__main__":
    sys.exit(main())
