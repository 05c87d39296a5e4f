"""SQLite study store for embedded mode: a table beside the jobs, in the same file."""

from __future__ import annotations

import builtins
import sqlite3
from pathlib import Path
from typing import Any

from trainer.errors import ConflictError
from trainer.files import utc_now
from worker.jobstore import base as job_base
from worker.sqlite_file import SharedSqliteFile

from . import base
from .models import Study, StudyStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_by_created ON studies (created_at_us DESC, study_id DESC);
"""


class SqliteStudyStore:
    """Studies in the embedded SQLite file the job store uses."""

    def __init__(self, path: Path, *, clock: job_base.Clock = utc_now) -> None:
        self.database = SharedSqliteFile(path, SCHEMA)
        self.clock = clock

    @staticmethod
    def _load(connection: sqlite3.Connection, study_id: str) -> Study:
        row = connection.execute(
            "SELECT document FROM studies WHERE study_id = ?", (study_id,)
        ).fetchone()
        if row is None:
            raise base.study_not_found(study_id)
        return Study.model_validate_json(row[0])

    def create(self, study: Study) -> None:
        """Store a new study; ConflictError if its id is taken."""
        try:
            with self.database.writing() as connection:
                connection.execute(
                    "INSERT INTO studies (study_id, status, created_at_us, document)"
                    " VALUES (?, ?, ?, ?)",
                    (
                        study.study_id,
                        study.status,
                        job_base.microseconds(study.created_at),
                        study.model_dump_json(),
                    ),
                )
        except sqlite3.IntegrityError as error:
            raise ConflictError(f"Study {study.study_id!r} already exists") from error

    def get(self, study_id: str) -> Study:
        """The study with this id; StudyNotFoundError if there is none."""
        with self.database.reading() as connection:
            return self._load(connection, study_id)

    def update(self, study_id: str, change: base.Change) -> Study | None:
        """Apply ``change`` atomically; None from it means no write."""
        with self.database.writing() as connection:
            updated = change(self._load(connection, study_id), self.clock())
            if updated is not None:
                connection.execute(
                    "UPDATE studies SET status = ?, document = ? WHERE study_id = ?",
                    (updated.status, updated.model_dump_json(), study_id),
                )
            return updated

    def list(
        self, *, status: StudyStatus | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[builtins.list[Study], int]:
        """One page of studies, newest first, and how many match."""
        where, parameters = ("WHERE status = ?", [status]) if status else ("", [])
        with self.database.reading() as connection:
            connection.execute("BEGIN")
            total = connection.execute(f"SELECT COUNT(*) FROM studies {where}", parameters)
            count = int(total.fetchone()[0])
            rows: Any = connection.execute(
                f"SELECT document FROM studies {where}"
                " ORDER BY created_at_us DESC, study_id DESC LIMIT ? OFFSET ?",
                [*parameters, limit, offset],
            ).fetchall()
            connection.execute("COMMIT")
        return [Study.model_validate_json(row[0]) for row in rows], count

    def close(self) -> None:
        """Nothing to release: every operation opens its own connection."""
