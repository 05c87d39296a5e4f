"""One error shape everywhere: ``{"detail": {"code", "message", ...}}``.

Domain errors carry a stable code; this table maps codes to HTTP statuses,
as MLflow's REST layer does, so routes never pick status codes themselves.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from trainer.architectures import ARCHITECTURES
from trainer.errors import DaciaVisionError

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# The most characters of a client's input an error message quotes back.
QUOTE_LIMIT = 200
# An overloaded /predict clears in well under a second; the broker takes longer to return.
RETRY_AFTER_SECONDS_BY_CODE = {"overloaded": 1}


class PayloadTooLargeError(DaciaVisionError):
    code = "payload_too_large"


class UnsupportedMediaTypeError(DaciaVisionError):
    code = "unsupported_media_type"


class BrokerUnavailableError(DaciaVisionError):
    code = "broker_unavailable"


class ModelLoadError(DaciaVisionError):
    code = "model_load_failed"


class ModelOutputError(DaciaVisionError):
    code = "model_output_invalid"


class UnauthenticatedError(DaciaVisionError):
    code = "unauthenticated"


class ForbiddenError(DaciaVisionError):
    code = "forbidden"


class JobStoreUnavailableError(DaciaVisionError):
    code = "job_store_unavailable"


class OverloadedError(DaciaVisionError):
    code = "overloaded"


STATUS_BY_CODE: dict[str, int] = {
    "invalid_input": 422,
    "resource_budget_exceeded": 422,
    "idempotency_key_reused": 422,
    "unauthenticated": 401,
    "forbidden": 403,
    "invalid_host": 400,
    "invalid_model_name": 422,
    "dataset_not_found": 422,
    "not_found": 404,
    "model_not_found": 404,
    "version_not_found": 404,
    "alias_not_found": 404,
    "job_not_found": 404,
    "study_not_found": 404,
    "plot_not_found": 404,
    "report_not_ready": 409,
    "conflict": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "broker_unavailable": 503,
    "job_store_unavailable": 503,
    "request_timeout": 504,
    "lease_lost": 409,
    # The version's files are broken: it cannot be served, the others still can.
    "corrupt_model": 503,
    "model_load_failed": 503,
    # The version loaded but computes NaN or infinity: retrying will not help.
    "model_output_invalid": 500,
    "overloaded": 503,
}


class ErrorBody(BaseModel):
    code: str = Field(examples=["version_not_found"])
    message: str = Field(examples=["model 'cifar10-custom' has no version 7; live versions: 1, 2"])


class ErrorResponse(BaseModel):
    detail: ErrorBody


_DESCRIPTIONS = {
    401: "No API key, or one that is not valid.",
    403: "The API key lacks the scope this route needs.",
    404: "The model, version, alias or job does not exist.",
    409: "The request conflicts with the current state (e.g. the job already ended).",
    413: "The upload or batch is larger than the service accepts.",
    415: "The content type or image format is not supported.",
    422: "The input is invalid; `errors` names each field, the value received and what is allowed.",
    503: "The broker or job store is unreachable, too many predictions are in progress, or "
    "the model version's files are broken (`corrupt_model`, `model_load_failed`); retry "
    "after the `Retry-After` seconds.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


def error_json(
    status_code: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    retry_after = RETRY_AFTER_SECONDS_BY_CODE.get(code, RETRY_AFTER_SECONDS)
    headers = {"Retry-After": str(retry_after)} if status_code == 503 else None
    if status_code == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="daciavision"'}
    # Details never override the two fields every client relies on.
    body = {"detail": {**jsonable_encoder(details or {}), "code": code, "message": message}}
    return JSONResponse(status_code=status_code, content=body, headers=headers)


def _field_errors(error: DaciaVisionError) -> list[dict[str, Any]]:
    # Every 422 carries `errors`, as documented; a domain error names its field in
    # its details, e.g. InvalidModelNameError(..., model_name="Bad_Name").
    details = error.details
    if "field" in details:
        field, received = details["field"], details.get("received")
    elif "index" in details:  # one of the instances of a /predict request
        field, received = f"instances[{details['index']}]", details.get("received_shape")
    else:
        field, received = next(iter(details.items()), (None, None))
    return [
        {
            "field": field,
            "received": quoted(received),
            "expected": error.message,
            "type": error.code,
        }
    ]


async def domain_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DaciaVisionError)
    status = STATUS_BY_CODE.get(error.code, 400)
    details = dict(error.details)
    if status == 422 and "errors" not in details:
        details["errors"] = _field_errors(error)
    return error_json(status, error.code, error.message, details)


def _field_path(location: tuple[Any, ...]) -> str:
    # Drop the discriminator tag pydantic adds for the architecture union.
    parts = [str(part) for part in location if part not in ARCHITECTURES]
    return ".".join(parts)


def quoted(value: Any, limit: int = QUOTE_LIMIT) -> Any:
    """``value`` as an error may quote it: small values as they are, large ones summarized.

    Echoing a whole 10 MB instance back would double the cost of every bad request.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # NaN and infinity have no JSON spelling: quote them as text.
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}… ({len(value)} characters)"
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    text = repr(value)
    if len(text) <= limit and _is_json(value):
        return jsonable_encoder(value)
    kind = type(value).__name__
    size = f" of {len(value)} items" if isinstance(value, list | dict | tuple) else ""
    return f"{kind}{size}: {text[:limit]}…"


def _is_json(value: Any) -> bool:
    try:
        json.dumps(jsonable_encoder(value), allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _validation_entry(item: Any) -> dict[str, Any]:
    field = _field_path(tuple(item["loc"]))
    received = item.get("input")
    if item["type"] == "unknown_architecture" and isinstance(received, dict):
        # The discriminator reports the whole body; name the field that chose wrong.
        field, received = f"{field}.architecture", received.get("architecture")
    return {
        "field": field,
        "received": quoted(received),
        "expected": str(item["msg"])[:QUOTE_LIMIT],
        "type": item["type"],
    }


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    errors = [_validation_entry(item) for item in error.errors()]
    summary = "; ".join(f"{entry['field']}: {entry['expected']}" for entry in errors[:5])
    return error_json(422, "invalid_input", f"invalid request: {summary}", {"errors": errors})


# FastAPI's detail when it cannot decode a body it was asked to parse.
BODY_PARSE_ERROR = "There was an error parsing the body"


async def http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    code = codes.get(error.status_code, "http_error")
    message = error.detail if isinstance(error.detail, str) else str(error.detail)
    if error.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}; see /docs for the API"
    if error.status_code == 400 and message == BODY_PARSE_ERROR:
        # FastAPI's answer to a body that is not UTF-8 JSON: invalid input like any other.
        return error_json(
            422, "invalid_input", "the body is not JSON text: send UTF-8 encoded JSON"
        )
    headers = dict(error.headers or {})
    if error.status_code == 405:
        # Starlette names the methods of the first route that matched the path; FastAPI
        # has one route per method, so gather them all.
        allowed = ", ".join(_allowed_methods(request)) or headers.get("Allow", "")
        headers["Allow"] = allowed
        if message == "Method Not Allowed":
            message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
    response = error_json(error.status_code, code, message)
    response.headers.update(headers)
    return response


async def _store_unreachable(request: Request, error: Exception) -> JSONResponse:
    # Redis is both broker and job store: when it is down, nothing can be queued.
    # The driver's message names hosts and ports: it goes to the log, not the client.
    logger.warning("job store unreachable on %s %s: %s", request.method, request.url.path, error)
    return error_json(503, "broker_unavailable", "the job store is unreachable; retry later")


async def _store_busy(request: Request, error: Exception) -> JSONResponse:
    # SQLite answers "database is locked" after its busy timeout and "disk is full" /
    # "unable to open" when the volume fails: all of them mean "not now", not a bug.
    logger.warning("job store failed on %s %s: %s", request.method, request.url.path, error)
    return error_json(
        503, "job_store_unavailable", "the job store is busy or unavailable; retry later"
    )


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    # Keep the one error shape even for bugs; the traceback goes to the log.
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return error_json(
        500,
        "internal_error",
        f"the server failed unexpectedly ({type(error).__name__}); see its log",
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every documented method of the path (its OpenAPI entry), for the Allow header."""
    path = request.url.path
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if _template_pattern(template).fullmatch(path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


@functools.lru_cache(maxsize=256)
def _template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    # No ':' in a parameter: names, versions and aliases never hold one, and TF Serving's
    # paths put ":predict" right after them.
    pattern = "".join("[^/:]+" if part.startswith("{") else re.escape(part) for part in parts)
    return re.compile(pattern)


async def _client_gone(request: Request, error: Exception) -> Response:
    # The client left mid-body (or the body limit cut it off and answers itself):
    # nobody reads this answer, and it is no server error worth a traceback.
    return Response(status_code=400)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_exception_handler(DaciaVisionError, domain_error)
    app.add_exception_handler(RedisConnectionError, _store_unreachable)
    app.add_exception_handler(RedisTimeoutError, _store_unreachable)
    app.add_exception_handler(sqlite3.OperationalError, _store_busy)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
