"""Redis study store: ``{prefix}:study:{id}`` as JSON, a sorted set per status and one of all."""

from __future__ import annotations

import builtins

import redis

from trainer.errors import ConflictError
from trainer.files import utc_now
from worker.jobstore import base as job_base
from worker.jobstore.redis import StatusIndexedDocuments, client_with_timeouts

from . import base
from .models import Study, StudyStatus


class RedisStudyStore:
    """Studies in the Redis that holds the jobs; every change in a WATCH/MULTI loop."""

    def __init__(
        self,
        url: str,
        prefix: str = "daciavision",
        *,
        clock: job_base.Clock = utc_now,
        socket_timeout: float = 5.0,
    ) -> None:
        self.client = client_with_timeouts(url, socket_timeout)
        self.prefix = prefix
        self.clock = clock
        self._documents = StatusIndexedDocuments(
            self.client, Study.model_validate_json, self._index, base.study_not_found
        )

    def _key(self, study_id: str) -> str:
        return f"{self.prefix}:study:{study_id}"

    def _index(self, status: str | None = None) -> str:
        return f"{self.prefix}:studies" + (f":status:{status}" if status else "")

    def create(self, study: Study) -> None:
        """Store a new study; ConflictError if its id is taken."""
        key = self._key(study.study_id)
        score = job_base.microseconds(study.created_at)
        # The document and its indexes in one transaction: a study stored but not
        # indexed would never be listed, nor advanced by a worker's start.
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]  # untyped in redis-py
                    if pipe.exists(key):
                        raise ConflictError(f"Study {study.study_id!r} already exists")
                    pipe.multi()
                    pipe.set(key, study.model_dump_json())
                    pipe.zadd(self._index(), {study.study_id: score})
                    pipe.zadd(self._index(study.status), {study.study_id: score})
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue  # created meanwhile: the next look sees it

    def get(self, study_id: str) -> Study:
        """The study with this id; StudyNotFoundError if there is none."""
        document = self.client.get(self._key(study_id))
        if document is None:
            raise base.study_not_found(study_id)
        return Study.model_validate_json(document)

    def update(self, study_id: str, change: base.Change) -> Study | None:
        """Apply ``change`` atomically; None from it means no write."""
        return self._documents.update(self._key(study_id), study_id, change, self.clock)

    def list(
        self, *, status: StudyStatus | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[builtins.list[Study], int]:
        """One page of studies, newest first, and how many match."""
        index = self._index(status)
        total = int(self.client.zcard(index))
        ids = [str(i) for i in self.client.zrevrange(index, offset, offset + limit - 1)]
        documents = self.client.mget([self._key(i) for i in ids]) if ids else []
        return [Study.model_validate_json(d) for d in documents if d], total

    def close(self) -> None:
        """Release the connection pool."""
        self.client.close()
