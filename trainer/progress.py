"""One epoch's figures: what training reports, the job store keeps and the API shows.

Free of TensorFlow, so the service and the job store can share the type.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EpochProgress(BaseModel):
    """Metrics of one finished epoch, as reported by the training callback."""

    # pydantic writes NaN to JSON as null, which a required float cannot read back: a
    # stored NaN would make the job's record unreadable. Refuse it when it is made.
    model_config = ConfigDict(allow_inf_nan=False)

    epoch: int
    epochs: int
    loss: float
    accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    seconds: float
    learning_rate: float | None = None
