"""Durable file helpers shared by everything that writes state to disk.

The registry, its aliases and reports publish by "write a temporary file, fsync,
rename": a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def utc_now() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def utc_timestamp() -> str:
    """The current time as an ISO 8601 string in UTC."""
    return utc_now().isoformat()


def sha256_of_file(path: Path) -> str:
    """The file's SHA-256 as hex, as model cards record it."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# What os.stat says of a file that changes whenever its content, name or links do:
# device, inode, size, modification and change time (ns), link count. The change time is
# the kernel's, moved by every write, rename and `touch`, and no user can set it back.
FileStamp = tuple[int, int, int, int, int, int]


def file_stamp(path: str | os.PathLike[str]) -> FileStamp | None:
    """The file's stamp, None if there is none; equal stamps mean an unchanged file,
    once the file is older than a tick of its file system's clock (``newest_change_ns``)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
        status.st_nlink,
    )


def newest_change_ns(stamp: FileStamp) -> int:
    """When the stamped file last changed, in nanoseconds since the epoch."""
    return max(stamp[3], stamp[4])


def fsync_path(path: Path) -> None:
    """Flush a file or directory to disk."""
    # Directories too: a new entry or a rename survives a power cut only once its parent is synced.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, all at once and durably."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_json_atomically(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON, all at once and durably."""
    write_bytes_atomically(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
