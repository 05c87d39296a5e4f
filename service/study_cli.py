"""``daciavision study``: run the CNN lab on a server, follow it, fetch its report."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from service.client import ServerError, api_call, api_client, create_call
from trainer.datasets import DATASET_NAMES
from trainer.errors import InvalidInputError
from trainer.spec_base import TrainingSpecBase
from trainer.study_spec import PRESETS

TERMINAL = {"succeeded", "failed", "cancelled"}
FORMATS = {".html": "html", ".htm": "html", ".md": "markdown", ".json": "json"}


def stage_lines(study: dict[str, Any], width: int = 24) -> list[str]:
    """One line per stage: a progress bar, its status and its winner.

    A stage of one training has no choice to make, so its model is not called a winner.
    """
    lines = [f"study {study['study_id']} {study['status']} {study['progress']:.0%}"]
    for stage in study["stages"]:
        filled = int(width * stage["progress"])
        bar = "#" * filled + "." * (width - filled)
        line = f"  {stage['name']:<18} [{bar}] {stage['status']:<9}"
        if stage["winner"]:
            chosen = "winner" if len(stage["jobs"]) > 1 else "model"
            line += f" {chosen}: {stage['winner']['label']}"
        if stage["error"]:
            line += f" ({stage['error'][:80]})"
        lines.append(line)
    return lines


def _request_body(arguments: argparse.Namespace) -> dict[str, Any]:
    # Only what the user gave: the server owns the defaults.
    given = {
        "preset": arguments.preset,
        "quick": arguments.quick or None,
        "include_reference": False if arguments.no_reference else None,
        "epochs": arguments.epochs,
        "sample_fraction": arguments.sample_fraction,
        "primary_dataset": arguments.primary_dataset,
        "secondary_dataset": arguments.secondary_dataset,
        "seed": arguments.seed,
        "name": arguments.name,
    }
    return {key: value for key, value in given.items() if value is not None}


def run_command(arguments: argparse.Namespace) -> int:
    with api_client(arguments) as client:
        study = create_call(client, "/studies", _request_body(arguments))
        print(f"started study {study['study_id']}")
        if arguments.follow:
            return _follow(client, study["study_id"])
    return 0


def _follow(client: httpx.Client, study_id: str, interval: float = 2.0) -> int:
    interactive = sys.stdout.isatty()
    shown: list[str] = []
    while True:
        study = api_call(client, "GET", f"/studies/{study_id}")
        lines = stage_lines(study)
        if lines != shown:
            if interactive:
                if shown:
                    print(f"\x1b[{len(shown)}F", end="")  # back to the first line, redraw
                print("\n".join(f"{line}\x1b[K" for line in lines))
            else:  # a log file: only what changed, so it reads as a history
                print("\n".join(line for line in lines if line not in shown))
            shown = lines
        if study["status"] in TERMINAL:
            break
        time.sleep(interval)
    if study["report_url"]:
        # A link to open, and the command that saves it with its plots.
        print(f"report: {client.base_url.join(study['report_url'])}?format=html")
        print(f"  save it: daciavision study report {study['study_id']} --output report.html")
    return 0 if study["status"] == "succeeded" else 1


def show_command(arguments: argparse.Namespace) -> int:
    with api_client(arguments) as client:
        study = api_call(client, "GET", f"/studies/{arguments.study_id}")
    print(json.dumps(study, indent=2) if arguments.json else "\n".join(stage_lines(study)))
    return 0


def cancel_command(arguments: argparse.Namespace) -> int:
    with api_client(arguments) as client:
        study = api_call(client, "POST", f"/studies/{arguments.study_id}/cancel")
    print(f"study {study['study_id']}: {study['status']}")
    return 0


def report_command(arguments: argparse.Namespace) -> int:
    output = Path(arguments.output)
    report_format = FORMATS.get(output.suffix.lower())
    if report_format is None:
        # The user's input, not the server's answer: exit 2, as argparse's errors do.
        raise InvalidInputError(
            f"--output must end in one of {', '.join(FORMATS)}, got {output.name}"
        )
    path = f"/studies/{arguments.study_id}/report"
    # `--output docs/examples/lab.md` names a file, not a folder the user must make first;
    # made before the server is asked, so a path that cannot be written fails at once.
    output.parent.mkdir(parents=True, exist_ok=True)
    with api_client(arguments) as client:
        try:
            response = client.get(path, params={"format": report_format})
        except httpx.TransportError as error:
            raise ServerError(f"cannot reach {client.base_url}: {error}") from error
        if response.is_error:
            api_call(client, "GET", path)  # raises with the server's message
        text = response.text
        if report_format == "markdown":
            text = _save_plots(client, text, output)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 0


def _save_plots(client: httpx.Client, markdown: str, output: Path) -> str:
    """Download the report's plots beside the Markdown file and point the links at them."""
    folder = output.with_name(f"{output.stem}_plots")
    folder.mkdir(exist_ok=True)

    def fetch(match: re.Match[str]) -> str:
        url, name = match.group(1), match.group(2)
        (folder / name).write_bytes(client.get(url).raise_for_status().content)
        return f"]({folder.name}/{name})"

    return re.sub(r"\]\((/studies/[^)]+/plots/([^/)]+\.(?:png|svg)))\)", fetch, markdown)


def add_study_parser(commands: Any) -> list[argparse.ArgumentParser]:
    """The ``study`` command and its actions; returns them so the caller adds --url."""
    study = commands.add_parser("study", help="run the CNN lab as one study on a server")
    actions = study.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="start a study from a preset")
    run.add_argument("preset", choices=PRESETS, help="the protocol to run")
    run.add_argument("--quick", action="store_true", help="small samples, few epochs")
    run.add_argument("--no-reference", action="store_true", help="skip the whitened_cnn reference")
    run.add_argument("--epochs", type=int, help="every training's epochs")
    run.add_argument("--sample-fraction", type=float, help="share of each class kept")
    run.add_argument("--primary-dataset", choices=DATASET_NAMES, help="the lab's CIFAR-10")
    run.add_argument("--secondary-dataset", choices=DATASET_NAMES, help="the lab's MNIST")
    default_seed = TrainingSpecBase.model_fields["seed"].default
    run.add_argument(
        "--seed",
        type=int,
        help=f"every training's seed (sampling, splits, weights; default {default_seed})",
    )
    run.add_argument("--name", help="a title for the study and its report")
    run.add_argument("--follow", action="store_true", help="then show a progress bar per stage")
    run.set_defaults(handler=run_command)
    show = actions.add_parser("show", help="stages, progress and winners")
    show.add_argument("study_id")
    show.add_argument("--json", action="store_true", help="the study as the API returns it")
    show.set_defaults(handler=show_command)
    cancel = actions.add_parser("cancel", help="cancel the study's jobs")
    cancel.add_argument("study_id")
    cancel.set_defaults(handler=cancel_command)
    report = actions.add_parser("report", help="save the report (.html, .md with plots, .json)")
    report.add_argument("study_id")
    report.add_argument("--output", "-o", required=True, metavar="FILE")
    report.set_defaults(handler=report_command)
    return [run, show, cancel, report]
