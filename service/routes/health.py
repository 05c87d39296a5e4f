"""Liveness and readiness probes."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from fastapi import APIRouter, Response, status

from service.deps import Services, ServicesDep
from service.schemas import Liveness, Readiness

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/health", tags=["health"])

# Probes get threads of their own: when inference, decoding or synchronous routes
# fill the shared pool, /health/ready still answers (and /health/live needs none).
_PROBE_THREADS = anyio.CapacityLimiter(2)


@router.get("/live", response_model=Liveness, summary="Is the process up")
async def live() -> Liveness:
    """Always 200 while the process serves requests."""
    return Liveness()


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Can the service do its work",
    responses={503: {"model": Readiness, "description": "A dependency is unreachable."}},
)
async def ready(services: ServicesDep, response: Response) -> Readiness:
    """200 when the registry is readable and writable and the broker and job store are
    reachable; 503 otherwise, saying which check failed (the reason is in the log)."""
    checks = await anyio.to_thread.run_sync(_run_checks, services, limiter=_PROBE_THREADS)
    ready = all(value == "ok" for value in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = "5"
    return Readiness(status="ready" if ready else "not ready", checks=checks)


def _run_checks(services: Services) -> dict[str, str]:
    # Lambdas: building a part (creating the registry dir, opening the job store)
    # can fail too, and must show as a failed check, not a 500.
    probes: dict[str, Callable[[], None]] = {
        "registry": lambda: services.registry.ping(),
        "broker": lambda: services.dispatcher.ping(),
        "job_store": lambda: services.job_store.ping(),
    }
    checks: dict[str, str] = {}
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as error:  # noqa: BLE001 - report any failure as "not ready"
            # Which part is down, not why: driver messages name hosts, paths and ports.
            logger.warning("readiness check %s failed: %s: %s", name, type(error).__name__, error)
            checks[name] = "unavailable"
    return checks
