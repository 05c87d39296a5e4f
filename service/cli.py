"""The ``daciavision`` command: run the service, train locally, talk to a server."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from service import client, local
from service.study_cli import add_study_parser
from trainer.errors import DaciaVisionError


def _add_train_parser(commands: Any) -> None:
    train = commands.add_parser("train", help="train in this process and register a version")
    train.add_argument(
        "--dataset", required=True, choices=["cifar10", "mnist", "fashion_mnist", "digits"]
    )
    train.add_argument("--sample-fraction", type=float, default=1.0)
    train.add_argument(
        "--architecture", default="custom_cnn", choices=["custom_cnn", "alexnet", "resnet"]
    )
    train.add_argument(
        "--hyperparameters",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="architecture hyperparameter, JSON value (repeatable), e.g. -p filters1=64",
    )
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument(
        "--lr-schedule", choices=["constant", "one_cycle", "cosine"], default="constant"
    )
    train.add_argument("--label-smoothing", type=float, default=0.0)
    train.add_argument("--validation-fraction", type=float, default=0.1)
    train.add_argument("--early-stopping-patience", type=int)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--augment", action="store_true", help="augment every training image")
    train.add_argument(
        "--augment-classes",
        metavar="NAMES",
        help="comma-separated class names to oversample and augment, or 'weak'",
    )
    train.add_argument("--oversample-factor", type=int, default=2)
    train.add_argument(
        "--reference-model", metavar="NAME[:VERSION]", help="model whose weak classes 'weak' means"
    )
    train.add_argument("--model-name")
    train.add_argument(
        "--spec", metavar="FILE", help="a JSON training spec; flags given override it"
    )
    train.set_defaults(handler=local.train_command)
    models = commands.add_parser("models", help="list registered models, versions and aliases")
    models.set_defaults(handler=local.models_command)
    models.add_argument("--json", action="store_true")


def _add_server_parsers(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="run the API (and, without REDIS_URL, an embedded worker)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers", type=int, default=1, help="embedded worker processes (embedded mode only)"
    )
    serve.set_defaults(handler=local.serve_command)
    worker = commands.add_parser("worker", help="run a Celery worker for training jobs")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(handler=local.worker_command)


def _add_client_parsers(commands: Any) -> None:
    jobs = commands.add_parser(
        "jobs", help="training jobs on a running server (DACIAVISION_API_URL)"
    )
    actions = jobs.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="queue a job from a JSON spec file or flags")
    submit.add_argument("spec", nargs="?", help="JSON spec file ('-' for stdin)")
    submit.add_argument("--dataset")
    submit.add_argument("--architecture")
    submit.add_argument("--sample-fraction", type=float)
    submit.add_argument("--epochs", type=int)
    submit.add_argument("--model-name")
    submit.add_argument("--follow", action="store_true", help="then show live progress")
    submit.set_defaults(handler=client.submit_command)
    listing = actions.add_parser("list", help="newest first")
    listing.add_argument("--status")
    listing.add_argument("--model-name")
    listing.add_argument("--limit", type=int, default=20)
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
    predict.add_argument("files", nargs="+")
    predict.add_argument("--model-name", required=True)
    predict.add_argument("--version", help="number or alias (default: production, else latest)")
    predict.add_argument("--top-k", type=int, default=3)
    predict.set_defaults(handler=client.predict_command)
    for command in (submit, listing, *followers, predict, *add_study_parser(commands)):
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        result: int = arguments.handler(arguments)
    except DaciaVisionError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    except client.ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        if error.body:
            print(json.dumps(error.body, indent=2), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
