"""Response and request bodies of the jobs, models, metrics and health routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, computed_field

from trainer.evaluate import EvaluationReport
from trainer.spec_base import MAX_VERSION
from worker.jobstore import EpochProgress, Job, JobError, JobStatus

# How the query parameters naming a model and a version are documented.
MODEL_NAME_DOC: dict[str, Any] = {
    "description": "Registered model name.",
    "examples": ["cifar10-custom"],
}
VERSION_DOC: dict[str, Any] = {
    "description": "Version number or alias; empty means the `production` alias if set, "
    "else the latest version.",
    "examples": ["3", "production"],
    # An alias has at most 64 characters and a version number 10 digits; a longer
    # digit string would cost Python's int() and then be refused anyway.
    "max_length": 64,
}


class JobView(BaseModel):
    """A training job as clients see it."""

    job_id: str
    status: JobStatus
    model_name: str = Field(description="Where the result is (or will be) registered.")
    version: int | None = Field(None, description="The registered version, once succeeded.")
    spec: dict[str, Any] = Field(description="The validated training spec, defaults filled in.")
    progress: EpochProgress | None = Field(None, description="The last finished epoch.")
    history: list[EpochProgress] = Field(default_factory=list)
    error: JobError | None = None
    cancel_requested: bool = False
    attempts: int = Field(0, description="How many times a worker started this job.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime

    @classmethod
    def from_job(cls, job: Job) -> JobView:
        return cls.model_validate(job.model_dump(exclude={"lease_expires_at", "worker"}))


class JobList(BaseModel):
    items: list[JobView]
    total: int = Field(description="Jobs matching the filters, over all pages.")
    limit: int
    offset: int


class VersionSummary(BaseModel):
    version: int
    created_at: str | None = None
    architecture: str | None = None
    dataset: str | None = None
    test_accuracy: float | None = None
    aliases: list[str] = Field(default_factory=list)
    job_id: str | None = None
    corrupt: bool = Field(False, description="Its card is unreadable: it cannot be served.")


class ModelSummaryView(BaseModel):
    model_name: str
    latest_version: int | None
    versions: list[int]
    aliases: dict[str, int]


class ModelDetail(BaseModel):
    model_name: str
    latest_version: int | None
    aliases: dict[str, int]
    versions: list[VersionSummary]


class AliasUpdate(BaseModel):
    version: int = Field(ge=1, le=MAX_VERSION, description="The version the alias should point to.")

    model_config = {"json_schema_extra": {"examples": [{"version": 2}]}}


class AliasChangeView(BaseModel):
    model_name: str
    alias: str
    from_version: int | None
    to_version: int | None = Field(description="Empty when the alias was deleted.")
    changed_at: str


class MetricsReport(EvaluationReport):
    """The per-class evaluation of one version on its held-out test split."""

    model_name: str
    version: int
    dataset: str
    architecture: str
    parameter_count: int
    training_seconds: float
    epochs_run: int
    final_train_accuracy: float = Field(
        description="The running training accuracy of the epoch whose weights the model "
        "holds (the last, or early stopping's best), with dropout and augmentation on."
    )
    validation_accuracy: float
    generalization_gap: float = Field(
        description="final_train_accuracy minus validation accuracy (the lab's gap)."
    )
    train_accuracy: float | None = Field(
        None,
        description="The training split after training, measured as validation is (no "
        "dropout, no augmentation), on all of it or a random 2,500 of its images if it has "
        "more; null for versions trained before 2026-12-05.",
    )
    history: list[EpochProgress]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def test_samples(self) -> int:
        """Images in the test split (the same as `samples`)."""
        return self.samples


class VersionRef(BaseModel):
    model_name: str
    version: int


class ClassDifference(BaseModel):
    class_name: str
    precision_a: float
    precision_b: float
    recall_a: float
    recall_b: float
    f1_a: float
    f1_b: float
    f1_delta: float = Field(description="f1_b − f1_a: positive means b is better.")
    support_a: int
    support_b: int


class MetricsComparison(BaseModel):
    a: VersionRef
    b: VersionRef
    accuracy_a: float
    accuracy_b: float
    accuracy_delta: float
    macro_f1_a: float
    macro_f1_b: float
    macro_f1_delta: float
    per_class: list[ClassDifference]
    improved_classes: list[str] = Field(description="F1 up by more than 0.01 from a to b.")
    regressed_classes: list[str] = Field(description="F1 down by more than 0.01 from a to b.")
    weak_classes_a: list[str]
    weak_classes_b: list[str]


class Liveness(BaseModel):
    status: str = "alive"


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]
