"""The registry's resolve cache: hits read no file, and every change is seen in time.

Changes made through the cache's own registry object are seen at once; changes made
by another process (here: another registry object on the same folder) at once by
default, and within ``resolve_recheck_seconds`` where that is set, as the API does.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import make_record
from trainer import registry as registry_module
from trainer.aliases import AliasStore
from trainer.errors import AliasNotFoundError, VersionNotFoundError
from trainer.registry import FileModelRegistry

MODEL = "cached"


def register(registry: FileModelRegistry) -> int:
    return registry.register(MODEL, lambda path: path.write_bytes(b"weights"), make_record())


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileModelRegistry:
    # Remember resolutions at once: these tests change files within one clock tick on
    # purpose, to show that the stamps tell the changes apart without the settle time.
    monkeypatch.setattr(registry_module, "RESOLVE_CACHE_SETTLE_NS", 0)
    registry = FileModelRegistry(tmp_path / "registry")
    register(registry)
    register(registry)
    return registry


@pytest.fixture(params=["this process", "another process"])
def changer(request: pytest.FixtureRequest, registry: FileModelRegistry) -> FileModelRegistry:
    """Who changes the files: the cache's own registry, or another one on the same folder."""
    if request.param == "this process":
        return registry
    return FileModelRegistry(registry.root)


def test_a_hit_reads_no_file(registry: FileModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.set_alias(MODEL, "production", 1)
    assert registry.resolve_if_cached(MODEL, "production") is None  # never resolved yet
    assert registry.resolve(MODEL, "production") == 1
    assert registry.resolve(MODEL, None) == 1

    def no_reading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit read a file")

    monkeypatch.setattr(AliasStore, "_read_json", no_reading)
    monkeypatch.setattr(FileModelRegistry, "_live_versions", no_reading)
    assert registry.resolve_if_cached(MODEL, "production") == 1
    assert registry.resolve_if_cached(MODEL, None) == 1


def test_alias_moves_are_seen_at_once(
    registry: FileModelRegistry, changer: FileModelRegistry
) -> None:
    registry.set_alias(MODEL, "production", 1)
    assert registry.resolve(MODEL, "production") == 1
    assert registry.resolve_if_cached(MODEL, "production") == 1
    changer.set_alias(MODEL, "production", 2)
    assert registry.resolve_if_cached(MODEL, "production") is None
    assert registry.resolve(MODEL, "production") == 2
    changer.delete_alias(MODEL, "production")
    assert registry.resolve_if_cached(MODEL, "production") is None
    with pytest.raises(AliasNotFoundError):
        registry.resolve(MODEL, "production")
    # Without a production alias, None means the latest version again.
    assert registry.resolve(MODEL, None) == 2


def test_new_versions_are_seen_at_once(
    registry: FileModelRegistry, changer: FileModelRegistry
) -> None:
    assert registry.resolve(MODEL, None) == 2
    assert registry.resolve_if_cached(MODEL, None) == 2
    assert register(changer) == 3
    assert registry.resolve_if_cached(MODEL, None) is None
    assert registry.resolve(MODEL, None) == 3


def test_deleted_versions_are_seen_at_once(
    registry: FileModelRegistry, changer: FileModelRegistry
) -> None:
    assert registry.resolve(MODEL, "1") == 1
    assert registry.resolve_if_cached(MODEL, "1") == 1
    changer.delete_version(MODEL, 1)
    assert registry.resolve_if_cached(MODEL, "1") is None
    with pytest.raises(VersionNotFoundError):
        registry.resolve(MODEL, "1")


def test_fresh_files_are_not_remembered(
    registry: FileModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the real settle time, a resolution of files written just now is not cached:
    # a second change within the same clock tick could otherwise go unnoticed.
    monkeypatch.setattr(registry_module, "RESOLVE_CACHE_SETTLE_NS", 10**12)
    registry.set_alias(MODEL, "production", 2)
    assert registry.resolve(MODEL, "production") == 2
    assert registry.resolve_if_cached(MODEL, "production") is None


def test_unknown_references_are_never_cached(registry: FileModelRegistry) -> None:
    with pytest.raises(AliasNotFoundError):
        registry.resolve(MODEL, "staging")
    assert registry.resolve_if_cached(MODEL, "staging") is None
    assert registry.resolve_if_cached("other", None) is None


def test_within_the_recheck_time_a_hit_touches_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "RESOLVE_CACHE_SETTLE_NS", 0)
    clock = [1000.0]
    fake_time = SimpleNamespace(monotonic=lambda: clock[0], time_ns=time.time_ns)
    monkeypatch.setattr(registry_module, "time", fake_time)
    registry = FileModelRegistry(tmp_path / "registry", resolve_recheck_seconds=5)
    register(registry)
    register(registry)
    registry.set_alias(MODEL, "production", 1)
    assert registry.resolve(MODEL, "production") == 1
    FileModelRegistry(registry.root).set_alias(MODEL, "production", 2)

    def no_stat(path: str) -> None:
        raise AssertionError(f"a hit within the recheck time looked at {path}")

    with monkeypatch.context() as within:
        within.setattr(registry_module, "file_stamp", no_stat)
        clock[0] += 4.9
        # Another process's move is not seen yet: the answer is 4.9 s old.
        assert registry.resolve_if_cached(MODEL, "production") == 1
    clock[0] += 0.1
    assert registry.resolve_if_cached(MODEL, "production") is None
    assert registry.resolve(MODEL, "production") == 2
    # A move through this object is seen at once, recheck time or not.
    registry.set_alias(MODEL, "production", 1)
    assert registry.resolve_if_cached(MODEL, "production") is None
    assert registry.resolve(MODEL, "production") == 1
    # An unchanged answer, rechecked, is trusted for another recheck time.
    clock[0] += 5
    assert registry.resolve_if_cached(MODEL, "production") == 1
    with monkeypatch.context() as within:
        within.setattr(registry_module, "file_stamp", no_stat)
        clock[0] += 4.9
        assert registry.resolve_if_cached(MODEL, "production") == 1
