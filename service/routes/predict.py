"""POST /predict: classify uploaded images or JSON instances with one model version."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.bodies import JSON_TYPE, MULTIPART_TYPE, read_predict_inputs
from service.deps import resolved_version, services_of
from service.errors import error_responses
from service.images import ACCEPTED_FORMATS_TEXT
from service.monitoring import record_predictions
from service.predictions import predict_inputs
from service.query import openapi_parameters, parse_query
from service.responses import PredictionJSONResponse
from service.schemas_predict import PredictQuery, PredictRequest, PredictResponse
from service.security import RouteAccess, access_checked_route

# Access checked by the route class, not as a dependency, and the query read in the
# endpoint: FastAPI's per-request work for the two took ~140 µs of a single-image
# request's event-loop time (service/query.py, service/security.py). Without it, on a
# 2-core EPYC: 1.05× the single-PNG requests/s at concurrency 32, and 1.12× one at a time.
ACCESS = RouteAccess(read="predict", write="predict", form_posts=True)
router = APIRouter(tags=["predict"], route_class=access_checked_route(ACCESS))


# A 1x1 black PNG: small enough to paste into the docs' "Try it out".
_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)
_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
_JSON_EXAMPLES = {
    "base64": {"summary": "Image files, base64", "value": {"instances": [{"b64": _PNG_B64}]}},
    "pixels": {
        "summary": "Pixels 0-255, 2x2x1",
        "value": {"instances": [[[[0], [255]], [[9], [0]]]]},
    },
    "unit": {
        "summary": "Pixels 0-1, 2x2",
        "value": {"instances": [[[0, 1], [1, 0]]], "pixel_range": "0-1"},
    },
}
_OPENAPI_EXTRA = {
    "parameters": openapi_parameters(PredictQuery),
    "requestBody": {
        "required": True,
        "content": {
            MULTIPART_TYPE: {"schema": {"type": "object", "properties": {"files": _FILES}}},
            JSON_TYPE: {"schema": PredictRequest.model_json_schema(), "examples": _JSON_EXAMPLES},
        },
    },
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    summary="Classify images",
    description=(
        "Classifies images with one model version (a number, an alias such as `production`, "
        "or empty for `production` if set, else the latest version).\n\n"
        f"* `{MULTIPART_TYPE}`: one or more files in the field `files` (or `file`), "
        f"{ACCEPTED_FORMATS_TEXT}, any size and colour mode; they are converted to the "
        "model's channels (transparency composited on white) and resized to its input.\n"
        f'* `{JSON_TYPE}`: `{{"instances": [...]}}`, each `{{"b64": "..."}}` or a pixel array '
        'of the input shape, with `"pixel_range"` `"0-255"` (default) or `"0-1"`.\n\n'
        "Per-file and per-request limits answer 413; past the server's queue depth it "
        "answers 503 with `Retry-After`."
    ),
    responses=error_responses(404, 413, 415, 422, 503),
    openapi_extra=_OPENAPI_EXTRA,
)
async def predict(request: Request) -> Response:
    """Classify uploaded images or JSON instances with one model version."""
    # The services and the version here, not through dependencies: single-image
    # requests are bound by the event loop, where FastAPI solves every dependency anew
    # per request (four fewer raised them from ~560 to ~630 per second on a 2-core Xeon).
    query = parse_query(PredictQuery, request)
    services = services_of(request)
    model_version = await resolved_version(services.registry, query.model_name, query.version)
    with services.predict_limiter.admit():
        inputs = await read_predict_inputs(request, services.settings)
        body = await predict_inputs(
            services.model_cache,
            model_version.model_name,
            model_version.version,
            inputs,
            query.top_k,
            services.decode_pool,
        )
    record_predictions(body["model_name"], body["version"], len(body["predictions"]))
    return PredictionJSONResponse(body)
