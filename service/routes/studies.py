"""Studies: run the CNN lab (or explicit stages) as one request; its report."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, status
from fastapi.responses import Response

from service.deps import (
    DispatcherDep,
    JobStoreDep,
    LimitQuery,
    OffsetQuery,
    RegistryDep,
    SettingsDep,
    StudyStoreDep,
)
from service.errors import error_responses
from service.idempotency import IdempotencyKeyHeader, derived_id, mark_replayed
from service.plots import MEDIA_TYPES, ImageFormat, study_plot
from service.schemas_studies import StudyList, StudyView
from service.studies import cancel_study, create_study, study_view
from service.study_render import ReportFormat, load_report, negotiate, render_report
from trainer.study_spec import StudyRequest
from worker.studies import StudyStatus

router = APIRouter(prefix="/studies", tags=["studies"])

StudyIdPath = Annotated[str, Path(max_length=64, description="The id `POST /studies` returned.")]

EXAMPLES: dict[str, Any] = {
    "cnn_lab": {"summary": "The whole CNN lab (hours on CPU)", "value": {"preset": "cnn-lab"}},
    "quick": {
        "summary": "A few-minute demo of the lab on digits",
        "value": {"preset": "cnn-lab", "quick": True, "include_reference": False},
    },
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StudyView,
    summary="Start a study",
    responses=error_responses(404, 422, 503),
)
def post_study(
    request: Annotated[StudyRequest, Body(openapi_examples=EXAMPLES)],
    settings: SettingsDep,
    studies: StudyStoreDep,
    jobs: JobStoreDep,
    dispatcher: DispatcherDep,
    registry: RegistryDep,
    http_request: Request,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> StudyView:
    """Store the study's stages and queue the ones without dependencies; the workers start
    each later stage when the stages it depends on have succeeded. Send an
    `Idempotency-Key` to make retries safe."""
    study_id = derived_id(http_request, idempotency_key)
    study, replayed = create_study(request, settings, studies, jobs, dispatcher, registry, study_id)
    mark_replayed(response, replayed)
    return study_view(study, jobs)


@router.get(
    "",
    response_model=StudyList,
    summary="List studies, newest first",
    responses=error_responses(422),
)
def list_studies(
    studies: StudyStoreDep,
    jobs: JobStoreDep,
    status: Annotated[StudyStatus | None, Query(description="Only studies in this status.")] = None,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> StudyList:
    """Studies with their stages and live progress, a page at a time."""
    items, total = studies.list(status=status, limit=limit, offset=offset)
    views = [study_view(study, jobs) for study in items]
    return StudyList(items=views, total=total, limit=limit, offset=offset)


@router.get(
    "/{study_id}",
    response_model=StudyView,
    summary="Stages, progress and winners of a study",
    responses=error_responses(404, 422),
)
def get_study(studies: StudyStoreDep, jobs: JobStoreDep, study_id: StudyIdPath) -> StudyView:
    """Each stage with its status, its jobs' live progress and, for stages that pick, the
    winner with the reason (validation figures only)."""
    return study_view(studies.get(study_id), jobs)


@router.post(
    "/{study_id}/cancel",
    response_model=StudyView,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Cancel a study",
    responses=error_responses(404, 409, 422),
)
def post_cancel(studies: StudyStoreDep, jobs: JobStoreDep, study_id: StudyIdPath) -> StudyView:
    """Cancels the study's queued and running jobs; stages not started never start."""
    return study_view(cancel_study(study_id, studies, jobs), jobs)


@router.get(
    "/{study_id}/report",
    summary="The study's report: JSON, offline HTML or Markdown",
    responses={
        **error_responses(404, 409, 422),
        200: {"content": {"application/json": {}, "text/html": {}, "text/markdown": {}}},
    },
)
def get_report(
    request: Request,
    settings: SettingsDep,
    studies: StudyStoreDep,
    study_id: StudyIdPath,
    format: Annotated[
        ReportFormat | None, Query(description="Else chosen from the Accept header.")
    ] = None,
) -> Response:
    """Architectures, the variations and why the winner won, the comparison table with 95%
    intervals, McNemar's tests, per-class changes from augmentation, plots and a discussion
    drawn from the figures. 409 until the study's report stage has run."""
    study = studies.get(study_id)  # 404 for an unknown study
    report = load_report(settings, study_id, study.status)
    chosen = format or negotiate(request.headers.get("accept", ""))
    return render_report(report, chosen, request)


@router.get(
    "/{study_id}/plots/{name}.{image_format}",
    summary="One plot of the study's report as SVG or PNG",
    responses={
        **error_responses(404, 409, 422),
        200: {"content": {media_type: {} for media_type in MEDIA_TYPES.values()}},
    },
)
def get_study_plot(
    settings: SettingsDep,
    studies: StudyStoreDep,
    study_id: StudyIdPath,
    name: Annotated[str, Path(max_length=100, description="The plot's name in the report.")],
    image_format: ImageFormat,
) -> Response:
    """Stable URLs for embedding: `accuracy_vs_cost`, `f1_{index}`, ... as `.svg` or as
    a small `.png`; the Markdown report links each one."""
    study = studies.get(study_id)
    report = load_report(settings, study_id, study.status)
    return Response(study_plot(report, name, image_format), media_type=MEDIA_TYPES[image_format])
