"""Loading a registered model file: in the service, or wherever it was downloaded to."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_model(path: str | Path) -> Any:
    """The Keras model in a registered ``model.keras``, for inference (not compiled).

    Some architectures save layers of this project (test-time views, whitening, fused
    batch normalization); importing their modules registers them with Keras. ``safe_mode``
    refuses lambda layers and other code a file could carry.
    """
    import keras  # deferred: importing this module never loads TensorFlow

    from trainer import batch_norm, test_time, whitening  # noqa: F401

    return keras.saving.load_model(path, safe_mode=True, compile=False)
