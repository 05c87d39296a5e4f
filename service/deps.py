"""Dependencies: typed ``Annotated`` aliases the routes declare, swapped in tests.

The long-lived parts (registry, job store, Celery client, model cache) are
built once per app in ``Services`` and reached through ``request.app.state``.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

from celery import Celery
from fastapi import Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from kombu.exceptions import OperationalError

from service.admission import RequestLimiter
from service.batching import BatchingOptions
from service.errors import BrokerUnavailableError
from service.locks import redis_alias_lock
from service.model_cache import ModelCache
from service.schemas import MODEL_NAME_DOC, VERSION_DOC
from service.security import Keyring, parse_api_keys
from trainer.registry import FileModelRegistry
from trainer.spec_base import MAX_VERSION
from worker.app import create_celery_app, enqueue_training
from worker.jobstore import JobStore, open_job_store
from worker.settings import Settings
from worker.studies import StudyStore
from worker.studies.runtime import study_store_for

logger = logging.getLogger(__name__)


class JobDispatcher:
    """Sends jobs to the workers by task name; the service never imports the tasks."""

    def __init__(self, celery_app: Celery) -> None:
        self.celery_app = celery_app

    def enqueue(self, job_id: str) -> None:
        try:
            enqueue_training(self.celery_app, job_id)
        except (OperationalError, OSError) as error:
            # The driver's text names hosts and ports: log it, tell the client only what.
            logger.warning("could not enqueue job %s: %s", job_id, error)
            raise BrokerUnavailableError(
                "the job queue is unreachable; the job was not queued, retry later"
            ) from error

    def ping(self) -> None:
        with self.celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)


@dataclass
class Services:
    settings: Settings

    @cached_property
    def registry(self) -> FileModelRegistry:
        redis_url = self.settings.redis_url
        return FileModelRegistry(
            self.settings.resolved_registry_dir,
            alias_history_limit=self.settings.alias_history_limit,
            # Several API hosts may share the registry: alias moves lock across hosts.
            shared_lock=redis_alias_lock(redis_url) if redis_url else None,
            resolve_recheck_seconds=self.settings.registry_recheck_seconds,
        )

    @cached_property
    def job_store(self) -> JobStore:
        return open_job_store(
            self.settings.redis_url,
            self.settings.jobs_db_path,
            socket_timeout=self.settings.redis_socket_timeout_seconds,
        )

    @cached_property
    def keyring(self) -> Keyring:
        return Keyring(parse_api_keys(self.settings.api_keys))

    @cached_property
    def allowed_origins(self) -> frozenset[str]:
        origins = self.settings.allowed_origins.split(",")
        return frozenset(origin.strip().rstrip("/") for origin in origins if origin.strip())

    @cached_property
    def dispatcher(self) -> JobDispatcher:
        return JobDispatcher(create_celery_app(self.settings))

    @cached_property
    def study_store(self) -> StudyStore:
        return study_store_for(self.settings)

    @cached_property
    def model_cache(self) -> ModelCache:
        settings = self.settings
        batching = BatchingOptions(
            enabled=settings.batching,
            max_batch_size=settings.max_batch_size,
            max_wait_seconds=settings.max_batch_wait_seconds,
            threads=settings.batch_threads,
        )
        return ModelCache(
            self.registry,
            capacity=settings.model_cache_size,
            max_bytes=settings.model_cache_max_bytes,
            batching=batching,
            jit_compile=settings.inference_jit_compile,
            intra_op_threads=settings.inference_intra_op_threads,
            load_failure_seconds=settings.model_load_failure_seconds,
            requests_end_within_seconds=settings.request_timeout_seconds,
        )

    @cached_property
    def decode_pool(self) -> ThreadPoolExecutor:
        # Its own pool, not the event loop's default one: decoding then runs beside the
        # batcher's inference thread, never queued behind blocking registry calls.
        return ThreadPoolExecutor(self.settings.decode_threads, thread_name_prefix="decode")

    @cached_property
    def predict_limiter(self) -> RequestLimiter:
        return RequestLimiter(self.settings.predict_max_pending)

    def close(self) -> None:
        """Stop the threads this app started (batchers, decoders); only those it created."""
        # Popped, not only stopped: a lifespan that starts again (a test client, a server
        # restarted in the same process) gets fresh threads instead of a dead pool.
        if (model_cache := self.__dict__.pop("model_cache", None)) is not None:
            model_cache.close()
        if (decode_pool := self.__dict__.pop("decode_pool", None)) is not None:
            decode_pool.shutdown(wait=True, cancel_futures=True)


def services_of(request: Request) -> Services:
    """The app's services, for the hottest routes: without a dependency to solve."""
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    # async: a sync dependency would take a thread from the shared pool, and health
    # probes must answer even when that pool is full.
    # Also, the getters that only read an attribute are async: FastAPI runs a plain def
    # dependency in a worker thread, a thread hop per dependency and request.
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings_dep(services: ServicesDep) -> Settings:
    return services.settings


async def get_registry(services: ServicesDep) -> FileModelRegistry:
    return services.registry


def get_job_store(services: ServicesDep) -> JobStore:
    return services.job_store


def get_dispatcher(services: ServicesDep) -> JobDispatcher:
    return services.dispatcher


async def get_study_store(services: ServicesDep) -> StudyStore:
    return services.study_store


async def get_model_cache(services: ServicesDep) -> ModelCache:
    return services.model_cache


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RegistryDep = Annotated[FileModelRegistry, Depends(get_registry)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
DispatcherDep = Annotated[JobDispatcher, Depends(get_dispatcher)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
StudyStoreDep = Annotated[StudyStore, Depends(get_study_store)]


@dataclass(frozen=True)
class ModelVersion:
    """A model version that exists: the reference has been resolved to a number."""

    model_name: str
    version: int


ModelNameQuery = Annotated[str, Query(**MODEL_NAME_DOC)]
VersionQuery = Annotated[str | None, Query(**VERSION_DOC)]
ModelNamePath = Annotated[str, Path(description="Registered model name.")]
# Pages of a listing: enough for any real store, and far below SQLite's 64-bit integers.
MAX_OFFSET = 10_000_000
LimitQuery = Annotated[int, Query(ge=1, le=200, description="Items per page.")]
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")]


def resolve_version(
    registry: FileModelRegistry, model_name: str, version: str | int | None
) -> ModelVersion:
    return ModelVersion(model_name, registry.resolve(model_name, version))


async def resolved_version(
    registry: FileModelRegistry, model_name: str, version: str | int | None
) -> ModelVersion:
    """The version a reference points at: from the registry's cache, else read in a thread.

    Almost every request repeats a resolution whose files have not changed, which the
    cache answers on the event loop without touching the disk, confirming it with a few
    stat calls at most every ``registry_recheck_seconds``; a thread hop costs more.
    """
    cached = registry.resolve_if_cached(model_name, version)
    if cached is not None:
        return ModelVersion(model_name, cached)
    return await run_in_threadpool(resolve_version, registry, model_name, version)


async def model_version_from_query(
    request: Request, model_name: ModelNameQuery, version: VersionQuery = None
) -> ModelVersion:
    # The registry from the request rather than RegistryDep: FastAPI solves each
    # dependency anew per request (/predict, the hottest route, resolves its version
    # in the endpoint for the same reason).
    return await resolved_version(services_of(request).registry, model_name, version)


async def model_version_from_path(
    registry: RegistryDep,
    model_name: ModelNamePath,
    version: Annotated[str, Path(description="Version number or alias.", max_length=64)],
) -> ModelVersion:
    return await resolved_version(registry, model_name, version)


# TensorFlow Serving addresses versions by number or by label (alias) in separate paths.
VersionNumberPath = Annotated[int, Path(ge=1, le=MAX_VERSION, description="Version number.")]


# The versions of the TF Serving status and metadata routes, as model_version_from_query:
# the registry from the request (its predict routes resolve theirs in the endpoint).
async def default_model_version(request: Request, model_name: ModelNamePath) -> ModelVersion:
    return await resolved_version(services_of(request).registry, model_name, None)


async def numbered_model_version(
    request: Request, model_name: ModelNamePath, version: VersionNumberPath
) -> ModelVersion:
    return await resolved_version(services_of(request).registry, model_name, version)


QueryModelVersionDep = Annotated[ModelVersion, Depends(model_version_from_query)]
PathModelVersionDep = Annotated[ModelVersion, Depends(model_version_from_path)]
DefaultModelVersionDep = Annotated[ModelVersion, Depends(default_model_version)]
NumberedModelVersionDep = Annotated[ModelVersion, Depends(numbered_model_version)]
