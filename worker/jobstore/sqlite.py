"""SQLite job store for embedded mode: one machine, several processes, no server.

The API and each worker process open the same file (``worker.sqlite_file`` says how
they share it); every read-check-write runs in one write transaction.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from trainer.files import utc_now
from worker.sqlite_file import SharedSqliteFile

from . import base
from .models import JOB_STATUSES, Job, JobStatus

# The job itself is stored as JSON; the other columns exist only so that
# listing, filtering and counting can use indexes.
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    model_name TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at_us DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at_us DESC);
CREATE INDEX IF NOT EXISTS jobs_by_model ON jobs (model_name, created_at_us DESC);
"""


class SqliteJobStore(base.JobTransitions):
    """Job store in one SQLite file, shared by the API and worker processes."""

    def __init__(self, path: Path, *, clock: base.Clock = utc_now) -> None:
        self.database = SharedSqliteFile(path, SCHEMA)
        self.clock = clock

    @staticmethod
    def _load(connection: sqlite3.Connection, job_id: str) -> Job:
        row = connection.execute("SELECT document FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise base.job_not_found(job_id)
        return Job.model_validate_json(row[0])

    @staticmethod
    def _save(connection: sqlite3.Connection, job: Job) -> None:
        connection.execute(
            "UPDATE jobs SET status = ?, model_name = ?, document = ? WHERE job_id = ?",
            (job.status, job.model_name, job.model_dump_json(), job.job_id),
        )

    def _update(self, job_id: str, change: Callable[[Job, datetime], Job | None]) -> Job | None:
        """Apply ``change`` to the stored job atomically; None from it means no write."""
        with self.database.writing() as connection:
            updated = change(self._load(connection, job_id), self.clock())
            if updated is not None:
                self._save(connection, updated)
            return updated

    def create(self, job: Job) -> None:
        """Store a new job; ConflictError if its id is taken."""
        try:
            with self.database.writing() as connection:
                connection.execute(
                    "INSERT INTO jobs (job_id, status, model_name, created_at_us, document)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        job.job_id,
                        job.status,
                        job.model_name,
                        base.microseconds(job.created_at),
                        job.model_dump_json(),
                    ),
                )
        except sqlite3.IntegrityError as error:
            raise base.duplicate_job(job.job_id) from error

    def get(self, job_id: str) -> Job:
        """The job with this id; JobNotFoundError if there is none."""
        with self.database.reading() as connection:
            return self._load(connection, job_id)

    def list(
        self,
        *,
        status: JobStatus | None = None,
        model_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and the number of jobs matching the filters."""
        conditions: list[str] = []
        parameters: list[Any] = []
        if status is not None:
            conditions.append("status = ?")
            parameters.append(status)
        if model_name is not None:
            conditions.append("model_name = ?")
            parameters.append(model_name)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        # One read transaction so the page and the total describe the same snapshot.
        with self.database.reading() as connection:
            connection.execute("BEGIN")
            total = connection.execute(f"SELECT COUNT(*) FROM jobs {where}", parameters).fetchone()
            rows = connection.execute(
                f"SELECT document FROM jobs {where}"
                " ORDER BY created_at_us DESC, job_id DESC LIMIT ? OFFSET ?",
                [*parameters, limit, offset],
            ).fetchall()
            connection.execute("COMMIT")
        return [Job.model_validate_json(row[0]) for row in rows], int(total[0])

    # builtins.list: inside the class body, plain ``list`` names the method above.
    def requeue_orphans(
        self, max_attempts: int = 3, published: base.PublishedVersion | None = None
    ) -> tuple[builtins.list[str], builtins.list[str]]:
        """Requeue or end running jobs whose lease expired; returns (requeued, ended) ids.

        Ended: succeeded if ``published`` finds the version the job registered, else
        failed after ``max_attempts``, or cancelled as was asked.
        """
        requeued: list[str] = []
        ended: list[str] = []
        with self.database.writing() as connection:
            now = self.clock()
            rows = connection.execute(
                "SELECT document FROM jobs WHERE status = 'running'"
            ).fetchall()
            for (document,) in rows:
                recovered = base.recovered_orphan(
                    Job.model_validate_json(document), max_attempts, now, published
                )
                if recovered is None:
                    continue
                self._save(connection, recovered)
                if recovered.status == "queued":
                    requeued.append(recovered.job_id)
                else:
                    ended.append(recovered.job_id)
        return requeued, ended

    def jobs_to_send(self, resend_after_seconds: float) -> builtins.list[str]:
        """Queued jobs never sent or sent long ago, stamped as sent now; their ids."""
        due: list[str] = []
        with self.database.writing() as connection:
            now = self.clock()
            rows = connection.execute("SELECT document FROM jobs WHERE status = 'queued'")
            for (document,) in rows.fetchall():
                stamped = base.due_for_sending(
                    Job.model_validate_json(document), resend_after_seconds, now
                )
                if stamped is not None:
                    self._save(connection, stamped)
                    due.append(stamped.job_id)
        return due

    def count_by_status(self) -> dict[str, int]:
        """Number of jobs in each status, zeros included."""
        with self.database.reading() as connection:
            rows = connection.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
            counts: dict[str, int] = dict.fromkeys(JOB_STATUSES, 0)
            counts.update({status: int(count) for status, count in rows})
        return counts

    def ping(self) -> None:
        """Raise if the database file cannot be read."""
        with self.database.reading() as connection:
            connection.execute("SELECT COUNT(*) FROM jobs").fetchone()

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own connection."""
