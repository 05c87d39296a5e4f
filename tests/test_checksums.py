"""A model file is hashed again only when its status says it may have changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.test_registry import register_versions
from trainer import checksums
from trainer.checksums import ChecksumMemo
from trainer.errors import CorruptModelError
from trainer.files import sha256_of_file
from trainer.registry import FileModelRegistry


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files actually read and hashed, in order."""
    read: list[Path] = []
    original = sha256_of_file

    def counting(path: Path) -> str:
        read.append(path)
        return original(path)

    monkeypatch.setattr(checksums, "sha256_of_file", counting)
    return read


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    # Files written by a test are milliseconds old; a real model file is minutes old.
    monkeypatch.setattr(checksums, "SETTLE_NS", 0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.usefixtures("settled")
def test_an_unchanged_file_is_hashed_once(tmp_path: Path, hashed: list[Path]) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(b"weights")
    memo = ChecksumMemo()
    assert [memo.sha256(path) for _ in range(3)] == [sha256(b"weights")] * 3
    assert hashed == [path]


@pytest.mark.usefixtures("settled")
def test_a_file_rewritten_in_place_with_its_old_times_is_hashed_again(tmp_path: Path) -> None:
    # Same inode, same size, modification time put back as `touch -d` would: only the
    # change time, which no user can set, tells the new content from the old.
    path = tmp_path / "model.keras"
    path.write_bytes(b"weights")
    before = path.stat()
    memo = ChecksumMemo()
    memo.sha256(path)
    with path.open("r+b") as file:
        file.write(b"WEIGHTS")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert memo.sha256(path) == sha256(b"WEIGHTS")


def test_a_file_just_written_is_hashed_every_time(tmp_path: Path, hashed: list[Path]) -> None:
    # It could change again within the same tick of the file system's clock.
    path = tmp_path / "model.keras"
    path.write_bytes(b"weights")
    memo = ChecksumMemo()
    memo.sha256(path)
    memo.sha256(path)
    assert hashed == [path, path]


@pytest.mark.usefixtures("settled")
def test_the_memo_keeps_the_most_recently_used_files(tmp_path: Path, hashed: list[Path]) -> None:
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for path in (first, second, third):
        path.write_bytes(path.name.encode())
    memo = ChecksumMemo(limit=2)
    for path in (first, second, first, third, first, second):
        memo.sha256(path)
    # `third` pushed out `second`, the least recently used; `first` stayed.
    assert hashed == [first, second, third, second]


@pytest.mark.usefixtures("settled")
def test_the_registry_vouches_for_a_file_without_reading_it_again(
    tmp_path: Path, hashed: list[Path]
) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    register_versions(registry, "m", 1)
    checksum = registry.verify_checksum("m", 1)
    assert registry.verify_checksum("m", 1) == checksum
    assert hashed == [registry.model_path("m", 1)]
    # A changed file is still refused.
    registry.model_path("m", 1).write_bytes(b"tampered")
    with pytest.raises(CorruptModelError, match="sha256"):
        registry.verify_checksum("m", 1)
