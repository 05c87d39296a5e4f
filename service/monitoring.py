"""Service telemetry in Prometheus' text format at /monitoring/prometheus/metrics.

``/metrics`` is taken by the per-class reports, so telemetry lives apart:
requests and latency by route template, predictions by model and version,
jobs by status (read from the job store at scrape time). Served by several processes
(``--api-processes``), each keeps its values in prometheus_client's multiprocess
files and a scrape sums them (``service/api_processes.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api_processes import TELEMETRY_FOLDER_VARIABLE
from service.deps import JobStoreDep
from service.errors import error_responses

TELEMETRY = CollectorRegistry()
REQUESTS = Counter(
    "daciavision_http_requests",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
    registry=TELEMETRY,
)
LATENCY = Histogram(
    "daciavision_http_request_duration_seconds",
    "HTTP request latency by route template.",
    ["route", "method"],
    registry=TELEMETRY,
)
PREDICTIONS = Counter(
    "daciavision_predictions",
    "Images classified, by model and version.",
    ["model_name", "version"],
    registry=TELEMETRY,
)
# Any process reads the same job store, so with several the latest reading is the answer.
JOBS = Gauge(
    "daciavision_jobs",
    "Training jobs by status.",
    ["status"],
    registry=TELEMETRY,
    multiprocess_mode="mostrecent",
)

router = APIRouter(prefix="/monitoring", tags=["monitoring"])


def record_predictions(model_name: str, version: int, count: int) -> None:
    PREDICTIONS.labels(model_name=model_name, version=str(version)).inc(count)


def _route_template(request: Request) -> str:
    # Label by template ("/jobs/{job_id}"), never by raw path: ids would make
    # the label set grow without bound. The router records the route it chose in
    # the scope; FastAPI nests included routers, so re-matching the top-level
    # routes would find a pathless router that matches every request.
    chosen = getattr(request.scope.get("route"), "path", None)
    if chosen:
        return str(chosen)
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        path = getattr(route, "path", None)
        if match == Match.FULL and path:
            return str(path)
    return "unmatched"


@router.get(
    "/prometheus/metrics",
    summary="Service telemetry (Prometheus text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def prometheus_metrics(store: JobStoreDep) -> Response:
    """Requests and latency by route, predictions by model/version, jobs by status."""
    for status, count in store.count_by_status().items():
        JOBS.labels(status=status).set(count)
    return Response(_exposition(), media_type=CONTENT_TYPE_LATEST)


def _exposition() -> bytes:
    folder = os.environ.get(TELEMETRY_FOLDER_VARIABLE)
    if not folder:
        return generate_latest(TELEMETRY)
    every_process = CollectorRegistry()
    multiprocess.MultiProcessCollector(every_process, path=folder)  # type: ignore[no-untyped-call]
    return generate_latest(every_process)


class _MeasureRequests:
    """Counts requests and observes their latency by route template.

    A plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's
    BaseHTTPMiddleware wraps every request in a task group and memory streams, a
    cost comparable to a whole small /predict.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app fails before answering, the error handler answers 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            request = Request(scope)
            route = _route_template(request)
            LATENCY.labels(route=route, method=request.method).observe(
                time.perf_counter() - started
            )
            REQUESTS.labels(route=route, method=request.method, status=str(status)).inc()


def install_monitoring(app: FastAPI, dependencies: Sequence[Any] = ()) -> None:
    app.add_middleware(_MeasureRequests)
    responses = error_responses(401, 403) if dependencies else None
    app.include_router(router, dependencies=list(dependencies), responses=responses)
