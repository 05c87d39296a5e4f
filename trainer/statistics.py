"""Paired statistics on one test set: bootstrap intervals and McNemar's exact test.

Every model of a comparison predicted the same test images in the same order
(``card.test_predictions``), so comparisons are paired: McNemar's test looks only at
the images the two models disagree on, and the bootstrap resamples images, keeping
each image's pair of predictions together. Pure NumPy; seeded, so a report rebuilt
from the same cards has the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, Field

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20240611

IntArray = NDArray[np.integer[Any]]


class Interval(BaseModel):
    """A point estimate with its 95% percentile-bootstrap interval."""

    estimate: float
    low: float
    high: float


class McNemarResult(BaseModel):
    """McNemar's exact test: binomial on the images exactly one of the models got right."""

    only_a_correct: int
    only_b_correct: int
    p_value: float
    p_value_holm: float | None = Field(
        None, description="Holm-adjusted over the report's family of tests, when part of one."
    )
    significant: bool = Field(description="p (Holm-adjusted when given) below alpha.")
    alpha: float = ALPHA


def holm_adjusted(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: controls the chance of any false "better" in a family."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def with_holm(results: list[McNemarResult]) -> list[McNemarResult]:
    """The tests of one family with Holm-adjusted p-values deciding significance."""
    adjusted = holm_adjusted([result.p_value for result in results])
    return [
        result.model_copy(update={"p_value_holm": p, "significant": p < result.alpha})
        for result, p in zip(results, adjusted, strict=True)
    ]


def binomial_two_sided_p(successes: int, trials: int) -> float:
    """Exact two-sided p-value of ``successes`` in ``trials`` under p = 1/2.

    With p = 1/2 the distribution is symmetric, so the two-sided p-value is twice
    the smaller tail (capped at 1), which is what scipy's ``binomtest`` gives too.
    """
    if trials == 0:
        return 1.0
    k = min(successes, trials - successes)
    tail = sum(math.comb(trials, i) for i in range(k + 1))
    # Exact integer arithmetic, then one division: no underflow for large n.
    return float(min(1.0, 2 * tail / 2**trials))


def mcnemar_exact(
    y_true: IntArray, predictions_a: IntArray, predictions_b: IntArray
) -> McNemarResult:
    """McNemar's exact test of two classifiers on the same images."""
    correct_a = np.asarray(predictions_a) == np.asarray(y_true)
    correct_b = np.asarray(predictions_b) == np.asarray(y_true)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    p_value = binomial_two_sided_p(only_a, only_a + only_b)
    return McNemarResult(
        only_a_correct=only_a,
        only_b_correct=only_b,
        p_value=p_value,
        significant=p_value < ALPHA,
    )


def _resample_indices(samples: int, resamples: int, seed: int) -> IntArray:
    generator = np.random.default_rng(seed)
    return generator.integers(0, samples, size=(resamples, samples))


def _interval(estimate: float, replicates: NDArray[np.floating[Any]]) -> Interval:
    low, high = np.percentile(replicates, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return Interval(
        estimate=round(estimate, 6), low=round(float(low), 6), high=round(float(high), 6)
    )


def accuracy_interval(
    y_true: IntArray,
    predictions: IntArray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """Accuracy with its 95% bootstrap interval over the test images."""
    correct = (np.asarray(predictions) == np.asarray(y_true)).astype(np.float64)
    indices = _resample_indices(len(correct), resamples, seed)
    return _interval(float(correct.mean()), correct[indices].mean(axis=1))


def per_class_f1(y_true: IntArray, predictions: IntArray, num_classes: int) -> NDArray[np.float64]:
    """F1 of each class; 0 where a class was neither present nor predicted."""
    y_true, predictions = np.asarray(y_true), np.asarray(predictions)
    true_positive = np.bincount(y_true[predictions == y_true], minlength=num_classes)
    denominator = np.bincount(predictions, minlength=num_classes) + np.bincount(
        y_true, minlength=num_classes
    )
    safe = np.maximum(denominator, 1)
    return np.where(denominator > 0, 2 * true_positive / safe, 0.0)


def f1_delta_intervals(
    y_true: IntArray,
    predictions_a: IntArray,
    predictions_b: IntArray,
    num_classes: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[Interval]:
    """Per-class F1 of b minus a, each with a paired 95% bootstrap interval."""
    y_true, a, b = np.asarray(y_true), np.asarray(predictions_a), np.asarray(predictions_b)
    estimate = per_class_f1(y_true, b, num_classes) - per_class_f1(y_true, a, num_classes)
    indices = _resample_indices(len(y_true), resamples, seed)
    replicates = np.stack(
        [
            per_class_f1(y_true[rows], b[rows], num_classes)
            - per_class_f1(y_true[rows], a[rows], num_classes)
            for rows in indices
        ]
    )
    return [_interval(float(estimate[c]), replicates[:, c]) for c in range(num_classes)]
