"""Shared test setup: one temporary home, one client factory, one model-card factory."""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from trainer.card import TrainingRecord
from worker.settings import Settings

# Quiet TensorFlow's C++ start-up chatter in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TEST_DATA = Path(__file__).parent / "data"
# A card exactly as release 0.1.0 wrote it (a digits custom_cnn, 2 epochs).
CARD_0_1_0 = TEST_DATA / "card-0.1.0.json"
_REGISTRY_FIELDS = {
    "model_name",
    "version",
    "created_at",
    "checksum",
    "model_file",
    "model_file_bytes",
}


def make_record(**overrides: Any) -> TrainingRecord:
    """A valid training record (from a real card) with ``overrides`` applied on top."""
    raw = json.loads(CARD_0_1_0.read_text())
    fields = {key: value for key, value in raw.items() if key not in _REGISTRY_FIELDS}
    return TrainingRecord.model_validate({**fields, **overrides})


class ClientFactory:
    """Apps over a home folder, each entered with its lifespan (as a server would run it)."""

    def __init__(self, home: Path, stack: contextlib.ExitStack) -> None:
        self.home = home
        self._stack = stack

    def __call__(self, raise_server_exceptions: bool = True, **settings: Any) -> TestClient:
        app = create_app(Settings(home=self.home, **settings))
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        return self._stack.enter_context(client)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty DACIAVISION_HOME for one test; modules override it with prepared ones."""
    return tmp_path


@pytest.fixture
def make_client(home: Path) -> Iterator[ClientFactory]:
    with contextlib.ExitStack() as stack:
        yield ClientFactory(home, stack)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


@pytest.fixture(autouse=True)
def _thaw_frozen_objects() -> Iterator[None]:
    """Undo the model cache's gc.freeze after each test, so a test's garbage is collected."""
    yield
    gc.unfreeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each Schemathesis operation its own node id (`test_x[POST /predict]`).

    Schemathesis names an item per operation, but under pytest 9 their node ids all
    read `test_x`: pytest-xdist's file scheduling keys its queue by node id, so it ran
    one operation per fuzz test and dropped the rest without a word.
    """
    for item in items:
        label = getattr(item, "operation_label", None)
        if label is not None and item._id.params is None:
            item._id = item._id.with_params(label)
