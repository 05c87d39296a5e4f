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
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service.bodies import read_instances, read_json_body
from service.deps import (
    DefaultModelVersionDep,
    ModelNamePath,
    ModelVersion,
    NumberedModelVersionDep,
    RegistryDep,
    resolved_version,
    services_of,
)
from service.errors import error_responses
from service.monitoring import record_predictions
from service.predictions import predict_probabilities
from service.query import openapi_parameters, parse_path
from service.responses import PredictionJSONResponse
from service.schemas_predict import (
    SIGNATURE_NAME,
    ModelStatus,
    TfServingLabelPath,
    TfServingModelPath,
    TfServingPredictResponse,
    TfServingRequest,
    TfServingVersionPath,
    VersionStatus,
)
from service.security import RouteAccess, access_checked_route
from trainer.errors import InvalidInputError
from trainer.registry import FileModelRegistry

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

# Every architecture names its input layer "image" and its output "probabilities".
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


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


# Checked by the route class, as /predict's (service/routes/predict.py).
ACCESS = RouteAccess(read="predict", write="predict", form_posts=True)
router = APIRouter(
    prefix="/v1/models",
    tags=["tensorflow-serving"],
    route_class=access_checked_route(ACCESS, base=TfServingRoute),
)


def _unwrap_named_input(value: Any, where: str) -> Any:
    # {"image": tensor} names the model's single input; {"b64": ...} is an image file.
    if not isinstance(value, dict) or "b64" in value:
        return value
    if len(value) != 1:
        names = ", ".join(repr(str(name))[:40] for name in list(value)[:5])
        raise InvalidInputError(
            f"{where} names {len(value)} inputs ({names}); the model has one, "
            f"{INPUT_NAME!r}: send {{{INPUT_NAME!r}: ...}} or the value itself",
            field=f"body.{where}",
        )
    return next(iter(value.values()))


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
    batch = _unwrap_named_input(request.inputs, "inputs") if columnar else request.instances
    if not isinstance(batch, list) or not batch:
        raise InvalidInputError("the batch must be a non-empty list of instances")
    where = "inputs" if columnar else "instances"
    instances = [_unwrap_named_input(item, f"{where}[{index}]") for index, item in enumerate(batch)]
    return instances, columnar


async def _predict(request: Request, model_name: str, reference: str | int | None) -> Response:
    # The version resolved here, not through dependencies, as /predict does: FastAPI
    # solves every dependency and path parameter anew per request, which took about
    # 60–80 µs of a single-image request's event-loop time on an AMX Xeon.
    services = services_of(request)
    model_version = await resolved_version(services.registry, model_name, reference)
    version = model_version.version
    with services.predict_limiter.admit():
        body = await read_json_body(request, services.settings, TfServingRequest)
        instances, columnar = _instances(body)
        # TF Serving clients send pixels as floats in [0, 1].
        inputs = await read_instances(instances, "0-1", services.settings)
        probabilities = await predict_probabilities(
            services.model_cache, model_name, version, inputs, services.decode_pool
        )
    record_predictions(model_name, version, len(probabilities))
    # Plain JSON: re-validating thousands of floats through the response model is slow.
    return PredictionJSONResponse({"outputs" if columnar else "predictions": probabilities})


_REQUEST_BODY: dict[str, Any] = {
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


def _predict_options(path: type[TfServingModelPath]) -> dict[str, Any]:
    return {
        "response_model": TfServingPredictResponse,
        "response_model_exclude_none": True,
        "responses": error_responses(404, 413, 415, 422, 503),
        # The body is read whatever its content type: `curl -d` sends form-urlencoded.
        "openapi_extra": {
            "parameters": openapi_parameters(path, location="path"),
            "requestBody": _REQUEST_BODY,
        },
    }


@router.post(
    "/{model_name}:predict",
    summary="Predict (default version)",
    **_predict_options(TfServingModelPath),
)
async def predict_default(request: Request) -> Response:
    """Class probabilities from the `production` version, else the latest."""
    path = parse_path(TfServingModelPath, request)
    return await _predict(request, path.model_name, None)


@router.post(
    "/{model_name}/versions/{version}:predict",
    summary="Predict (version)",
    **_predict_options(TfServingVersionPath),
)
async def predict_version(request: Request) -> Response:
    """Class probabilities from one version."""
    path = parse_path(TfServingVersionPath, request)
    return await _predict(request, path.model_name, path.version)


@router.post(
    "/{model_name}/labels/{alias}:predict",
    summary="Predict (label)",
    **_predict_options(TfServingLabelPath),
)
async def predict_label(request: Request) -> Response:
    """Class probabilities from the version an alias (TF Serving label) points at."""
    path = parse_path(TfServingLabelPath, request)
    return await _predict(request, path.model_name, path.alias)


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
def version_status(model_version: NumberedModelVersionDep) -> ModelStatus:
    """TF Serving model status of one version."""
    return _status([model_version.version])


def _tensor(dims: list[int], name: str) -> dict[str, Any]:
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": str(size), "name": ""} for size in dims],
            "unknown_rank": False,
        },
        "name": name,
    }


def model_metadata(registry: FileModelRegistry, model_version: ModelVersion) -> dict[str, Any]:
    """TF Serving's GetModelMetadata answer, from the card: no model is loaded."""
    model_name, version = model_version.model_name, model_version.version
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
def default_metadata(
    model_version: DefaultModelVersionDep, registry: RegistryDep
) -> dict[str, Any]:
    """Signature (input shape, output size) and class names of the default version."""
    return model_metadata(registry, model_version)


@router.get("/{model_name}/versions/{version}/metadata", responses=error_responses(404, 422))
def version_metadata(
    model_version: NumberedModelVersionDep, registry: RegistryDep
) -> dict[str, Any]:
    """Signature (input shape, output size) and class names of one version."""
    return model_metadata(registry, model_version)
