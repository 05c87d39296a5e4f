"""TensorFlow Serving's REST API, so existing TF Serving clients work unchanged.

Row format ``{"instances": [...]}`` answers ``{"predictions": ...}`` and columnar
``{"inputs": ...}`` answers ``{"outputs": ...}``, as TF Serving does. Instances are
the model's raw input (float pixels in [0, 1], shape [H, W, C]) or ``{"b64": ...}``
image files. Errors keep this service's ``{"detail": {...}}`` shape and add TF
Serving's top-level ``"error"`` string, which its clients display.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from service.admission import RequestLimiter
from service.batching import prepare_and_predict
from service.deps import (
    DecodePoolDep,
    ModelCacheDep,
    ModelNamePath,
    PredictLimiterDep,
    RegistryDep,
    SettingsDep,
)
from service.errors import error_responses
from service.images import Batch, instances_to_batch
from service.model_cache import ModelCache
from service.monitoring import record_predictions
from service.routes.predict import (
    check_instance_count,
    check_instance_pixels,
    loaded_model,
    read_json_body,
)
from trainer.errors import InvalidInputError
from trainer.registry import FileModelRegistry
from trainer.spec_base import MAX_VERSION
from worker.settings import Settings

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

# Every architecture names its input layer "image" and its output "probabilities".
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
SIGNATURE_NAME = "serving_default"


class TfServingRoute(APIRoute):
    """Adds TF Serving's ``"error"`` key to the error bodies the app's handlers produce."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def handle_with_error_key(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as error:
                app_handler = _app_exception_handler(request, error)
                if app_handler is None:
                    raise
                return _with_error_key(await app_handler(request, error))

        return handle_with_error_key


def _app_exception_handler(request: Request, error: Exception) -> Any:
    # The handler the app would pick (closest class first), so the body stays identical.
    for error_class in type(error).__mro__:
        if (handler := request.app.exception_handlers.get(error_class)) is not None:
            return handler
    return None


def _with_error_key(response: Response) -> Response:
    body = json.loads(bytes(response.body))
    detail = body.get("detail")
    message = detail.get("message", "") if isinstance(detail, dict) else str(detail)
    headers = {key: value for key, value in response.headers.items() if key != "content-length"}
    return JSONResponse({"error": message, **body}, response.status_code, headers=headers)


router = APIRouter(prefix="/v1/models", tags=["tensorflow-serving"], route_class=TfServingRoute)


class TfServingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signature_name: str | None = Field(None, description=f"Only {SIGNATURE_NAME!r} exists.")
    instances: list[Any] | None = Field(None, description="Row format: one input per item.")
    inputs: Any = Field(None, description="Columnar format: the batch, or {input name: batch}.")


class TfServingPredictResponse(BaseModel):
    predictions: list[list[float]] | None = Field(None, description="Row format answer.")
    outputs: list[list[float]] | None = Field(None, description="Columnar format answer.")


def _unwrap_named_input(value: Any) -> Any:
    # {"image": tensor} names the model's single input; {"b64": ...} is an image file.
    if isinstance(value, dict) and len(value) == 1 and "b64" not in value:
        return next(iter(value.values()))
    return value


def _instances(request: TfServingRequest) -> tuple[list[Any], bool]:
    """The inputs as a list of instances, and whether the request was columnar."""
    if (request.instances is None) == (request.inputs is None):
        raise InvalidInputError('send exactly one of "instances" (row) or "inputs" (columnar)')
    if request.signature_name not in (None, "", SIGNATURE_NAME):
        raise InvalidInputError(
            f"signature {request.signature_name!r} does not exist; use {SIGNATURE_NAME!r}",
            signature_name=request.signature_name,
        )
    columnar = request.inputs is not None
    batch = _unwrap_named_input(request.inputs) if columnar else request.instances
    if not isinstance(batch, list) or not batch:
        raise InvalidInputError("the batch must be a non-empty list of instances")
    return [_unwrap_named_input(instance) for instance in batch], columnar


async def predict_probabilities(
    cache: ModelCache,
    model_name: str,
    version: int,
    instances: list[Any],
    max_upload_bytes: int,
    decode_pool: Executor,
) -> list[list[float]]:
    """Probabilities per instance, as TF Serving returns a softmax model's output."""
    loaded = await loaded_model(cache, model_name, version)

    # As /predict: decode on the decode threads, infer on the model's batcher thread.
    def decode() -> tuple[Batch, None]:
        return instances_to_batch(instances, loaded.input_shape, "0-1", max_upload_bytes), None

    probabilities, _ = await prepare_and_predict(decode_pool, decode, loaded.batcher)
    rows: list[list[float]] = probabilities.tolist()
    return rows


async def _predict(
    request: Request,
    settings: Settings,
    cache: ModelCache,
    limiter: RequestLimiter,
    decode_pool: Executor,
    model_name: str,
    version: int,
) -> Response:
    with limiter.admit():
        body = await read_json_body(request, settings, TfServingRequest)
        instances, columnar = _instances(body)
        check_instance_count(len(instances), settings)
        await run_in_threadpool(check_instance_pixels, instances, settings)
        probabilities = await predict_probabilities(
            cache, model_name, version, instances, settings.max_upload_bytes, decode_pool
        )
    record_predictions(model_name, version, len(probabilities))
    # Plain JSON: re-validating thousands of floats through the response model is slow.
    return JSONResponse({"outputs" if columnar else "predictions": probabilities})


_PREDICT_OPTIONS: dict[str, Any] = {
    "response_model": TfServingPredictResponse,
    "response_model_exclude_none": True,
    "responses": error_responses(404, 413, 415, 422, 503),
    # The body is read whatever its content type: `curl -d` sends form-urlencoded.
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": TfServingRequest.model_json_schema(),
                    "examples": {
                        "row": {"value": {"instances": [[[[0.0], [1.0]], [[1.0], [0.0]]]]}},
                        "columnar": {"value": {"inputs": {INPUT_NAME: [[[[0.0], [1.0]]]]}}},
                        "b64": {"value": {"instances": [{"b64": "<base64 of a PNG>"}]}},
                    },
                }
            },
        }
    },
}
VersionPath = Annotated[int, Path(ge=1, le=MAX_VERSION, description="Version number.")]
AliasPath = Annotated[str, Path(description="Alias (TF Serving's version label).")]


@router.post("/{model_name}:predict", summary="Predict (default version)", **_PREDICT_OPTIONS)
async def predict_default(
    request: Request, model_name: ModelNamePath, registry: RegistryDep,
    cache: ModelCacheDep, settings: SettingsDep, limiter: PredictLimiterDep,
    decode_pool: DecodePoolDep,
) -> Response:  # fmt: skip
    """Class probabilities from the `production` version, else the latest."""
    version = await run_in_threadpool(registry.resolve, model_name, None)
    return await _predict(request, settings, cache, limiter, decode_pool, model_name, version)


@router.post(
    "/{model_name}/versions/{version}:predict", summary="Predict (version)", **_PREDICT_OPTIONS
)
async def predict_version(
    request: Request, model_name: ModelNamePath, version: VersionPath,
    registry: RegistryDep, cache: ModelCacheDep, settings: SettingsDep,
    limiter: PredictLimiterDep, decode_pool: DecodePoolDep,
) -> Response:  # fmt: skip
    """Class probabilities from one version."""
    resolved = await run_in_threadpool(registry.resolve, model_name, version)
    return await _predict(request, settings, cache, limiter, decode_pool, model_name, resolved)


@router.post("/{model_name}/labels/{alias}:predict", summary="Predict (label)", **_PREDICT_OPTIONS)
async def predict_label(
    request: Request, model_name: ModelNamePath, alias: AliasPath,
    registry: RegistryDep, cache: ModelCacheDep, settings: SettingsDep,
    limiter: PredictLimiterDep, decode_pool: DecodePoolDep,
) -> Response:  # fmt: skip
    """Class probabilities from the version an alias (TF Serving label) points at."""
    resolved = await run_in_threadpool(registry.resolve, model_name, alias)
    return await _predict(request, settings, cache, limiter, decode_pool, model_name, resolved)


class StatusDetail(BaseModel):
    error_code: str = "OK"
    error_message: str = ""


class VersionStatus(BaseModel):
    version: str
    state: str = "AVAILABLE"
    status: StatusDetail = Field(default_factory=StatusDetail)


class ModelStatus(BaseModel):
    model_version_status: list[VersionStatus]


def _status(versions: list[int]) -> ModelStatus:
    # Every live version is servable (loaded on first use), so all report AVAILABLE.
    return ModelStatus(
        model_version_status=[VersionStatus(version=str(number)) for number in reversed(versions)]
    )


@router.get("/{model_name}", response_model=ModelStatus, responses=error_responses(404, 422))
def model_status(model_name: ModelNamePath, registry: RegistryDep) -> ModelStatus:
    """TF Serving model status: every live version, newest first."""
    return _status(registry.versions(model_name))


@router.get(
    "/{model_name}/versions/{version}",
    response_model=ModelStatus,
    responses=error_responses(404, 422),
)
def version_status(
    model_name: ModelNamePath, version: VersionPath, registry: RegistryDep
) -> ModelStatus:
    """TF Serving model status of one version."""
    return _status([registry.resolve(model_name, version)])


def _tensor(dims: list[int], name: str) -> dict[str, Any]:
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": str(size), "name": ""} for size in dims],
            "unknown_rank": False,
        },
        "name": name,
    }


def model_metadata(registry: FileModelRegistry, model_name: str, version: int) -> dict[str, Any]:
    """TF Serving's GetModelMetadata answer, from the card: no model is loaded."""
    card = registry.get_card(model_name, version)
    class_names = card.class_names
    signature = {
        "inputs": {INPUT_NAME: _tensor([-1, *card.input_shape], f"{INPUT_NAME}:0")},
        "outputs": {OUTPUT_NAME: _tensor([-1, len(class_names)], f"{OUTPUT_NAME}:0")},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": model_name, "signature_name": "", "version": str(version)},
        "metadata": {
            "signature_def": {"signature_def": {SIGNATURE_NAME: signature}},
            # Not in TF Serving: the labels, so clients can name the probabilities.
            "class_names": class_names,
        },
    }


@router.get("/{model_name}/metadata", responses=error_responses(404, 422))
def default_metadata(model_name: ModelNamePath, registry: RegistryDep) -> dict[str, Any]:
    """Signature (input shape, output size) and class names of the default version."""
    return model_metadata(registry, model_name, registry.resolve(model_name, None))


@router.get("/{model_name}/versions/{version}/metadata", responses=error_responses(404, 422))
def version_metadata(
    model_name: ModelNamePath, version: VersionPath, registry: RegistryDep
) -> dict[str, Any]:
    """Signature (input shape, output size) and class names of one version."""
    return model_metadata(registry, model_name, registry.resolve(model_name, version))
