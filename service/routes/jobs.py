"""Training jobs: submit, list, inspect, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response, status

from service.deps import (
    DispatcherDep,
    JobStoreDep,
    LimitQuery,
    OffsetQuery,
    RegistryDep,
    SettingsDep,
)
from service.errors import error_responses
from service.idempotency import IdempotencyKeyHeader, derived_id, mark_replayed
from service.jobs import submit_job
from service.limits import OffLoopJsonRoute
from service.schemas import JobList, JobView
from trainer.architectures import ARCHITECTURES
from trainer.spec import AnyTrainingSpec, TrainingSpec
from worker.jobstore import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=OffLoopJsonRoute)

JobIdPath = Annotated[str, Path(max_length=64, description="The id `POST /jobs` returned.")]
# Far past any real job list, far below SQLite's 64-bit integers.

# Each architecture brings its own ready-made examples; the smoke test uses the default one.
SPEC_EXAMPLES: dict[str, Any] = {
    **{
        name: example
        for definition in ARCHITECTURES.values()
        for name, example in definition.examples.items()
    },
    "smoke_test": {
        "summary": "A one-minute smoke test on scikit-learn's bundled digits",
        "value": {"dataset": "digits", "epochs": 5, "model_name": "digits-smoke"},
    },
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    summary="Queue a training job",
    responses=error_responses(404, 422, 503),
)
def create_job(
    spec: Annotated[TrainingSpec, Body(openapi_examples=SPEC_EXAMPLES)],
    store: JobStoreDep,
    dispatcher: DispatcherDep,
    registry: RegistryDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobView:
    """Validate the spec against the architecture's hyperparameter schema, store the job as
    `queued` and hand it to a worker. Poll `GET /jobs/{job_id}` for per-epoch progress; on
    success the job names the registered `model_name` and `version`. Send an
    `Idempotency-Key` to make retries safe."""
    typed_spec: AnyTrainingSpec = spec
    job_id = derived_id(request, idempotency_key)
    job, replayed = submit_job(typed_spec, store, dispatcher, registry, settings, job_id)
    mark_replayed(response, replayed)
    return JobView.from_job(job)


@router.get(
    "",
    response_model=JobList,
    summary="List jobs, newest first",
    responses=error_responses(422),
)
def list_jobs(
    store: JobStoreDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    model_name: Annotated[
        str | None, Query(max_length=64, description="Only jobs for this model.")
    ] = None,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> JobList:
    """Jobs newest first, optionally filtered by status and model name, a page at a time."""
    jobs, total = store.list(status=status, model_name=model_name, limit=limit, offset=offset)
    return JobList(
        items=[JobView.from_job(job) for job in jobs], total=total, limit=limit, offset=offset
    )


@router.get(
    "/{job_id}",
    response_model=JobView,
    summary="Status, progress and result of a job",
    responses=error_responses(404, 422),
)
def get_job(store: JobStoreDep, job_id: JobIdPath) -> JobView:
    """Status (`queued`, `running`, `succeeded`, `failed`, `cancelled`), the spec, the last
    epoch's figures and the whole per-epoch history, timestamps, the error of a failed job,
    and the registered `model_name` and `version` of a succeeded one."""
    return JobView.from_job(store.get(job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobView,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Cancel a job",
    responses=error_responses(404, 409, 422),
)
def cancel_job(store: JobStoreDep, job_id: JobIdPath) -> JobView:
    """A queued job is cancelled at once; a running one stops within one compiled training
    call (8 batches) and ends `cancelled` with no version registered. Cancelling an ended
    job is a 409."""
    return JobView.from_job(store.request_cancel(job_id))
