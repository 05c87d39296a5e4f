"""The CLI keeps each recipe: it sends only the flags given, as POST /jobs receives them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.cli import build_parser
from service.spec_arguments import parse_hyperparameters, spec_from_arguments
from trainer.architectures import ARCHITECTURES
from trainer.datasets import DATASET_NAMES
from trainer.errors import InvalidInputError
from trainer.spec import parse_training_spec
from trainer.spec_base import TrainingSpecBase


def cli_spec(*argv: str) -> dict[str, Any]:
    """The spec `daciavision train ARGV` trains, fully validated, as JSON."""
    arguments = build_parser().parse_args(["train", *argv])
    return parse_training_spec(spec_from_arguments(arguments)).model_dump(mode="json")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _options(command: list[str]) -> dict[str, argparse.Action]:
    parser = build_parser()
    for word in command:
        subparsers = next(
            action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
        )
        parser = subparsers.choices[word]
    return {option: action for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize(
    "fields",
    [
        {"dataset": "cifar10", "architecture": "resnet", "model_name": "r"},
        {"dataset": "mnist", "architecture": "alexnet", "epochs": 3},
        {"dataset": "digits", "sample_fraction": 0.5, "optimizer": "sgd", "seed": 7},
    ],
    ids=["resnet", "alexnet", "default-architecture"],
)
def test_train_builds_the_spec_post_jobs_builds_from_the_same_fields(
    client: TestClient, fields: dict[str, Any]
) -> None:
    argv = [
        word
        for name, value in fields.items()
        for word in (f"--{name}".replace("_", "-"), str(value))
    ]
    response = client.post("/jobs", json=fields)
    assert response.status_code == 202, response.text
    assert cli_spec(*argv) == response.json()["spec"]


def test_train_with_resnet_keeps_resnets_recipe() -> None:
    spec = cli_spec("--dataset", "cifar10", "--architecture", "resnet", "--model-name", "r")
    assert (spec["optimizer"], spec["learning_rate"], spec["lr_schedule"]) == (
        "sgd",
        0.2,
        "one_cycle",
    )
    assert (spec["epochs"], spec["label_smoothing"]) == (16, 0.1)
    assert spec["augmentation"]["enabled"] is True


def test_boolean_fields_have_on_and_off_flags_and_refuse_a_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    whitened = ["--dataset", "cifar10", "--architecture", "whitened_cnn"]
    assert cli_spec(*whitened)["lookahead"] is True  # the recipe's default
    assert cli_spec(*whitened, "--no-lookahead")["lookahead"] is False
    assert cli_spec("--dataset", "digits", "--lookahead")["lookahead"] is True
    with pytest.raises(SystemExit):
        cli_spec("--dataset", "digits", "--lookahead=yes")
    assert "ignored explicit argument" in capsys.readouterr().err


def test_spec_file_values_survive_unless_a_flag_names_them(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps(
            {
                "dataset": "digits",
                "epochs": 7,
                "batch_size": 16,
                "optimizer": "sgd",
                "hyperparameters": {"filters1": 8, "filters2": 16},
                "augmentation": {"enabled": True, "zoom": 0.2},
            }
        )
    )
    spec = cli_spec("--spec", str(spec_file), "--epochs", "3", "-p", "filters2=32")
    assert spec["epochs"] == 3, "the flag given wins"
    assert (spec["batch_size"], spec["optimizer"]) == (16, "sgd"), "the file's values survive"
    assert spec["hyperparameters"]["filters1"] == 8 and spec["hyperparameters"]["filters2"] == 32
    assert spec["augmentation"]["enabled"] is True and spec["augmentation"]["zoom"] == 0.2


def test_augmentation_flags_build_the_targeted_recipes() -> None:
    uniform = cli_spec("--dataset", "cifar10", "--augment-classes", "cat,dog")["augmentation"]
    assert uniform["target_classes"] == ["cat", "dog"] and uniform["enabled"] is True
    assert uniform["augmented_classes"] == "all"
    lab = cli_spec("--dataset", "cifar10", "--augment-classes", "cat", "--augment-only-targets")
    assert lab["augmentation"]["augmented_classes"] == "targets"
    with pytest.raises(ValueError, match="needs target_classes"):
        cli_spec("--dataset", "cifar10", "--augment-only-targets")


def test_jobs_submit_sends_only_the_flags_given() -> None:
    arguments = build_parser().parse_args(
        ["jobs", "submit", "--dataset", "cifar10", "--architecture", "resnet", "--epochs", "4"]
    )
    assert spec_from_arguments(arguments) == {
        "dataset": "cifar10",
        "architecture": "resnet",
        "epochs": 4,
    }


@pytest.mark.parametrize("command", [["train"], ["jobs", "submit"]])
def test_flags_and_choices_come_from_the_definitions(command: list[str]) -> None:
    options = _options(command)
    assert tuple(options["--architecture"].choices or ()) == tuple(ARCHITECTURES)
    assert tuple(options["--dataset"].choices or ()) == DATASET_NAMES
    for name in TrainingSpecBase.model_fields:
        if name not in {"augmentation", "hyperparameters"}:
            assert f"--{name.replace('_', '-')}" in options, f"no flag for spec field {name}"
    for option in ("--epochs", "--optimizer", "--batch-size"):
        assert options[option].default is argparse.SUPPRESS, "a default would override recipes"
    assert options["--optimizer"].choices == ["adam", "adamw", "sgd"]


def test_hyperparameter_values_are_json_or_else_text() -> None:
    assert parse_hyperparameters(
        ["group_filters=[16, 32]", "activation=relu", "bfloat16=false"]
    ) == {
        "group_filters": [16, 32],
        "activation": "relu",
        "bfloat16": False,
    }
    with pytest.raises(InvalidInputError, match="'activation' must look like NAME=VALUE"):
        parse_hyperparameters(["activation"])
