"""Liveness and readiness probes."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from service.deps import ServicesDep

router = APIRouter(prefix="/health", tags=["health"])


class Liveness(BaseModel):
    status: str = "alive"


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/live", response_model=Liveness, summary="Is the process up")
def live() -> Liveness:
    """Always 200 while the process serves requests."""
    return Liveness()


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Can the service do its work",
    responses={503: {"model": Readiness, "description": "A dependency is unreachable."}},
)
def ready(services: ServicesDep, response: Response) -> Readiness:
    """200 when the registry is readable and writable and the broker and job store are
    reachable; 503 otherwise, saying which check failed and why."""
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
            checks[name] = f"unavailable: {type(error).__name__}: {error}"
    ready = all(value == "ok" for value in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = "5"
    return Readiness(status="ready" if ready else "not ready", checks=checks)
