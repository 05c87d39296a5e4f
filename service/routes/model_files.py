"""A registered version's model file, for use outside the service.

The file is what the workers registered, checked against the checksum its card records
before it is sent: a file changed on disk since is refused (503), never handed out as
the version (read and hashed again only when its status changed: ``trainer.checksums``).
Its strong ETag is that checksum, and ``Repr-Digest`` (RFC 9530) carries it too, so a
client can check what it received; range requests resume a broken download.
A client holding the file already sends its checksum in ``If-None-Match`` and gets 304
without the body; HEAD answers the headers alone (RFC 9110 asks every server for HEAD
where it has GET), e.g. to learn which version and checksum a download would bring.
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from service.deps import DefaultModelVersionDep, ModelVersion, PathModelVersionDep, RegistryDep
from service.errors import error_responses
from service.ranges import RangeAwareFileResponse
from trainer.registry import FileModelRegistry

router = APIRouter(prefix="/models", tags=["models"])

# A .keras file is a zip archive, but no client should unpack it as one.
MEDIA_TYPE = "application/octet-stream"


def download_name(model_name: str, version: int) -> str:
    """The file name a download is saved under: the model and the version it holds."""
    return f"{model_name}-v{version}.keras"


_RESPONSES = {
    **error_responses(404, 422, 503),
    200: {"content": {MEDIA_TYPE: {}}},
    304: {"description": "The client holds this file already: `If-None-Match` named its ETag."},
}


def none_match(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag``: RFC 9110's weak comparison, as for GET."""
    tags = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag in ("*", etag) for tag in tags)


def _model_file(request: Request, registry: FileModelRegistry, model: ModelVersion) -> Response:
    # Checked on 304 too: a file changed on disk must not be confirmed as the version.
    checksum = registry.verify_checksum(model.model_name, model.version)
    digest = base64.b64encode(bytes.fromhex(checksum)).decode("ascii")
    headers = {"ETag": f'"{checksum}"', "Repr-Digest": f"sha-256=:{digest}:"}
    if none_match(request.headers.get("if-none-match", ""), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return RangeAwareFileResponse(
        registry.model_path(model.model_name, model.version),
        media_type=MEDIA_TYPE,
        filename=download_name(model.model_name, model.version),
        headers=headers,
    )


# HEAD beside GET but out of the OpenAPI document: one operation per path there, and a
# HEAD is the GET without its body.
@router.head("/{model_name}/versions/{version}/model.keras", include_in_schema=False)
@router.get(
    "/{model_name}/versions/{version}/model.keras",
    summary="Download a version's model file",
    response_class=FileResponse,
    responses=_RESPONSES,
)
def download_version(
    request: Request, registry: RegistryDep, model: PathModelVersionDep
) -> Response:
    """The version's Keras file: load it with `trainer.model_files.load_model`, which
    registers the layers some architectures save. Needs the `train` scope: weights are
    worth more than the predictions a `predict` key is for. `version` may be a number or
    an alias; the file name says which version it is. `If-None-Match` with the file's
    ETag answers 304 without the file."""
    return _model_file(request, registry, model)


@router.head("/{model_name}/model.keras", include_in_schema=False)
@router.get(
    "/{model_name}/model.keras",
    summary="Download the default version's model file",
    response_class=FileResponse,
    responses=_RESPONSES,
)
def download_default(
    request: Request, registry: RegistryDep, model: DefaultModelVersionDep
) -> Response:
    """The model file of the `production` version, else the latest, as `/predict` picks;
    the file name says which version it is."""
    return _model_file(request, registry, model)
