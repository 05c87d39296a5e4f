"""Dependencies: typed ``Annotated`` aliases the routes declare, swapped in tests.

The long-lived parts (registry, job store, Celery client, model cache) are
built once per app in ``Services`` and reached through ``request.app.state``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

from celery import Celery
from fastapi import Depends, Path, Query, Request
from kombu.exceptions import OperationalError

from service.errors import BrokerUnavailableError
from service.model_cache import ModelCache
from trainer.registry import FileModelRegistry
from worker.app import create_celery_app, enqueue_training
from worker.jobstore import JobStore, open_job_store
from worker.settings import Settings
from worker.studies import StudyStore
from worker.studies.runtime import study_store_for


class JobDispatcher:
    """Sends jobs to the workers by task name; the service never imports the tasks."""

    def __init__(self, celery_app: Celery) -> None:
        self.celery_app = celery_app

    def enqueue(self, job_id: str) -> None:
        try:
            enqueue_training(self.celery_app, job_id)
        except (OperationalError, OSError) as error:
            raise BrokerUnavailableError(
                f"the job queue is unreachable ({error}); the job was not queued, retry later"
            ) from error

    def ping(self) -> None:
        with self.celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)


@dataclass
class Services:
    settings: Settings

    @cached_property
    def registry(self) -> FileModelRegistry:
        return FileModelRegistry(self.settings.resolved_registry_dir)

    @cached_property
    def job_store(self) -> JobStore:
        return open_job_store(self.settings.redis_url, self.settings.jobs_db_path)

    @cached_property
    def dispatcher(self) -> JobDispatcher:
        return JobDispatcher(create_celery_app(self.settings))

    @cached_property
    def study_store(self) -> StudyStore:
        return study_store_for(self.settings)

    @cached_property
    def model_cache(self) -> ModelCache:
        return ModelCache(self.registry, capacity=self.settings.model_cache_size)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings_dep(services: ServicesDep) -> Settings:
    return services.settings


def get_registry(services: ServicesDep) -> FileModelRegistry:
    return services.registry


def get_job_store(services: ServicesDep) -> JobStore:
    return services.job_store


def get_dispatcher(services: ServicesDep) -> JobDispatcher:
    return services.dispatcher


def get_study_store(services: ServicesDep) -> StudyStore:
    return services.study_store


def get_model_cache(services: ServicesDep) -> ModelCache:
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


ModelNameQuery = Annotated[
    str, Query(description="Registered model name.", examples=["cifar10-custom"])
]
VersionQuery = Annotated[
    str | None,
    Query(
        description="Version number or alias; empty means the `production` alias if set, "
        "else the latest version.",
        examples=["3", "production"],
    ),
]
ModelNamePath = Annotated[str, Path(description="Registered model name.")]


def resolve_version(
    registry: FileModelRegistry, model_name: str, version: str | int | None
) -> ModelVersion:
    return ModelVersion(model_name, registry.resolve(model_name, version))


def model_version_from_query(
    registry: RegistryDep, model_name: ModelNameQuery, version: VersionQuery = None
) -> ModelVersion:
    return resolve_version(registry, model_name, version)


def model_version_from_path(
    registry: RegistryDep,
    model_name: ModelNamePath,
    version: Annotated[str, Path(description="Version number or alias.")],
) -> ModelVersion:
    return resolve_version(registry, model_name, version)


QueryModelVersionDep = Annotated[ModelVersion, Depends(model_version_from_query)]
PathModelVersionDep = Annotated[ModelVersion, Depends(model_version_from_path)]
