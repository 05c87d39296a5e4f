"""Registered models: versions, model cards and aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from service.deps import ModelCacheDep, ModelNamePath, PathModelVersionDep, RegistryDep
from service.errors import error_responses
from service.limits import OffLoopJsonRoute
from service.reports import model_detail
from service.schemas import AliasChangeView, AliasUpdate, ModelDetail, ModelSummaryView
from trainer.card import ModelCard
from trainer.registry import AliasChange

router = APIRouter(prefix="/models", tags=["models"], route_class=OffLoopJsonRoute)

AliasPath = Annotated[
    str, Path(description="Alias name, e.g. `production` or `staging`.", examples=["production"])
]


def _view(model_name: str, change: AliasChange) -> AliasChangeView:
    return AliasChangeView(
        model_name=model_name,
        alias=change.alias,
        from_version=change.from_version,
        to_version=change.to_version,
        changed_at=change.changed_at,
    )


@router.get("", response_model=list[ModelSummaryView], summary="List registered models")
def list_models(registry: RegistryDep) -> list[ModelSummaryView]:
    """Every model with its live versions, latest version and aliases."""
    return [ModelSummaryView(**vars(summary)) for summary in registry.list_models()]


@router.get(
    "/{model_name}",
    response_model=ModelDetail,
    summary="A model's versions and aliases",
    responses=error_responses(404, 422),
)
def get_model(registry: RegistryDep, model_name: ModelNamePath) -> ModelDetail:
    """Live versions with architecture, dataset, test accuracy and the aliases on each."""
    return model_detail(registry, model_name)


@router.get(
    "/{model_name}/versions/{version}",
    response_model=ModelCard,
    summary="The model card of a version",
    responses=error_responses(404, 422, 503),
)
def get_version(registry: RegistryDep, model: PathModelVersionDep) -> ModelCard:
    """The full model card: spec, dataset sample, class names, input shape, test and
    validation reports, history, timings, library versions, creation time and checksum.
    `version` may be a number or an alias."""
    return registry.get_card(model.model_name, model.version)


@router.delete(
    "/{model_name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a version (soft)",
    responses=error_responses(404, 409, 422),
)
def delete_version(registry: RegistryDep, model: PathModelVersionDep) -> Response:
    """Hides the version from listings and serving; its number is never reused. A version
    an alias points to cannot be deleted (409): move the alias first."""
    registry.delete_version(model.model_name, model.version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/{model_name}/aliases/{alias}",
    response_model=AliasChangeView,
    summary="Point an alias at a version",
    responses=error_responses(404, 422),
)
def set_alias(
    registry: RegistryDep,
    model_cache: ModelCacheDep,
    model_name: ModelNamePath,
    alias: AliasPath,
    update: AliasUpdate,
) -> AliasChangeView:
    """Creates or moves the alias. The target version is loaded and warmed *before* the
    alias moves, so traffic switches without a single failed or cold request."""
    model_cache.preload(model_name, registry.resolve(model_name, update.version))
    return _view(model_name, registry.set_alias(model_name, alias, update.version))


@router.delete(
    "/{model_name}/aliases/{alias}",
    response_model=AliasChangeView,
    summary="Remove an alias",
    responses=error_responses(404, 422),
)
def delete_alias(
    registry: RegistryDep, model_name: ModelNamePath, alias: AliasPath
) -> AliasChangeView:
    """Removes the alias; the removal is kept in its history."""
    return _view(model_name, registry.delete_alias(model_name, alias))


@router.get(
    "/{model_name}/aliases/{alias}/history",
    response_model=list[AliasChangeView],
    summary="Where an alias pointed, oldest first",
    responses=error_responses(404, 422),
)
def alias_history(
    registry: RegistryDep, model_name: ModelNamePath, alias: AliasPath
) -> list[AliasChangeView]:
    """Every move of the alias: from which version, to which, and when."""
    return [_view(model_name, change) for change in registry.alias_history(model_name, alias)]


@router.post(
    "/{model_name}/aliases/{alias}/rollback",
    response_model=AliasChangeView,
    summary="Move an alias back to its previous version",
    responses=error_responses(404, 409, 422),
)
def rollback_alias(
    registry: RegistryDep,
    model_cache: ModelCacheDep,
    model_name: ModelNamePath,
    alias: AliasPath,
) -> AliasChangeView:
    """Undoes the alias' last move in one call (the previous version is warmed first)."""
    history = registry.alias_history(model_name, alias)
    # A deleted previous version is not warmed: the registry refuses that rollback
    # with a 409 that says why, where loading it would only say "not found".
    previous = history[-1].from_version if history else None
    if previous is not None and previous in registry.versions(model_name):
        model_cache.preload(model_name, previous)
    return _view(model_name, registry.rollback_alias(model_name, alias))
