"""Assembles the evaluation of held-out predictions: metrics, threshold, curves, fairness, gates."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from clinflow.prediction_task import GROUP_COLUMN, LABEL_COLUMN
from components.evaluate import metrics as m
from components.evaluate.fairness import metrics_by_group
from components.evaluate.gates import evaluate_gates

CALIBRATION_BINS = 10
CONFUSION_LABELS = ("no acute encounter", "acute encounter")


def headline_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Computes the overall metrics that do not depend on a threshold.

    Args:
        labels: 0/1 outcomes.
        scores: Predicted probabilities.

    Returns:
        ``rows``, ``positives``, ``prevalence``, ``mean_predicted``, ``auroc``, ``brier``,
        ``calibration_slope`` and ``calibration_intercept`` (None when not computable).
    """
    slope, intercept = m.calibration_slope_intercept(labels, scores)
    return {
        "rows": len(labels),
        "positives": int(np.sum(labels)),
        "prevalence": float(np.mean(labels)),
        "mean_predicted": float(np.mean(scores)),
        "auroc": m.auroc(labels, scores),
        "brier": m.brier(labels, scores),
        "calibration_slope": slope,
        "calibration_intercept": intercept,
    }


def evaluate_predictions(frame: pd.DataFrame, scores: np.ndarray) -> dict[str, Any]:
    """Evaluates predictions on the held-out rows.

    Args:
        frame: Held-out rows with the label and ``sex`` columns.
        scores: The model's probability for each row.

    Returns:
        JSON-ready evaluation: ``metrics``, ``threshold``, ``confusion_matrix``, ``rates``,
        ``calibration_curve``, ``roc_curve``, ``fairness``, ``gates``, ``passed`` and ``warnings``.
    """
    labels = frame[LABEL_COLUMN].to_numpy().astype(int)
    warnings = []
    if not m.has_both_classes(labels):
        warnings.append(
            f"eval set has a single class ({int(labels[0]) if len(labels) else 'none'}): AUROC, calibration "
            "slope/intercept and the ROC curve are null and the gates that need them fail"
        )
    headline = headline_metrics(labels, scores)
    threshold = m.youden_threshold(labels, scores)
    matrix = m.confusion_at(labels, scores, threshold.value)
    fairness = metrics_by_group(labels, scores, threshold.value, frame[GROUP_COLUMN])
    if fairness["recall_difference"] is None:
        warnings.append(
            f"fewer than two {GROUP_COLUMN} groups have >= {fairness['min_group_positives']} positives; "
            "the recall gap between sexes is null and its gate fails"
        )
    gate_values = {**headline, "recall_difference_sex": fairness["recall_difference"]}
    gates = evaluate_gates(gate_values)
    return {
        "metrics": {**headline, "threshold": threshold.value, "recall_difference_sex": fairness["recall_difference"]},
        "threshold": {"value": threshold.value, "method": threshold.method, "youden_j": threshold.youden_j},
        "confusion_matrix": {"labels": list(CONFUSION_LABELS), "rows": matrix},
        "rates": m.rates_from_confusion(matrix),
        "calibration": {
            "method": "logistic recalibration: logit P(y=1) = intercept + slope * logit(p), unpenalised",
            "curve": m.calibration_curve(labels, scores, CALIBRATION_BINS),
        },
        "roc_curve": [{"threshold": t, "fpr": f, "tpr": r} for t, f, r in m.roc_points(labels, scores)],
        "fairness": fairness,
        "gates": gates,
        "passed": all(gate["passed"] for gate in gates),
        "warnings": warnings,
    }
