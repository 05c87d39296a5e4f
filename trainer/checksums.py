"""Files' SHA-256s, each remembered until the file's status says it may have changed.

A download, a ``HEAD`` or a 304 answer checks the model file against its card before
it vouches for the file, and a model file runs to hundreds of megabytes: hashing it for
every request made a client that polls for a new version (``If-None-Match``) read the
whole file each time. As git's index and rsync do, a digest is trusted again while the
file's status is unchanged: its device, inode, size, modification time and change time.
The change time is the kernel's, moved by every write and every ``touch``, so a file
rewritten in place with its old modification time restored still reads as changed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from trainer.files import sha256_of_file

# File times tick coarsely (milliseconds on ext4), so a change made in the same tick as
# the hashing could leave the status unchanged: a digest is remembered only once its
# file is this much older than the hashing, as git treats a "racy" index entry.
SETTLE_NS = 2_000_000_000
# Far more model versions than one server serves, and a few hundred bytes each.
LIMIT = 4096

_Status = tuple[int, int, int, int, int]


def _status(path: Path) -> _Status:
    status = os.stat(path)
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


class ChecksumMemo:
    """``sha256(path)`` that hashes a file again only if its status changed since."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._known: OrderedDict[Path, tuple[_Status, str]] = OrderedDict()
        self._lock = threading.Lock()  # the API's request threads share one registry

    def sha256(self, path: Path) -> str:
        """The file's SHA-256 as hex; OSError if it cannot be read."""
        before = _status(path)
        with self._lock:
            known = self._known.get(path)
            if known is not None and known[0] == before:
                self._known.move_to_end(path)
                return known[1]
        digest = sha256_of_file(path)
        settled = time.time_ns() - max(before[3], before[4]) > SETTLE_NS
        if settled and _status(path) == before:
            with self._lock:
                self._known[path] = (before, digest)
                self._known.move_to_end(path)
                while len(self._known) > self._limit:
                    self._known.popitem(last=False)
        return digest
