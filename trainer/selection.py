"""Picking the best model: on validation figures only, never the test split.

The lab chose its best variation on the test set, which makes the reported test
accuracy of the winner optimistic. Here a candidate carries only what selection may
look at; the test split is not among its fields.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from trainer.card import ModelCard
from trainer.errors import InvalidInputError


class Candidate(BaseModel):
    """A trained model as selection sees it."""

    label: str
    model_name: str
    version: int
    validation_accuracy: float
    validation_loss: float


class Winner(Candidate):
    """The picked candidate, why it won, and what it was compared with."""

    reason: str
    candidates: list[Candidate] = Field(default_factory=list)


def candidate_from_card(label: str, card: ModelCard) -> Candidate:
    """The validation figures of a registered version."""
    return Candidate(
        label=label,
        model_name=card.model_name,
        version=card.version,
        validation_accuracy=card.metrics.validation.accuracy,
        validation_loss=card.metrics.validation.loss,
    )


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
            )
    return Winner(**best.model_dump(), reason=reason, candidates=list(candidates))
