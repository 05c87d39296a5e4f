"""One SQLite file shared by several processes: the embedded mode's job and study stores.

The API and each worker process open the same file. WAL mode lets readers run while
one writer commits; ``busy_timeout`` makes a writer wait for the lock instead of
failing; ``BEGIN IMMEDIATE`` takes the write lock before reading, so a
read-check-write sequence cannot interleave with another process's. A new connection
per operation keeps a store safe to share between threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

BUSY_TIMEOUT_SECONDS = 30.0


class SharedSqliteFile:
    """The file at ``path``, with ``schema`` applied (idempotent DDL) when opened."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.reading() as connection:
            # WAL is a property of the database file, so setting it once suffices.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(schema)

    def connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, callers issue BEGIN themselves.
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
        return connection

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own, closed afterwards; the caller begins a transaction if any."""
        with closing(self.connect()) as connection:
            yield connection

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A connection inside a write transaction: committed at the end, rolled back on error."""
        with closing(self.connect()) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
