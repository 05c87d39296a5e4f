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
