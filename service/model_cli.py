"""CLI commands for registered models on a running server: metrics and aliases.

The same routes the README shows with curl, so a shell script needs neither curl nor
jq: `daciavision metrics`, and `daciavision alias set|rollback|delete|history`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from service.client import api_call, api_client, bounded_int
from trainer.spec_base import MAX_VERSION

URL_HELP = "server URL (default: DACIAVISION_API_URL or http://127.0.0.1:8000)"


def add_model_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    """`metrics` and `alias …`; returns the parsers that take --url."""
    metrics = commands.add_parser(
        "metrics",
        help="a version's per-class test report from a running server",
        description="Accuracy, per-class precision, recall, F1 and support, and the weak "
        "classes of a registered version (GET /metrics).",
    )
    metrics.add_argument("model_name", help="a registered model's name")
    metrics.add_argument("--version", help="number or alias (default: production, else latest)")
    metrics.add_argument("--json", action="store_true", help="the whole report as JSON")
    metrics.set_defaults(handler=metrics_command)

    alias = commands.add_parser(
        "alias", help="move, roll back, delete an alias, or show its history"
    )
    actions = alias.add_subparsers(dest="action", required=True)
    set_ = actions.add_parser("set", help="point an alias at a version (loaded and warmed first)")
    set_.add_argument("model_name")
    set_.add_argument("alias", help="e.g. production")
    set_.add_argument("version", type=bounded_int(1, MAX_VERSION), help="a version number")
    set_.set_defaults(handler=alias_set_command)
    parsers = [metrics, set_]
    for name, handler, text in (
        ("rollback", alias_rollback_command, "move an alias back to its previous version"),
        ("delete", alias_delete_command, "remove an alias"),
        ("history", alias_history_command, "every move of an alias, oldest first"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("model_name")
        action.add_argument("alias")
        action.set_defaults(handler=handler)
        parsers.append(action)
    for parser in parsers:
        parser.add_argument("--url", help=URL_HELP)
    return parsers


def metrics_command(arguments: argparse.Namespace) -> int:
    params = {"model_name": arguments.model_name}
    if arguments.version:
        params["version"] = arguments.version
    with api_client(arguments) as client:
        report = api_call(client, "GET", "/metrics", params=params)
    if arguments.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{report['model_name']} version {report['version']}: {report['architecture']} on "
        f"{report['dataset']}, test accuracy {report['accuracy']:.4f} "
        f"({report['test_samples']:,} images)"
    )
    weak = {entry["class_name"] for entry in report["weak_classes"]}
    width = max(len("class"), *(len(entry["class_name"]) for entry in report["per_class"]))
    print(f"{'class':<{width}}  precision  recall  f1      support")
    for entry in report["per_class"]:
        mark = "  weak" if entry["class_name"] in weak else ""
        print(
            f"{entry['class_name']:<{width}}  {entry['precision']:9.4f}  {entry['recall']:6.4f}"
            f"  {entry['f1']:6.4f}  {entry['support']:7d}{mark}"
        )
    print(f"weak classes: {', '.join(sorted(weak)) or 'none'} ({report['weak_class_rule']})")
    return 0


def _alias_path(arguments: argparse.Namespace) -> str:
    return f"/models/{arguments.model_name}/aliases/{arguments.alias}"


def _print_change(change: dict[str, Any]) -> None:
    before = f"v{change['from_version']}" if change["from_version"] else "unset"
    after = f"v{change['to_version']}" if change["to_version"] else "removed"
    print(f"{change['model_name']}: {change['alias']} {before} → {after}")


def alias_set_command(arguments: argparse.Namespace) -> int:
    with api_client(arguments) as client:
        change = api_call(
            client, "PUT", _alias_path(arguments), json={"version": arguments.version}
        )
    _print_change(change)
    return 0


def alias_rollback_command(arguments: argparse.Namespace) -> int:
    with api_client(arguments) as client:
        change = api_call(client, "POST", f"{_alias_path(arguments)}/rollback", json={})
    _print_change(change)
    return 0


def alias_delete_command(arguments: argparse.Namespace) -> int:
    with api_client(arguments) as client:
        change = api_call(client, "DELETE", _alias_path(arguments))
    _print_change(change)
    return 0


def alias_history_command(arguments: argparse.Namespace) -> int:
    with api_client(arguments) as client:
        history = api_call(client, "GET", f"{_alias_path(arguments)}/history")
    for change in history:
        before = f"v{change['from_version']}" if change["from_version"] else "unset"
        after = f"v{change['to_version']}" if change["to_version"] else "removed"
        print(f"{change['changed_at']}  {before} → {after}")
    return 0
