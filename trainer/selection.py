"""Picking the best model: on validation figures only, never the test split.

The lab chose its best variation on the test set, which makes the reported test
accuracy of the winner optimistic. Here a candidate carries only what selection may
look at; the test split is not among its fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field

from trainer.errors import InvalidInputError


class Candidate(BaseModel):
    """A trained model as selection sees it."""

    label: str
    model_name: str
    version: int
    validation_accuracy: float
    validation_loss: float
    # Optional: selections recorded before it was kept still load.
    validation_samples: int | None = Field(
        default=None, description="Images in the validation split the accuracy was measured on."
    )


class Winner(Candidate):
    """The picked candidate, why it won, and what it was compared with."""

    reason: str
    candidates: list[Candidate] = Field(default_factory=list)


def pick_best(candidates: Sequence[Candidate]) -> Winner:
    """The highest validation accuracy; ties go to the lower validation loss, then the first."""
    if not candidates:
        raise InvalidInputError("there is nothing to pick from: no candidate models")
    ranked = sorted(
        enumerate(candidates),
        key=lambda item: (-item[1].validation_accuracy, item[1].validation_loss, item[0]),
    )
    best = ranked[0][1]
    if len(ranked) == 1:
        reason = f"{best.label} was the only candidate"
    else:
        runner_up = ranked[1][1]
        if runner_up.validation_accuracy == best.validation_accuracy:
            reason = (
                f"{best.label} tied with {runner_up.label} at validation accuracy "
                f"{best.validation_accuracy:.4f} and has the lower validation loss "
                f"({best.validation_loss:.4f} vs {runner_up.validation_loss:.4f})"
            )
        else:
            margin = best.validation_accuracy - runner_up.validation_accuracy
            reason = (
                f"{best.label} has the highest validation accuracy, "
                f"{best.validation_accuracy:.4f}, {margin:.4f} above {runner_up.label} "
                f"({runner_up.validation_accuracy:.4f})"
            ) + _within_sampling_error(best, runner_up, margin)
    return Winner(**best.model_dump(), reason=reason, candidates=list(candidates))


def _within_sampling_error(best: Candidate, runner_up: Candidate, margin: float) -> str:
    """A warning when the margin is within two standard errors of a validation accuracy.

    A pick is still made, since a study must go on, but a reader should know when the
    validation split cannot tell the two apart and a rerun may pick the other: the
    variations of the lab often lie that close. One standard error of an accuracy p on
    n images is sqrt(p(1 - p) / n); the paired difference of two models on the same
    images has a spread of the same order when they disagree on a fifth of them.
    """
    samples = best.validation_samples
    if not samples or runner_up.validation_samples != samples:
        return ""
    accuracy = best.validation_accuracy
    standard_error = math.sqrt(accuracy * (1 - accuracy) / samples)
    if margin >= 2 * standard_error:
        return ""
    return (
        f"; the margin is within two standard errors of an accuracy on {samples:,} "
        f"validation images ({standard_error:.4f} each), so this split barely tells the "
        "two apart and a rerun may pick the other"
    )
