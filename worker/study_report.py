"""Builds a finished study's report in a worker and publishes it by rename.

The worker has the datasets, so it recomputes the true test labels here (not the
API); the report is written once as JSON and rendered by the API on request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import numpy as np

from trainer.card import ModelCard
from trainer.data import Images, load_raw, stratified_sample
from trainer.files import write_json_atomically
from trainer.registry import FileModelRegistry
from trainer.statistics import IntArray
from trainer.study_report import ReportInput, StudyReport, build_study_report, sample_key
from trainer.study_spec import stage_title
from worker.settings import Settings
from worker.studies.base import with_stage_outcome
from worker.studies.models import Study
from worker.studies.runtime import reports_dir, study_store_for

logger = logging.getLogger(__name__)
REPORT_FILE = "report.json"


def report_path(settings: Settings, study_id: str) -> Path:
    return reports_dir(settings) / study_id / REPORT_FILE


def true_test_labels(card: ModelCard, data_dir: Path | None) -> IntArray:
    """The card's test labels, recomputed with the sampling training used."""
    raw = load_raw(card.dataset.name, data_dir)
    # The split depends only on the labels, fraction and seed: positions stand in for images.
    positions = cast(Images, np.arange(len(raw.y_test)))
    _, labels = stratified_sample(
        positions, raw.y_test, card.dataset.sample_fraction, card.dataset.seed
    )
    return labels


def report_inputs(study: Study, registry: FileModelRegistry) -> list[ReportInput]:
    """Every registered model of the study's succeeded train stages, in stage order."""
    inputs: list[ReportInput] = []
    key_by_model = {}
    for stage in study.stages:
        if stage.spec.kind != "train" or stage.status != "succeeded":
            continue
        for index, (training, model) in enumerate(
            zip(stage.spec.trainings, stage.models, strict=True)
        ):
            assert model.version is not None  # a succeeded stage's jobs all registered
            key = f"{stage.name}/{index}"
            key_by_model[model.model_name] = key
            # Before/after per class: only for retrains that change the augmentation.
            source = training.from_winner if "augmentation" in training.overrides else None
            base = study.stage(source).winner if source else None
            inputs.append(
                ReportInput(
                    key=key,
                    stage=stage.name,
                    label=stage_title(stage.name, model.label),
                    card=registry.get_card(model.model_name, model.version),
                    compared=stage.winner is None
                    or stage.winner.model_name == model.model_name
                    or not stage.spec.picks,
                    base_key=key_by_model.get(base.model_name) if base else None,
                )
            )
    return inputs


def build_report(study: Study, settings: Settings) -> StudyReport:
    registry = FileModelRegistry(settings.resolved_registry_dir)
    inputs = report_inputs(study, registry)
    labels: dict[str, IntArray] = {}
    for entry in inputs:
        test_set = sample_key(entry.card)
        if test_set not in labels:
            labels[test_set] = true_test_labels(entry.card, settings.resolved_data_dir)
    selections = {
        stage.name: stage.winner
        for stage in study.stages
        if stage.winner is not None and stage.spec.picks
    }
    return build_study_report(study.study_id, study.name, inputs, labels, selections)


def publish_study_report(study_id: str, settings: Settings) -> None:
    """Write the report, then end the report stage (failed, with the reason, on error)."""
    store = study_store_for(settings)
    study = store.get(study_id)
    stage = next((s for s in study.stages if s.spec.kind == "report"), None)
    if stage is None or stage.status != "running":
        return  # already done by an earlier delivery
    error = None
    try:
        report = build_report(study, settings)
        path = report_path(settings, study_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, report.model_dump(mode="json"))
    except Exception as problem:
        logger.exception("the report of study %s failed", study_id)
        error = f"{type(problem).__name__}: {problem}"
    store.update(study_id, lambda s, now: with_stage_outcome(s, stage.name, error, now))
