"""Domain errors shared by the trainer, the worker and the service.

Each error carries a stable ``code``; the service maps codes to HTTP statuses
in one table (``service/errors.py``), the CLI prints the message. Messages say
what was received, what was expected and how to fix it.
"""

from __future__ import annotations

from typing import Any


class DaciaVisionError(Exception):
    """Base of every error a user can cause or fix."""

    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFoundError(DaciaVisionError):
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class VersionNotFoundError(NotFoundError):
    code = "version_not_found"


class AliasNotFoundError(NotFoundError):
    code = "alias_not_found"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class DatasetNotFoundError(NotFoundError):
    code = "dataset_not_found"


class ConflictError(DaciaVisionError):
    code = "conflict"


class LeaseLostError(ConflictError):
    """A worker wrote to a job it no longer holds (its lease expired, another took over)."""

    code = "lease_lost"


class ResourceBudgetError(DaciaVisionError):
    """A job would need more parameters, memory or compute than the service allows."""

    code = "resource_budget_exceeded"


class InvalidInputError(DaciaVisionError):
    code = "invalid_input"


class InvalidModelNameError(InvalidInputError):
    code = "invalid_model_name"


class CorruptModelError(DaciaVisionError):
    """A registered model file no longer matches the checksum in its card."""

    code = "corrupt_model"


class TrainingCancelledError(DaciaVisionError):
    code = "cancelled"


class TrainingDivergedError(DaciaVisionError):
    """The loss stopped being a number: the weights are lost, so training ends here."""

    code = "training_diverged"
