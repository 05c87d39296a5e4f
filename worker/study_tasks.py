"""Celery tasks of studies: advance one, build its report; thin and idempotent."""

from __future__ import annotations

from typing import Any

from celery import signals

from worker.app import app
from worker.settings import get_settings
from worker.studies.runtime import (
    ADVANCE_STUDY_TASK,
    STUDY_REPORT_TASK,
    advance,
    advance_running_studies,
)


@app.task(name=ADVANCE_STUDY_TASK, acks_late=True, ignore_result=True)
def advance_study_task(study_id: str) -> dict[str, Any]:
    """Move study ``study_id`` on as far as its jobs allow; safe to deliver twice."""
    study = advance(study_id, get_settings(), app)
    return {"study_id": study_id, "status": study.status}


@app.task(name=STUDY_REPORT_TASK, acks_late=True, ignore_result=True)
def study_report_task(study_id: str) -> dict[str, Any]:
    """Build and publish the study's report, then end its report stage."""
    from worker.study_report import publish_study_report

    settings = get_settings()
    publish_study_report(study_id, settings)
    study = advance(study_id, settings, app)
    return {"study_id": study_id, "status": study.status}


@signals.worker_ready.connect
def _advance_running_studies(**_: Any) -> None:
    # A study whose worker died between a job's end and advancing moves on here.
    advance_running_studies(get_settings(), app)
