"""Bounded jobs: the cost estimate, the budget at submit time, and bounded numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.routes.jobs import SPEC_EXAMPLES
from trainer.budget import Budget, check_budget, estimate_cost
from trainer.data import load_raw, prepare, stratified_sample
from trainer.datasets import check_split_sizes, dataset_info
from trainer.errors import InvalidInputError
from trainer.spec import parse_training_spec
from worker.settings import Settings

MAXIMAL_SPEC = {
    "dataset": "cifar10",
    "architecture": "custom_cnn",
    "hyperparameters": {"filters1": 2048, "filters2": 2048, "dense_units": 2048},
    "epochs": 500,
    "batch_size": 4096,
    "model_name": "too-big",
}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(home=tmp_path)), raise_server_exceptions=False)


def test_the_maximal_spec_is_refused_and_nothing_is_stored(client: TestClient) -> None:
    response = client.post("/jobs", json=MAXIMAL_SPEC)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["code"] == "resource_budget_exceeded"
    for limit in ("parameters", "activations per batch", "floating-point operations"):
        assert limit in detail["message"]
    assert detail["errors"][0]["field"] == "body"
    assert client.get("/jobs").json()["total"] == 0


def test_every_documented_example_fits_the_default_budget(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    budget = Budget(
        settings.max_model_parameters, settings.max_activation_bytes, settings.max_training_flops
    )
    for name, example in SPEC_EXAMPLES.items():
        check_budget(parse_training_spec(example["value"]), budget)  # raises if not
        assert name


@pytest.mark.parametrize(
    "spec",
    [
        {"dataset": "cifar10"},
        {"dataset": "cifar10", "hyperparameters": {"filters1": 64, "filters2": 128,
                                                    "dense_units": 256, "batch_norm": True,
                                                    "extra_conv_filters": [32]}},
        {"dataset": "mnist", "architecture": "alexnet"},
        {"dataset": "cifar10", "architecture": "alexnet", "hyperparameters": {"batch_norm": True}},
        {"dataset": "cifar10", "architecture": "resnet"},
        {"dataset": "fashion_mnist", "architecture": "resnet",
         "hyperparameters": {"stage_filters": [16, 32], "residual_stages": [False, True]}},
    ],
)  # fmt: skip
def test_estimated_parameters_match_keras(spec: dict[str, Any]) -> None:
    from trainer.architectures import build_model
    from trainer.datasets import dataset_info

    parsed = parse_training_spec(spec)
    info = dataset_info(parsed.dataset)
    model = build_model(
        parsed.architecture, parsed.hyperparameters, info.input_shape, len(info.class_names)
    )
    assert estimate_cost(parsed).parameters == model.count_params()


def test_cost_grows_with_what_the_spec_asks_for() -> None:
    small = estimate_cost(parse_training_spec({"dataset": "cifar10", "epochs": 10}))
    longer = estimate_cost(parse_training_spec({"dataset": "cifar10", "epochs": 20}))
    wider = estimate_cost(parse_training_spec({"dataset": "cifar10", "batch_size": 128}))
    assert longer.training_flops == pytest.approx(2 * small.training_flops)
    assert wider.activation_bytes_per_batch == 2 * small.activation_bytes_per_batch


def test_the_budget_scales_by_the_real_training_split() -> None:
    # The one dataset every machine has: its definition must count what the loader gives.
    assert dataset_info("digits").train_images == len(load_raw("digits", None).y_train)


def test_the_digits_definition_counts_the_real_test_split() -> None:
    assert dataset_info("digits").test_images == len(load_raw("digits", None).y_test)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sample_fraction": 1e-9}, "body.sample_fraction"),
        ({"sample_fraction": 0.9999}, "body.sample_fraction"),
        ({"validation_fraction": 0.999}, "body.validation_fraction"),
        ({"sample_fraction": 0.05, "validation_fraction": 0.01}, "body.validation_fraction"),
    ],
)
def test_a_sample_too_small_to_split_is_a_422_not_a_failure_in_the_worker(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/jobs", json={"dataset": "digits", **body})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["errors"][0]["field"] == field
    assert "each of its 10 classes" in detail["message"] or "the 10 classes" in detail["message"]
    assert client.get("/jobs").json()["total"] == 0


def test_the_split_check_draws_the_line_where_the_stratified_splits_do() -> None:
    # Both sides of the line, against the splits themselves on the bundled digits.
    raw = load_raw("digits", None)
    train, test = dataset_info("digits").train_images, dataset_info("digits").test_images
    smallest = max(10 / train, 10 / test)  # every split keeps one image per class
    for fraction, fits in ((smallest * 1.2, True), (smallest * 0.5, False)):
        refused = None
        try:
            check_split_sizes("digits", fraction, 0.5)
        except InvalidInputError as error:
            refused = error
        assert (refused is None) == fits, fraction
        if fits:
            # The sampling and validation split the trainer makes, all stratified.
            prepared_ok = prepare("digits", None, sample_fraction=fraction, validation_fraction=0.5)
            assert set(prepared_ok.validation.y) == set(range(10))
        else:
            with pytest.raises(ValueError, match="greater or equal to the number of classes"):
                stratified_sample(raw.x_test, raw.y_test, fraction)


def test_too_many_poolings_are_a_422_not_a_worker_crash(client: TestClient) -> None:
    # 28 → 14 → 7 → 3 → 1 → 0: the sixth block would have nothing left to pool.
    spec = {"dataset": "mnist", "hyperparameters": {"extra_conv_filters": [8, 8, 8, 8]}}
    with pytest.raises(InvalidInputError, match="halves the image"):
        estimate_cost(parse_training_spec(spec))
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422
    assert client.get("/jobs").json()["total"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"seed": 2**40}, "body.seed"),
        ({"seed": 10**30}, "body.seed"),
        ({"epochs": 10**30}, "body.epochs"),
        ({"time_limit_seconds": 10**9}, "body.time_limit_seconds"),
        ({"time_limit_seconds": 100 * 3600}, "body.time_limit_seconds"),
        ({"augmentation": {"target_classes": ["cat"] * 101}}, "body.augmentation.target_classes"),
        (
            {"augmentation": {"target_classes": "weak",
                              "reference_model": {"model_name": "m", "version": 2**40}}},
            "body.augmentation.reference_model.version",
        ),
    ],
)  # fmt: skip
def test_numbers_and_lists_are_bounded_at_submit(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/jobs", json={"dataset": "cifar10", **body})
    assert response.status_code == 422, response.text
    fields = [entry["field"] for entry in response.json()["detail"]["errors"]]
    assert any(name.startswith(field) for name in fields), fields
    assert client.get("/jobs").json()["total"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "/jobs?offset=100000000000000000000",
        "/jobs?offset=-1",
        "/jobs?limit=100000000000000000000",
        "/v1/models/m/versions/100000000000000000000",
        "/v1/models/m/versions/100000000000000000000/metadata",
        "/models/m/versions/100000000000000000000",
        "/metrics?model_name=m&version=100000000000000000000",
        f"/jobs/{'x' * 10_000}",
    ],
)
def test_huge_numbers_in_queries_and_paths_never_reach_a_500(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 422), (path, response.text)
    assert len(response.content) < 4_000
