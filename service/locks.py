"""A lock every API host shares, for alias moves on a registry several hosts write.

``flock`` excludes processes of one host; on a shared volume it may exclude nothing
across hosts. With ``REDIS_URL`` set, alias moves also take a Redis lock per model, so
two hosts never interleave a read-modify-write of the same alias files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis
from redis.exceptions import LockError, RedisError

from trainer.aliases import SharedLock
from trainer.errors import ConflictError

# A move holds the lock for milliseconds; the expiry only matters if a host dies holding it.
_LOCK_EXPIRY_SECONDS = 30
_WAIT_SECONDS = 10


def redis_alias_lock(redis_url: str, prefix: str = "daciavision") -> SharedLock:
    """A per-model lock in Redis, for FileModelRegistry(shared_lock=...)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)

    @contextlib.contextmanager
    def lock(model_name: str) -> Iterator[object]:
        held = client.lock(
            f"{prefix}:alias-lock:{model_name}",
            timeout=_LOCK_EXPIRY_SECONDS,
            blocking_timeout=_WAIT_SECONDS,
        )
        try:
            acquired = held.acquire()
        except RedisError as error:
            message = f"the alias lock for model {model_name!r} is unavailable ({error}); retry"
            raise ConflictError(message, model_name=model_name) from None
        if not acquired:
            message = f"another host is changing the aliases of model {model_name!r}; retry"
            raise ConflictError(message, model_name=model_name)
        try:
            yield held
        finally:
            with contextlib.suppress(LockError):  # expired meanwhile: nothing left to release
                held.release()

    return lock
