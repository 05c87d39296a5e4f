"""Files' SHA-256s, each remembered until the file's status says it may have changed.

A download, a ``HEAD`` or a 304 answer checks the model file against its card before
it vouches for the file, and a model file runs to hundreds of megabytes: hashing it for
every request made a client that polls for a new version (``If-None-Match``) read the
whole file each time. As git's index and rsync do, a digest is trusted again while the
file's stamp (``trainer.files.file_stamp``) is unchanged. The stamp holds the change
time, the kernel's, so a file rewritten in place with its old modification time
restored still reads as changed.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

from trainer.files import FileStamp, file_stamp, newest_change_ns, sha256_of_file

# File times tick coarsely, so a change made in the same tick as the hashing could leave
# the stamp unchanged: a digest is remembered only once its file is this much older than
# the hashing, as git treats a "racy" index entry. Two seconds, not the registry's 100 ms
# for its small files: a model folder may sit on a share or volume whose times tick in
# seconds, and a model file is minutes old by the time anyone downloads it.
SETTLE_NS = 2_000_000_000
# Far more model versions than one server serves, and a few hundred bytes each.
LIMIT = 4096


class ChecksumMemo:
    """``sha256(path)`` that hashes a file again only if its status changed since."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._known: OrderedDict[Path, tuple[FileStamp, str]] = OrderedDict()
        self._lock = threading.Lock()  # the API's request threads share one registry

    def sha256(self, path: Path) -> str:
        """The file's SHA-256 as hex; OSError if it cannot be read."""
        before = file_stamp(path)
        with self._lock:
            known = self._known.get(path)
            if before is not None and known is not None and known[0] == before:
                self._known.move_to_end(path)
                return known[1]
        digest = sha256_of_file(path)  # OSError if it is gone
        if before is None or time.time_ns() - newest_change_ns(before) <= SETTLE_NS:
            return digest
        if file_stamp(path) == before:
            with self._lock:
                self._known[path] = (before, digest)
                self._known.move_to_end(path)
                while len(self._known) > self._limit:
                    self._known.popitem(last=False)
        return digest
