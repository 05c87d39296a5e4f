"""A registered version's model file, for use outside the service.

The file is what the workers registered, checked against the checksum its card records
before it is sent: a file changed on disk since is refused (503), never handed out as
the version. Its strong ETag is that checksum, and ``Repr-Digest`` (RFC 9530) carries
it too, so a client can check what it received; range requests resume a broken download.
"""

from __future__ import annotations

import base64

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.deps import DefaultModelVersionDep, ModelVersion, PathModelVersionDep, RegistryDep
from service.errors import error_responses
from trainer.registry import FileModelRegistry

router = APIRouter(prefix="/models", tags=["models"])

# A .keras file is a zip archive, but no client should unpack it as one.
MEDIA_TYPE = "application/octet-stream"


def download_name(model_name: str, version: int) -> str:
    """The file name a download is saved under: the model and the version it holds."""
    return f"{model_name}-v{version}.keras"


_RESPONSES = {**error_responses(404, 422, 503), 200: {"content": {MEDIA_TYPE: {}}}}


def _model_file(registry: FileModelRegistry, model: ModelVersion) -> FileResponse:
    checksum = registry.verify_checksum(model.model_name, model.version)
    digest = base64.b64encode(bytes.fromhex(checksum)).decode("ascii")
    return FileResponse(
        registry.model_path(model.model_name, model.version),
        media_type=MEDIA_TYPE,
        filename=download_name(model.model_name, model.version),
        headers={"ETag": f'"{checksum}"', "Repr-Digest": f"sha-256=:{digest}:"},
    )


@router.get(
    "/{model_name}/versions/{version}/model.keras",
    summary="Download a version's model file",
    response_class=FileResponse,
    responses=_RESPONSES,
)
def download_version(registry: RegistryDep, model: PathModelVersionDep) -> FileResponse:
    """The version's Keras file: load it with `trainer.model_files.load_model`, which
    registers the layers some architectures save. Needs the `train` scope: weights are
    worth more than the predictions a `predict` key is for. `version` may be a number or
    an alias; the file name says which version it is."""
    return _model_file(registry, model)


@router.get(
    "/{model_name}/model.keras",
    summary="Download the default version's model file",
    response_class=FileResponse,
    responses=_RESPONSES,
)
def download_default(registry: RegistryDep, model: DefaultModelVersionDep) -> FileResponse:
    """The model file of the `production` version, else the latest, as `/predict` picks;
    the file name says which version it is."""
    return _model_file(registry, model)
