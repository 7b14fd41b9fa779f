"""Subgroup metrics by sex with fairlearn ``MetricFrame``.

Two frames: one on the thresholded alerts (count, selection rate, recall, false
positive rate) and one on the probabilities (AUROC, Brier). Each reports the
overall value, the value per group, and the between-group ``difference()`` and
``ratio()``. Rates a group cannot have (recall without positives, false positive
rate without negatives, AUROC with one class) are NaN in the frame and null in JSON.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count, selection_rate

from components.evaluate.gates import MIN_GROUP_POSITIVES
from components.evaluate.metrics import auroc, brier


def _recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Recall, NaN without positives."""
    positives = np.asarray(y_true) == 1
    return float(np.mean(np.asarray(y_pred)[positives] == 1)) if positives.any() else math.nan


def _false_positive_rate(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """False positive rate, NaN without negatives."""
    negatives = np.asarray(y_true) == 0
    return float(np.mean(np.asarray(y_pred)[negatives] == 1)) if negatives.any() else math.nan


def _positives(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Number of positive outcomes."""
    return float(np.sum(np.asarray(y_true) == 1))


def _auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AUROC, NaN for a single class."""
    value = auroc(np.asarray(y_true), np.asarray(y_score))
    return math.nan if value is None else value


def _brier(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Brier score."""
    return brier(np.asarray(y_true), np.asarray(y_score))


_COUNTS = frozenset({"count", "positives"})


def _clean(name: str, value: Any, summary: bool = False) -> float | int | None:
    """A float (an int for per-group counts), or None for NaN/inf."""
    number = float(value)
    if not math.isfinite(number):
        return None
    return int(number) if name in _COUNTS and not summary else number


def _frame_record(frame: MetricFrame) -> dict[str, Any]:
    """Overall, per-group, difference and ratio of a MetricFrame as JSON-ready dicts."""
    by_group = frame.by_group
    return {
        "overall": {name: _clean(name, v) for name, v in frame.overall.items()},
        "by_group": {
            str(group): {name: _clean(name, v) for name, v in row.items()} for group, row in by_group.iterrows()
        },
        "difference": {name: _clean(name, v, True) for name, v in frame.difference(method="between_groups").items()},
        "ratio": {name: _clean(name, v, True) for name, v in frame.ratio(method="between_groups").items()},
    }


def metrics_by_group(labels: np.ndarray, scores: np.ndarray, threshold: float, groups: pd.Series) -> dict[str, Any]:
    """Computes subgroup metrics and the recall gap used by the fairness gate.

    Args:
        labels: 0/1 outcomes.
        scores: Predicted probabilities.
        threshold: Alert when probability >= threshold.
        groups: Group of each row (the ``sex`` column).

    Returns:
        ``{"group_column", "threshold", "alerts": {...}, "probabilities": {...},
        "recall_difference": float | None, "recall_difference_groups": [...]}`` where the
        two inner dicts hold overall, by_group, difference and ratio.
    """
    y = np.asarray(labels).astype(int)
    predicted = (np.asarray(scores) >= threshold).astype(int)
    sensitive = pd.Series(np.asarray(groups).astype(str), name=groups.name or "group")
    alerts = MetricFrame(
        metrics={
            "count": count,
            "positives": _positives,
            "selection_rate": selection_rate,
            "recall": _recall,
            "false_positive_rate": _false_positive_rate,
        },
        y_true=y,
        y_pred=predicted,
        sensitive_features=sensitive,
    )
    probabilities = MetricFrame(
        metrics={"auroc": _auroc, "brier": _brier},
        y_true=y,
        y_pred=np.asarray(scores, dtype=np.float64),
        sensitive_features=sensitive,
    )
    alert_record = _frame_record(alerts)
    eligible = sorted(
        group
        for group, row in alert_record["by_group"].items()
        if (row["positives"] or 0) >= MIN_GROUP_POSITIVES and row["recall"] is not None
    )
    recalls = [alert_record["by_group"][group]["recall"] for group in eligible]
    return {
        "group_column": sensitive.name,
        "threshold": threshold,
        "alerts": alert_record,
        "probabilities": _frame_record(probabilities),
        "recall_difference": max(recalls) - min(recalls) if len(recalls) >= 2 else None,
        "recall_difference_groups": eligible,
        "min_group_positives": MIN_GROUP_POSITIVES,
    }
