"""The FastAPI application: routers, error handlers, telemetry, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from service import __version__, png_kernel
from service.deps import Services
from service.errors import error_responses, install_error_handlers
from service.headers import SecurityHeadersMiddleware
from service.limits import BodyLimitMiddleware, RequestTimeoutMiddleware, body_limit_for
from service.monitoring import install_monitoring
from service.monitoring import router as monitoring_router
from service.routes import (
    dashboard,
    health,
    jobs,
    metrics,
    model_files,
    models,
    predict,
    reports,
    studies,
    tfserving,
)
from service.security import (
    RouteAccess,
    TrustedHostMiddleware,
    check_access_before_body_validation,
    checks_access_itself,
    document_key_security,
    host_policy,
)
from worker.recovery import requeue_orphaned_jobs, send_running_studies_an_advance
from worker.settings import Settings, get_settings

logger = logging.getLogger(__name__)

DESCRIPTION = """
Train, version and serve image classifiers.

* **Jobs** queue trainings (CIFAR-10, MNIST, Fashion-MNIST, scikit-learn digits) to
  Celery workers; watch their per-epoch progress, cancel them.
* **Models** are versioned (1, 2, 3 …, immutable) with movable aliases such as
  `production` and `staging`, each with a history.
* **Predict** classifies uploaded images or JSON pixel arrays; a TensorFlow Serving
  compatible route serves existing clients.
* **Metrics** are per-class reports (precision, recall, F1, support, confusion
  matrix, weak classes) of any registered version.

Every error has the shape `{"detail": {"code": ..., "message": ...}}`. A web dashboard
built on these routes is at [`/`](/).

**Access**: unless the server runs open on loopback, every route but the health
probes needs an API key (`Authorization: Bearer <key>` or `X-API-Key`; use
"Authorize" above). Scopes: `predict` (predict, read models and metrics), `train`
(jobs, model files), `admin` (aliases, deletions, telemetry, everything).
"""

# Which scope each router's reads and changes need. Health probes stay open.
ACCESS = [
    # The prediction routes first: a request is matched against the routes in order,
    # and for a single-image /predict matching took 9% of its event loop time, 3% now.
    (predict.router, predict.ACCESS),
    (tfserving.router, tfserving.ACCESS),
    (jobs.router, RouteAccess(read="train", write="train")),
    # Reading studies and reports is reading results, like models and metrics.
    (studies.router, RouteAccess(read="predict", write="train")),
    (reports.router, RouteAccess(read="predict", write="admin")),
    (models.router, RouteAccess(read="predict", write="admin")),
    # A model's weights are worth more than the predictions a predict key is for.
    (model_files.router, RouteAccess(read="train", write="admin")),
    (metrics.router, RouteAccess(read="predict", write="admin")),
]
TELEMETRY_ACCESS = RouteAccess(read="admin", write="admin")

TAGS = [
    {"name": "jobs", "description": "Queue, watch and cancel training jobs."},
    {"name": "studies", "description": "The whole CNN lab as one request, and its report."},
    {"name": "models", "description": "Registered models, versions and aliases."},
    {"name": "predict", "description": "Classify images with a registered version."},
    {"name": "metrics", "description": "Per-class evaluation reports."},
    {"name": "tensorflow-serving", "description": "TensorFlow Serving compatible REST API."},
    {"name": "health", "description": "Liveness and readiness probes."},
    {"name": "monitoring", "description": "Service telemetry for Prometheus."},
]


async def _recover_orphaned_jobs_forever(services: Services) -> None:
    # Workers die; their leases expire. Whoever notices first requeues the job,
    # so a crash never leaves a job "running" forever.
    settings = services.settings
    interval = max(1.0, settings.job_lease_seconds / 2)
    staging_checked = -math.inf  # at the first sweep, then every quarter of the age
    studies_checked = time.monotonic()  # workers advance every running study as they start
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(
                requeue_orphaned_jobs,
                services.job_store,
                services.dispatcher.celery_app,
                settings.job_max_attempts,
                settings.job_resend_after_seconds,
                services.registry,
            )
        except Exception:
            logger.warning("could not check for orphaned jobs", exc_info=True)
        if time.monotonic() - studies_checked >= settings.job_resend_after_seconds:
            # As often as lost job messages are sent again: a study whose advance failed
            # when its job ended would otherwise wait for a worker to start.
            studies_checked = time.monotonic()
            try:
                await asyncio.to_thread(
                    send_running_studies_an_advance,
                    services.study_store,
                    services.dispatcher.celery_app,
                )
            except Exception:
                logger.warning("could not ask to advance running studies", exc_info=True)
        if time.monotonic() - staging_checked >= settings.staging_max_age_seconds / 4:
            # A training process killed while saving leaves its staging folder, and its
            # worker may live on for weeks (only the child died): workers clean up at
            # their start, the API here, so that the disk is given back either way.
            staging_checked = time.monotonic()
            try:
                removed = await asyncio.to_thread(
                    services.registry.cleanup_staging, settings.staging_max_age_seconds
                )
                if removed:
                    logger.info("removed %d staging folder(s) of crashed registrations", removed)
            except Exception:
                logger.warning("could not clean up staging folders", exc_info=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    services = Services(settings or get_settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Before the first request, not beside it: numba's compile (about 10 s on a
        # fresh install, a fraction of a second from the cache that `scripts/bootstrap`
        # and the image fill) enters warnings.catch_warnings() many times, and that
        # swaps a process-wide filter list, so on another thread it can drop or keep the
        # filters of a request doing the same. Until it is done the server does not
        # listen, as TF Serving does not before its model warm-up.
        await asyncio.get_running_loop().run_in_executor(None, png_kernel.warm_up)
        recovery = asyncio.create_task(_recover_orphaned_jobs_forever(services))
        try:
            yield
        finally:
            recovery.cancel()
            services.close()

    # Swagger UI and ReDoc served from the package, not a CDN: /docs works offline.
    app = FastAPIOffline(
        title="DaciaVision",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    telemetry = [] if services.settings.prometheus_open else [Depends(TELEMETRY_ACCESS)]
    install_monitoring(app, dependencies=telemetry)
    protected = [route for router, _ in ACCESS for route in router.routes]
    if telemetry:
        protected.extend(monitoring_router.routes)
    document_key_security(app, protected)
    for router, access in ACCESS:
        checks = [] if checks_access_itself(router, access) else [Depends(access)]
        app.include_router(router, dependencies=checks, responses=error_responses(401, 403))
    app.include_router(health.router)
    # The page and its scripts are open, like /docs: they hold no data, and every call
    # they make to the API carries the key the user typed in.
    app.include_router(dashboard.router)
    # By identity: routes define __eq__ (so are not hashable).
    access_by_route = {id(route): access for router, access in ACCESS for route in router.routes}
    check_access_before_body_validation(app, access_by_route)
    _install_guards(app, services)
    return app


def _install_guards(app: FastAPI, services: Services) -> None:
    """Middleware, innermost first: body limits, request timeout, CORS, host check,
    security headers."""
    settings = services.settings
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=body_limit_for(settings.max_request_bytes, settings.max_json_body_bytes),
    )
    app.add_middleware(RequestTimeoutMiddleware, timeout_seconds=settings.request_timeout_seconds)
    if services.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted(services.allowed_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            max_age=600,
        )
    hosts = host_policy(settings.allowed_hosts, services.keyring)
    if hosts is not None:
        app.add_middleware(TrustedHostMiddleware, policy=hosts)
    # Outermost: the host check's and the timeout's answers carry the headers too.
    app.add_middleware(SecurityHeadersMiddleware)
