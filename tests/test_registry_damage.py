"""A damaged registry never answers 500: broken files give a stable code, the rest serves.

Also the alias files' shape: the current aliases apart from a bounded history, the
0.1.0 layout still read, and alias moves excluded across hosts through Redis.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import multiprocessing
import shutil
import warnings
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.locks import redis_alias_lock
from tests.conftest import ClientFactory, make_record
from tests.workers import ensure_redis, redis_url
from trainer.aliases import ALIASES_FILE, HISTORY_FILE
from trainer.errors import CorruptModelError
from trainer.registry import FileModelRegistry

MODEL = "damaged"
SPAWN = multiprocessing.get_context("spawn")
REDIS_URL = redis_url("registry_damage")
PIXELS = np.zeros((28, 28), dtype=int).tolist()


def _save_tiny_model(path: Path) -> None:
    import keras

    from trainer.architectures import build_model
    from trainer.architectures.custom_cnn import CustomCnnHyperparameters

    keras.utils.set_random_seed(3)
    hyperparameters = CustomCnnHyperparameters(filters1=2, filters2=2, dense_units=4)
    model = build_model("custom_cnn", hyperparameters, (28, 28, 1), 10)
    with warnings.catch_warnings():  # Keras 3 + NumPy 2 warn inside Keras' saving code
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        model.save(path)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.keras"
    _save_tiny_model(path)
    return path


@pytest.fixture
def home(tmp_path: Path, model_file: Path) -> Path:
    registry = FileModelRegistry(tmp_path / "registry")
    for _ in range(3):
        registry.register(MODEL, lambda path: shutil.copyfile(model_file, path), make_record())
    registry.set_alias(MODEL, "production", 2)
    return tmp_path


def _predict(client: TestClient, version: str | None = None) -> tuple[int, str | None]:
    params = {"model_name": MODEL, **({"version": version} if version else {})}
    response = client.post("/predict", params=params, json={"instances": [PIXELS]})
    code = response.json().get("detail", {}).get("code") if response.is_error else None
    return response.status_code, code


@pytest.mark.parametrize(
    "damage", [b"", b'{"aliases": {"production": ', b"[1, 2]", b'{"aliases": {"p": "two"}}']
)
def test_a_corrupt_aliases_file_is_503_for_aliases_and_versions_keep_serving(
    make_client: ClientFactory, home: Path, damage: bytes
) -> None:
    client = make_client(raise_server_exceptions=False)
    assert _predict(client) == (200, None)
    (home / "registry" / MODEL / ALIASES_FILE).write_bytes(damage)

    assert _predict(client) == (503, "corrupt_model"), "production cannot be known"
    assert _predict(client, "production") == (503, "corrupt_model")
    assert _predict(client, "3") == (200, None), "numbered versions keep serving"
    listing = client.get("/models")
    assert listing.status_code == 200 and listing.json()[0]["versions"] == [1, 2, 3]
    response = client.put(f"/models/{MODEL}/aliases/production", json={"version": 1})
    assert (response.status_code, response.json()["detail"]["code"]) == (503, "corrupt_model")
    message = response.json()["detail"]["message"]
    assert "aliases.json is unreadable" in message or "does not map" in message
    assert str(home) not in message, "no absolute paths in errors"


@pytest.mark.parametrize("damage", ["truncated", "missing", "wrong-shape"])
def test_a_broken_card_is_503_for_its_version_only(
    make_client: ClientFactory, home: Path, damage: str
) -> None:
    client = make_client(raise_server_exceptions=False)
    card = home / "registry" / MODEL / "2" / "card.json"
    if damage == "truncated":
        card.write_bytes(card.read_bytes()[:100])
    elif damage == "missing":
        card.unlink()
    else:
        card.write_text(json.dumps({"metrics": "none"}))

    for path in (f"/models/{MODEL}/versions/2", "/metrics?model_name=damaged&version=2"):
        response = client.get(path)
        assert (response.status_code, response.json()["detail"]["code"]) == (503, "corrupt_model")
        assert str(home) not in response.json()["detail"]["message"]
    assert _predict(client) == (503, "corrupt_model"), "production is version 2"
    assert _predict(client, "1") == (200, None)
    assert client.get(f"/models/{MODEL}/versions/3").status_code == 200
    versions = client.get(f"/models/{MODEL}").json()["versions"]
    assert [(entry["version"], entry["corrupt"]) for entry in versions] == [
        (1, False),
        (2, True),
        (3, False),
    ]


def test_alias_history_is_bounded_per_alias_and_kept_apart(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path, alias_history_limit=5)
    for _ in range(3):
        registry.register("m", lambda path: path.write_bytes(b"x"), make_record())
    for index in range(12):
        registry.set_alias("m", "production", 1 + index % 3)
    registry.set_alias("m", "staging", 3)

    history = registry.alias_history("m", "production")
    assert len(history) == 5, "only the 5 most recent moves are kept"
    assert [change.to_version for change in history] == [2, 3, 1, 2, 3]
    assert len(registry.alias_history("m", "staging")) == 1, "each alias has its own bound"
    current = json.loads((tmp_path / "m" / ALIASES_FILE).read_text())
    assert current == {"aliases": {"production": 3, "staging": 3}}, "no history in it"
    assert registry.rollback_alias("m", "production").to_version == 2


def test_the_0_1_0_alias_file_with_its_history_still_works(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    for _ in range(2):
        registry.register("m", lambda path: path.write_bytes(b"x"), make_record())
    legacy = {
        "aliases": {"production": 2},
        "history": [
            {"alias": "production", "from_version": None, "to_version": 1, "changed_at": "t1"},
            {"alias": "production", "from_version": 1, "to_version": 2, "changed_at": "t2"},
        ],
    }
    (tmp_path / "m" / ALIASES_FILE).write_text(json.dumps(legacy))

    assert registry.resolve("m") == 2
    assert [c.to_version for c in registry.alias_history("m", "production")] == [1, 2]
    assert registry.rollback_alias("m", "production").to_version == 1
    assert json.loads((tmp_path / "m" / ALIASES_FILE).read_text()) == {"aliases": {"production": 1}}
    assert len(json.loads((tmp_path / "m" / HISTORY_FILE).read_text())) == 3


def _move_without_flock(root: str, alias_lock_url: str, moves: int, barrier: Barrier) -> None:
    # A shared volume where flock excludes nothing across hosts: only Redis can.
    fcntl.flock = lambda descriptor, operation: None
    registry = FileModelRegistry(Path(root), shared_lock=redis_alias_lock(alias_lock_url))
    barrier.wait(timeout=60)
    for index in range(moves):
        registry.set_alias("shared", "production", 1 + index % 2)


def test_alias_moves_from_two_hosts_are_serialised_through_redis(tmp_path: Path) -> None:
    ensure_redis()
    redis.Redis.from_url(REDIS_URL).flushdb()
    registry = FileModelRegistry(tmp_path / "registry")
    for _ in range(2):
        registry.register("shared", lambda path: path.write_bytes(b"x"), make_record())
    moves, barrier = 20, SPAWN.Barrier(2)
    arguments = (str(registry.root), REDIS_URL, moves, barrier)
    hosts = [SPAWN.Process(target=_move_without_flock, args=arguments) for _ in range(2)]
    for host in hosts:
        host.start()
    for host in hosts:
        host.join(120)
        assert host.exitcode == 0

    history = registry.alias_history("shared", "production")
    # A move that found the alias already there is not recorded, so there may be fewer
    # entries than moves; but every recorded move saw the one before it.
    assert moves <= len(history) <= 2 * moves
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version


def test_the_registry_raises_corrupt_model_for_an_unreadable_history(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    registry.register("m", lambda path: path.write_bytes(b"x"), make_record())
    registry.set_alias("m", "production", 1)
    (tmp_path / "m" / HISTORY_FILE).write_text('[{"alias": 3}]')
    with pytest.raises(CorruptModelError, match="alias history is unreadable"):
        registry.alias_history("m", "production")
    assert registry.resolve("m") == 1, "resolving needs only the current aliases"
