"""Discrimination and calibration metrics of predicted probabilities (scikit-learn, numpy).

Functions that need both outcomes return None when the labels hold a single class.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score, roc_curve

_EPS = 1e-6
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Threshold:
    """The decision threshold: alert when probability >= value.

    Attributes:
        value: The threshold.
        method: How it was chosen.
        youden_j: Sensitivity + specificity - 1 at the threshold on the eval set (None if not computable).
    """

    value: float
    method: str
    youden_j: float | None


def has_both_classes(labels: np.ndarray) -> bool:
    """Tells whether labels contain both 0 and 1.

    Args:
        labels: 0/1 outcomes.

    Returns:
        True when both outcomes occur.
    """
    return len(np.unique(labels)) == 2


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve.

    Args:
        labels: 0/1 outcomes.
        scores: Predicted probabilities.

    Returns:
        The AUROC, or None for a single class.
    """
    return float(roc_auc_score(labels, scores)) if has_both_classes(labels) else None


def brier(labels: np.ndarray, scores: np.ndarray) -> float:
    """Brier score: mean squared difference between probability and outcome.

    Args:
        labels: 0/1 outcomes.
        scores: Predicted probabilities.

    Returns:
        The Brier score (defined for a single class too).
    """
    return float(brier_score_loss(labels, scores, pos_label=1))


def logit(scores: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities clipped to [1e-6, 1 - 1e-6].

    Args:
        scores: Probabilities.

    Returns:
        The logits.
    """
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def calibration_slope_intercept(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """Logistic recalibration: fits ``logit P(y=1) = intercept + slope * logit(p)`` without penalty.

    A perfectly calibrated model has slope 1 and intercept 0; slope < 1 means risks are too extreme.

    Args:
        labels: 0/1 outcomes.
        scores: Predicted probabilities.

    Returns:
        (slope, intercept), or (None, None) for a single class.
    """
    if not has_both_classes(labels):
        return None, None
    model = LogisticRegression(penalty=None, solver="lbfgs", max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on (near-)separable data; the fit is still reported
        model.fit(logit(scores).reshape(-1, 1), np.asarray(labels))
    return float(model.coef_[0][0]), float(model.intercept_[0])


def calibration_curve(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Observed event rate against mean predicted probability in equal-width probability bins.

    Args:
        labels: 0/1 outcomes.
        scores: Predicted probabilities.
        bins: Number of bins over [0, 1].

    Returns:
        One record per bin: lower, upper, count, mean_predicted and observed_rate (None when empty).
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(scores, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    curve = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        curve.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": n,
                "mean_predicted": float(p[mask].mean()) if n else None,
                "observed_rate": float(y[mask].mean()) if n else None,
            }
        )
    return curve


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> Threshold:
    """Chooses the threshold maximising Youden's J (sensitivity + specificity - 1) on the eval set.

    Args:
        labels: 0/1 outcomes.
        scores: Predicted probabilities.

    Returns:
        The threshold; ``DEFAULT_THRESHOLD`` with that method named when labels hold a single class.
    """
    if not has_both_classes(labels):
        return Threshold(DEFAULT_THRESHOLD, f"fixed {DEFAULT_THRESHOLD} (eval set has a single class)", None)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    finite = np.isfinite(thresholds)
    j = np.where(finite, tpr - fpr, -np.inf)
    best = int(np.argmax(j))
    return Threshold(float(thresholds[best]), "max Youden's J on the eval set", float(j[best]))


def roc_points(labels: np.ndarray, scores: np.ndarray, max_points: int = 200) -> list[tuple[float, float, float]]:
    """ROC curve as (threshold, false positive rate, recall), thinned to at most ``max_points``.

    Args:
        labels: 0/1 outcomes.
        scores: Predicted probabilities.
        max_points: Upper bound on the number of points kept (ends always kept).

    Returns:
        Points ordered by decreasing threshold; empty for a single class. The first
        point's threshold (infinite in scikit-learn) is reported as 1.0.
    """
    if not has_both_classes(labels):
        return []
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=True)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).round().astype(int))
    return [(float(min(thresholds[i], 1.0)), float(fpr[i]), float(tpr[i])) for i in keep]


def confusion_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> list[list[int]]:
    """Confusion matrix when alerting at ``probability >= threshold``.

    Args:
        labels: 0/1 outcomes.
        scores: Predicted probabilities.
        threshold: The decision threshold.

    Returns:
        ``[[true negatives, false positives], [false negatives, true positives]]``.
    """
    predicted = (np.asarray(scores) >= threshold).astype(int)
    matrix = confusion_matrix(np.asarray(labels).astype(int), predicted, labels=[0, 1])
    return [[int(v) for v in row] for row in matrix]


def rates_from_confusion(matrix: list[list[int]]) -> dict[str, float | None]:
    """Sensitivity, specificity, PPV and NPV from a 2x2 confusion matrix.

    Args:
        matrix: ``[[tn, fp], [fn, tp]]``.

    Returns:
        The four rates (None when a denominator is zero).
    """
    (tn, fp), (fn, tp) = matrix

    def ratio(numerator: int, denominator: int) -> float | None:
        return numerator / denominator if denominator else None

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "alert_rate": ratio(tp + fp, tn + fp + fn + tp),
    }
