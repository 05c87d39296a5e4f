"""One epoch's figures: what training reports, the job store keeps and the API shows.

Free of TensorFlow, so the service and the job store can share the type.
"""

from __future__ import annotations

from pydantic import BaseModel


class EpochProgress(BaseModel):
    """Metrics of one finished epoch, as reported by the training callback."""

    epoch: int
    epochs: int
    loss: float
    accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    seconds: float
    learning_rate: float | None = None
