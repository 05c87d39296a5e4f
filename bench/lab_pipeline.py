"""The lab's own training pipeline, the baseline the side-by-side scripts measure against.

The lab compiled its models with Adam and sparse cross-entropy and fed ``model.fit``
NumPy arrays, in float32 whatever the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from trainer.architectures import build_model
from trainer.data import PreparedData, Split, prepare
from trainer.study_presets import LAB_FRACTION


def lab_sample(data_dir: Path) -> PreparedData:
    """The lab's data: a stratified 25% of CIFAR-10, seed 42, with a validation split."""
    return prepare("cifar10", data_dir, sample_fraction=LAB_FRACTION, seed=42)


def float32_model(architecture: str, hyperparameters: BaseModel, data: PreparedData) -> Any:
    """The architecture as the lab built it: float32 even where bfloat16 is native."""
    float32 = hyperparameters.model_copy(update={"bfloat16": False})
    return build_model(architecture, float32, data.info.input_shape, data.info.num_classes)


def compile_as_the_lab(model: Any, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def test_accuracy(model: Any, test: Split) -> float:
    probabilities = model.predict(test.x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=1) == test.y))
