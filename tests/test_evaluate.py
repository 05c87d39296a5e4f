"""The evaluation report has the right numbers for known predictions."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.evaluate import WEAK_MARGIN, evaluate_predictions

CLASSES = ("cat", "dog", "bird")


def _one_hot(predicted: list[int]) -> np.ndarray:
    probabilities = np.full((len(predicted), 3), 0.1, dtype=np.float32)
    probabilities[np.arange(len(predicted)), predicted] = 0.8
    return probabilities


def test_report_numbers_for_known_predictions() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    predicted = [0, 0, 0, 0, 1, 1, 1, 1, 2, 0, 1, 1]
    report = evaluate_predictions(y_true, _one_hot(predicted), CLASSES)

    assert report.samples == 12
    assert report.accuracy == pytest.approx(9 / 12)
    cat, dog, bird = report.per_class
    assert cat.precision == pytest.approx(4 / 5) and cat.recall == 1.0
    assert cat.f1 == pytest.approx(2 * 0.8 * 1.0 / 1.8, abs=1e-6)
    assert dog.precision == pytest.approx(4 / 6) and dog.recall == 1.0
    assert (bird.precision, bird.recall) == (1.0, 0.25)
    assert bird.f1 == pytest.approx(0.4)
    assert [entry.support for entry in report.per_class] == [4, 4, 4]
    assert report.macro_avg.f1 == pytest.approx((cat.f1 + dog.f1 + bird.f1) / 3, abs=1e-6)
    assert report.weighted_avg.support == 12
    assert report.confusion_matrix.labels == list(CLASSES)
    assert report.confusion_matrix.matrix == [[4, 0, 0], [0, 4, 0], [1, 2, 1]]
    # Loss: every sample's true-class probability is 0.8 or 0.1.
    expected_loss = -(9 * np.log(0.8) + 3 * np.log(0.1)) / 12
    assert report.loss == pytest.approx(expected_loss, abs=1e-4)


def test_weak_classes_are_those_clearly_below_macro_f1() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    predicted = [0, 0, 0, 0, 1, 1, 1, 1, 2, 0, 1, 1]
    report = evaluate_predictions(y_true, _one_hot(predicted), CLASSES)
    assert [weak.class_name for weak in report.weak_classes] == ["bird"]
    assert report.weak_classes[0].below_macro_f1_by > WEAK_MARGIN
    assert "macro-average F1" in report.weak_class_rule


def test_a_perfect_model_has_no_weak_classes_and_serializes() -> None:
    y_true = np.array([0, 1, 2, 0, 1, 2])
    report = evaluate_predictions(y_true, _one_hot(y_true.tolist()), CLASSES)
    assert report.accuracy == 1.0 and report.weak_classes == []
    dumped = report.model_dump(mode="json")
    assert dumped["per_class"][2]["class_name"] == "bird"
    assert dumped["confusion_matrix"]["matrix"][1] == [0, 2, 0]


def test_classes_never_predicted_get_zero_scores_without_warnings() -> None:
    y_true = np.array([0, 1, 2])
    report = evaluate_predictions(y_true, _one_hot([0, 0, 0]), CLASSES)
    assert report.per_class[1].precision == 0.0 and report.per_class[1].f1 == 0.0
