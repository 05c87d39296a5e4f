"""Training-spec flags for the CLI, derived from the spec's own fields.

``daciavision train`` and ``daciavision jobs submit`` share these flags. A flag the
user did not give is absent from the namespace (``argparse.SUPPRESS``), so it never
overrides a ``--spec`` file or the architecture's own recipe: the spec is built from
what the user said, and the spec classes fill in the rest — exactly as ``POST /jobs``
does with the same fields.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic.fields import FieldInfo

from trainer.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE
from trainer.datasets import DATASET_NAMES
from trainer.errors import InvalidInputError
from trainer.spec_base import TrainingSpecBase

# Fields with flags of their own shape (choices, -p NAME=VALUE, augmentation switches).
_SPECIAL_FIELDS = {"dataset", "architecture", "hyperparameters", "augmentation"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(annotation: Any) -> tuple[type, list[str] | None]:
    """The argparse type (and choices) of a spec field: int, float, str or a Literal."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is Literal:
        return str, [str(choice) for choice in typing.get_args(annotation)]
    if annotation in (int, float, str):
        return annotation, None
    raise TypeError(f"no command-line flag for a field of type {annotation!r}")


def _defaults_text(name: str, field: FieldInfo) -> str:
    # Say where a default comes from when an architecture's recipe differs from the rest.
    by_architecture = {
        architecture: definition.spec.model_fields[name].get_default(call_default_factory=True)
        for architecture, definition in ARCHITECTURES.items()
    }
    common = field.get_default(call_default_factory=True)
    different = {key: value for key, value in by_architecture.items() if value != common}
    text = f"default {common}"
    if different:
        text += "; " + ", ".join(f"{key}: {value}" for key, value in different.items())
    return text


def add_training_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per spec field; none of them has a default (the spec classes do)."""
    parser.add_argument(
        "--dataset", choices=DATASET_NAMES, default=argparse.SUPPRESS, help="dataset to train on"
    )
    parser.add_argument(
        "--architecture",
        choices=tuple(ARCHITECTURES),
        default=argparse.SUPPRESS,
        help="; ".join(f"{name}: {d.summary}" for name, d in ARCHITECTURES.items())
        + f" (default {DEFAULT_ARCHITECTURE}; each brings its own training recipe)",
    )
    parser.add_argument(
        "--hyperparameters",
        "-p",
        action="append",
        default=argparse.SUPPRESS,
        metavar="NAME=VALUE",
        help="architecture hyperparameter as NAME=JSON (repeatable), e.g. -p filters1=64; "
        "GET /docs lists each architecture's hyperparameters",
    )
    for name, field in TrainingSpecBase.model_fields.items():
        if name in _SPECIAL_FIELDS:
            continue
        description = (field.description or name.replace("_", " ")).rstrip(".")
        if field.annotation is bool:
            parser.add_argument(
                _flag(name),
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{description} ({_defaults_text(name, field)})",
            )
            continue
        value_type, choices = _scalar_type(field.annotation)
        parser.add_argument(
            _flag(name),
            type=value_type,
            choices=choices,
            default=argparse.SUPPRESS,
            help=f"{description} ({_defaults_text(name, field)})",
        )
    augmentation = parser.add_argument_group("augmentation")
    augmentation.add_argument(
        "--augment",
        action="store_true",
        default=argparse.SUPPRESS,
        help="augment every training image (the lab's rotation, shifts, zoom, flips)",
    )
    augmentation.add_argument(
        "--augment-classes",
        metavar="NAMES",
        default=argparse.SUPPRESS,
        help="comma-separated class names to oversample, or 'weak'; every image is "
        "augmented, unless --augment-only-targets",
    )
    augmentation.add_argument("--oversample-factor", type=int, default=argparse.SUPPRESS)
    augmentation.add_argument(
        "--augment-only-targets",
        action="store_true",
        default=argparse.SUPPRESS,
        help="augment the --augment-classes images alone, as the lab's weak-class retrain did",
    )
    augmentation.add_argument(
        "--reference-model",
        metavar="NAME[:VERSION]",
        default=argparse.SUPPRESS,
        help="the model whose weak classes 'weak' means",
    )


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_hyperparameters(assignments: list[str]) -> dict[str, Any]:
    """``-p NAME=VALUE`` assignments as a dict; a VALUE that is not JSON stays text."""
    hyperparameters = {}
    for assignment in assignments:
        name, separator, value = assignment.partition("=")
        if not separator:
            raise InvalidInputError(f"hyperparameter {assignment!r} must look like NAME=VALUE")
        hyperparameters[name] = _parse_value(value)
    return hyperparameters


def read_spec_file(path: str) -> dict[str, Any]:
    """A JSON training spec from a file, or from standard input for '-'."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        spec = json.loads(text)
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"cannot read the spec file {path!r}: {error}") from None
    if not isinstance(spec, dict):
        raise InvalidInputError(f"the spec file {path!r} must hold a JSON object")
    return spec


def spec_from_arguments(arguments: argparse.Namespace) -> dict[str, Any]:
    """The spec the user asked for: the --spec file, then only the flags they gave."""
    given = vars(arguments)
    spec: dict[str, Any] = read_spec_file(given["spec"]) if given.get("spec") else {}
    for name in ("dataset", "architecture", *TrainingSpecBase.model_fields):
        if name not in _SPECIAL_FIELDS - {"dataset", "architecture"} and name in given:
            spec[name] = given[name]
    if "hyperparameters" in given:
        spec["hyperparameters"] = {
            **spec.get("hyperparameters", {}),
            **parse_hyperparameters(given["hyperparameters"]),
        }
    augmentation = dict(spec.get("augmentation", {}))
    if given.get("augment"):
        augmentation["enabled"] = True
    if "augment_classes" in given:
        classes = given["augment_classes"]
        augmentation["target_classes"] = "weak" if classes == "weak" else classes.split(",")
    if "oversample_factor" in given:
        augmentation["oversample_factor"] = given["oversample_factor"]
    if given.get("augment_only_targets"):
        augmentation["augmented_classes"] = "targets"
    if "reference_model" in given:
        name, _, version = given["reference_model"].partition(":")
        augmentation["reference_model"] = {"model_name": name, "version": version or None}
    if augmentation:
        spec["augmentation"] = augmentation
    return spec
