"""Per-class evaluation: the report behind ``/metrics``, JSON-serializable.

Weak classes: a class is weak when its F1 is more than ``WEAK_MARGIN`` (0.05)
below the macro-average F1. The margin keeps ordinary class-to-class noise
from flagging anything on a well-balanced model; the list is sorted weakest
first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

WEAK_MARGIN = 0.05
WEAK_CLASS_RULE = f"F1 more than {WEAK_MARGIN} below the macro-average F1"


class ClassMetrics(BaseModel):
    class_index: int
    class_name: str
    precision: float
    recall: float
    f1: float
    support: int


class AverageMetrics(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class ConfusionMatrix(BaseModel):
    """Rows are true classes, columns predicted classes, both in ``labels`` order."""

    labels: list[str]
    matrix: list[list[int]]


class WeakClass(BaseModel):
    class_name: str
    f1: float
    below_macro_f1_by: float


class EvaluationReport(BaseModel):
    samples: int
    accuracy: float
    loss: float
    per_class: list[ClassMetrics]
    macro_avg: AverageMetrics
    weighted_avg: AverageMetrics
    confusion_matrix: ConfusionMatrix
    weak_classes: list[WeakClass]
    weak_class_rule: str = WEAK_CLASS_RULE


def _average(entry: dict[str, float]) -> AverageMetrics:
    return AverageMetrics(
        precision=round(entry["precision"], 6),
        recall=round(entry["recall"], 6),
        f1=round(entry["f1-score"], 6),
        support=int(entry["support"]),
    )


def import_metrics_library() -> None:
    """Import scikit-learn's metrics now, in a process whose forked children will evaluate."""
    import sklearn.metrics  # noqa: F401


def evaluate_predictions(
    y_true: NDArray[np.integer[Any]],
    probabilities: NDArray[np.floating[Any]],
    class_names: Sequence[str],
) -> EvaluationReport:
    """Build the report from true labels and predicted class probabilities."""
    # Imported here: the API and the CLI read reports through the model card, and
    # scikit-learn's import (about 1.6 s) would slow every start of theirs.
    from sklearn.metrics import classification_report, confusion_matrix, log_loss

    labels = list(range(len(class_names)))
    y_pred = probabilities.argmax(axis=1)
    report: dict[str, Any] = classification_report(
        y_true, y_pred, labels=labels, target_names=list(class_names),
        output_dict=True, zero_division=0,
    )  # fmt: skip
    per_class = [
        ClassMetrics(
            class_index=index,
            class_name=name,
            precision=round(report[name]["precision"], 6),
            recall=round(report[name]["recall"], 6),
            f1=round(report[name]["f1-score"], 6),
            support=int(report[name]["support"]),
        )
        for index, name in enumerate(class_names)
    ]
    macro = _average(report["macro avg"])
    weak = sorted(
        (
            WeakClass(
                class_name=entry.class_name,
                f1=entry.f1,
                below_macro_f1_by=round(macro.f1 - entry.f1, 6),
            )
            for entry in per_class
            if entry.f1 < macro.f1 - WEAK_MARGIN
        ),
        key=lambda weak_class: weak_class.f1,
    )
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    clipped = np.clip(probabilities, 1e-7, 1.0)
    return EvaluationReport(
        samples=len(y_true),
        accuracy=round(float(np.mean(y_pred == y_true)), 6),
        loss=round(
            float(log_loss(y_true, clipped / clipped.sum(1, keepdims=True), labels=labels)), 6
        ),
        per_class=per_class,
        macro_avg=macro,
        weighted_avg=_average(report["weighted avg"]),
        confusion_matrix=ConfusionMatrix(labels=list(class_names), matrix=matrix.tolist()),
        weak_classes=weak,
    )


def predict_probabilities(
    model: Any, images: NDArray[np.float32], batch_size: int = 256
) -> NDArray[np.float32]:
    """Class probabilities for ``images`` in batches of ``batch_size`` network inputs:
    fewer images a batch for a model with test-time views."""
    from trainer.test_time import images_per_batch  # Keras, loaded already with any model

    batch = images_per_batch(model, batch_size)
    return np.asarray(model.predict(images, batch_size=batch, verbose=0), dtype=np.float32)


def evaluate(
    model: Any,
    images: NDArray[np.float32],
    labels: NDArray[np.integer[Any]],
    class_names: Sequence[str],
) -> EvaluationReport:
    """Evaluate a Keras classifier on one labelled split."""
    return evaluate_predictions(labels, predict_probabilities(model, images), class_names)
