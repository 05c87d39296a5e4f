"""Redis job store, used when REDIS_URL is set (API and workers on several machines).

Layout under ``prefix``: ``{prefix}:job:{job_id}`` holds the job as JSON;
sorted sets scored by creation time (integer microseconds) index all jobs, the
jobs of each status and the jobs of each model, for listing and counting.
Every read-check-write runs in a WATCH/MULTI loop: if another process changes
the job between our read and our write, EXEC fails and we start over with the
new state, so two workers can never both claim a job.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

import redis
from redis.client import Pipeline

from . import base
from .models import JOB_STATUSES, Job, JobStatus


def client_with_timeouts(url: str, socket_timeout: float) -> redis.Redis:
    """A client for the stores. Explicit timeouts: without them a half-open connection
    blocks a request, a worker's lease renewal or a study's advance forever."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        health_check_interval=30,
    )


class StatusDocument(Protocol):
    """What ``StatusIndexedDocuments`` needs of a stored document: a job or a study."""

    @property
    def status(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...

    def model_dump_json(self) -> str: ...


DocumentT = TypeVar("DocumentT", bound=StatusDocument)


@dataclass(frozen=True)
class StatusIndexedDocuments(Generic[DocumentT]):
    """JSON documents, each also in a sorted set of its status, scored by creation time."""

    client: redis.Redis
    parse: Callable[[str | bytes], DocumentT]
    status_index: Callable[[str], str]
    missing: Callable[[str], Exception]

    def update(
        self,
        key: str,
        member: str,
        change: Callable[[DocumentT, datetime], DocumentT | None],
        clock: Callable[[], datetime],
    ) -> DocumentT | None:
        """Apply ``change`` to the document at ``key`` atomically; None from it means no write.

        ``member`` is the document's id in the status indexes. ``change`` gets the
        document and ``clock()``, read afresh on every try.
        """
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]  # redis-py leaves watch() unannotated
                    document = pipe.get(key)
                    if document is None:
                        raise self.missing(member)
                    current = self.parse(document)
                    updated = change(current, clock())
                    if updated is None:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.set(key, updated.model_dump_json())
                    if updated.status != current.status:
                        score = base.microseconds(current.created_at)
                        pipe.zrem(self.status_index(current.status), member)
                        pipe.zadd(self.status_index(updated.status), {member: score})
                    pipe.execute()
                    return updated
                except redis.WatchError:
                    continue  # changed meanwhile: decide again on the fresh state


class RedisJobStore(base.JobTransitions):
    """Job store in Redis, shared by API and worker processes on any machine."""

    def __init__(
        self,
        url: str,
        prefix: str = "daciavision",
        *,
        clock: base.Clock | None = None,
        socket_timeout: float = 5.0,
    ) -> None:
        self.client = client_with_timeouts(url, socket_timeout)
        self.prefix = prefix
        # Redis' clock, not this host's: leases are stamped by one machine and checked by
        # another, and clocks that differ by more than a lease would have a sweep take
        # back healthy jobs (or leave dead ones running).
        self.clock = clock or self._server_time
        self._documents = StatusIndexedDocuments(
            self.client, Job.model_validate_json, self._status_key, base.job_not_found
        )

    def _server_time(self) -> datetime:
        seconds, microseconds = self.client.time()
        return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=microseconds)

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _all_key(self) -> str:
        return f"{self.prefix}:jobs"

    def _status_key(self, status: str) -> str:
        return f"{self.prefix}:jobs:status:{status}"

    def _model_key(self, model_name: str) -> str:
        return f"{self.prefix}:jobs:model:{model_name}"

    def _update(self, job_id: str, change: Callable[[Job, datetime], Job | None]) -> Job | None:
        """Apply ``change`` to the stored job atomically; None from it means no write."""
        return self._documents.update(self._job_key(job_id), job_id, change, self.clock)

    def create(self, job: Job) -> None:
        """Store a new job; ConflictError if its id is taken."""
        key = self._job_key(job.job_id)
        score = base.microseconds(job.created_at)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]  # redis-py leaves watch() unannotated
                    if pipe.exists(key):
                        raise base.duplicate_job(job.job_id)
                    pipe.multi()
                    pipe.set(key, job.model_dump_json())
                    pipe.zadd(self._all_key(), {job.job_id: score})
                    pipe.zadd(self._status_key(job.status), {job.job_id: score})
                    pipe.zadd(self._model_key(job.model_name), {job.job_id: score})
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def get(self, job_id: str) -> Job:
        """The job with this id; JobNotFoundError if there is none."""
        document = self.client.get(self._job_key(job_id))
        if document is None:
            raise base.job_not_found(job_id)
        return Job.model_validate_json(document)

    def list(
        self,
        *,
        status: JobStatus | None = None,
        model_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and the number of jobs matching the filters."""
        if status is not None and model_name is not None:
            # Ascending by (score, id); reversed it matches ZREVRANGE's order.
            matching = self.client.zinter(
                [self._status_key(status), self._model_key(model_name)], aggregate="MIN"
            )
            newest_first = [str(job_id) for job_id in reversed(matching)]
            total = len(newest_first)
            page_ids = newest_first[offset : offset + limit] if limit > 0 else []
        else:
            if status is not None:
                index = self._status_key(status)
            elif model_name is not None:
                index = self._model_key(model_name)
            else:
                index = self._all_key()
            total = int(self.client.zcard(index))
            # ZREVRANGE's end is inclusive, and an end of -1 would mean "to the end".
            page_ids = (
                [str(job_id) for job_id in self.client.zrevrange(index, offset, offset + limit - 1)]
                if limit > 0
                else []
            )
        return self._load_many(page_ids), total

    def _load_many(self, job_ids: builtins.list[str]) -> builtins.list[Job]:
        if not job_ids:
            return []
        documents: builtins.list[Any] = self.client.mget([self._job_key(i) for i in job_ids])
        return [Job.model_validate_json(document) for document in documents if document]

    # builtins.list: inside the class body, plain ``list`` names the method above.
    def requeue_orphans(
        self, max_attempts: int = 3, published: base.PublishedVersion | None = None
    ) -> tuple[builtins.list[str], builtins.list[str]]:
        """Requeue or end running jobs whose lease expired; returns (requeued, ended) ids.

        Ended: succeeded if ``published`` finds the version the job registered, else
        failed after ``max_attempts``, or cancelled as was asked.
        """
        requeued: builtins.list[str] = []
        ended: builtins.list[str] = []
        for job_id in self.client.zrange(self._status_key("running"), 0, -1):
            # Each job is re-checked inside its own WATCH loop, so a worker that
            # renews its lease at this very moment keeps the job.
            recovered = self._update(
                str(job_id),
                lambda job, now: base.recovered_orphan(job, max_attempts, now, published),
            )
            if recovered is not None and recovered.status == "queued":
                requeued.append(recovered.job_id)
            elif recovered is not None:
                ended.append(recovered.job_id)
        return requeued, ended

    def jobs_to_send(self, resend_after_seconds: float) -> builtins.list[str]:
        """Queued jobs never sent or sent long ago, stamped as sent now; their ids."""
        due: builtins.list[str] = []
        for job_id in self.client.zrange(self._status_key("queued"), 0, -1):
            stamped = self._update(
                str(job_id),
                lambda job, now: base.due_for_sending(job, resend_after_seconds, now),
            )
            if stamped is not None:
                due.append(stamped.job_id)
        return due

    def count_by_status(self) -> dict[str, int]:
        """Number of jobs in each status, zeros included."""
        pipe: Pipeline = self.client.pipeline()
        for status in JOB_STATUSES:
            pipe.zcard(self._status_key(status))
        counts = pipe.execute()
        return {status: int(count) for status, count in zip(JOB_STATUSES, counts, strict=True)}

    def ping(self) -> None:
        """Raise redis.ConnectionError if the server cannot be reached."""
        self.client.ping()

    def close(self) -> None:
        """Release the connection pool."""
        self.client.close()
