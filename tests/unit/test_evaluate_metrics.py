"""Unit tests of evaluation metrics, fairness, gates and the report on known inputs (platform env)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.evaluate import metrics as m
from components.evaluate.evaluation import evaluate_predictions
from components.evaluate.fairness import metrics_by_group
from components.evaluate.gates import GATES, MIN_GROUP_POSITIVES, Gate, evaluate_gates
from components.evaluate.report import render_report


def _calibrated(n: int = 40_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    return (rng.random(n) < p).astype(int), p


def test_perfectly_calibrated_scores_have_slope_one_intercept_zero() -> None:
    y, p = _calibrated()
    slope, intercept = m.calibration_slope_intercept(y, p)
    assert slope == pytest.approx(1.0, abs=0.05)
    assert intercept == pytest.approx(0.0, abs=0.05)


def test_overconfident_scores_have_slope_below_one() -> None:
    y, p = _calibrated()
    extreme = 1 / (1 + np.exp(-2 * m.logit(p)))
    slope, _ = m.calibration_slope_intercept(y, extreme)
    assert slope == pytest.approx(0.5, abs=0.05)


def test_brier_of_constant_prediction_is_p_times_one_minus_p() -> None:
    y = np.array([1] * 30 + [0] * 70)
    assert m.brier(y, np.full(100, 0.3)) == pytest.approx(0.3 * 0.7)


def test_auroc_and_threshold_on_separable_scores() -> None:
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert m.auroc(y, p) == 1.0
    threshold = m.youden_threshold(y, p)
    assert threshold.value == pytest.approx(0.7) and threshold.youden_j == pytest.approx(1.0)
    assert m.confusion_at(y, p, threshold.value) == [[3, 0], [0, 2]]
    rates = m.rates_from_confusion([[3, 1], [2, 4]])
    assert rates["sensitivity"] == pytest.approx(4 / 6) and rates["specificity"] == pytest.approx(3 / 4)


def test_calibration_curve_bins_cover_every_row() -> None:
    y, p = _calibrated(1000)
    curve = m.calibration_curve(y, p, bins=10)
    assert len(curve) == 10 and sum(b["count"] for b in curve) == 1000
    for b in curve:
        assert b["lower"] <= b["mean_predicted"] <= b["upper"]
        assert abs(b["observed_rate"] - b["mean_predicted"]) < 0.15
    assert m.calibration_curve(np.array([1]), np.array([1.0]), bins=10)[-1]["count"] == 1


def test_roc_points_are_thinned_and_finite() -> None:
    y, p = _calibrated(5000)
    points = m.roc_points(y, p, max_points=50)
    assert 2 < len(points) <= 50
    assert points[0] == (1.0, 0.0, 0.0) and points[-1][1:] == (1.0, 1.0)
    assert all(np.isfinite(t) for t, _, _ in points)


def test_single_class_metrics_are_null() -> None:
    y, p = np.zeros(20, dtype=int), np.linspace(0.1, 0.5, 20)
    assert m.auroc(y, p) is None
    assert m.calibration_slope_intercept(y, p) == (None, None)
    assert m.roc_points(y, p) == []
    assert m.youden_threshold(y, p).value == m.DEFAULT_THRESHOLD


def test_gates_fail_on_null_and_out_of_range_values() -> None:
    gate = Gate("slope", "calibration_slope", 0.7, 1.3, "why")
    assert gate.passes(1.0) and gate.passes(0.7) and not gate.passes(1.31) and not gate.passes(None)
    assert gate.bounds() == "in [0.7, 1.3]"
    results = evaluate_gates({"auroc": 0.8, "brier": 0.1, "calibration_slope": 1.0, "recall_difference_sex": None})
    assert [r["passed"] for r in results] == [True, True, True, False]
    assert {g.metric for g in GATES} == {"auroc", "brier", "calibration_slope", "recall_difference_sex"}


def test_fairness_recall_gap_uses_groups_with_enough_positives() -> None:
    n = MIN_GROUP_POSITIVES
    labels = np.array([1] * n + [0] * n + [1] * n + [0] * n + [1, 0])
    scores = np.array([0.9] * n + [0.1] * n + [0.9] * (n // 2) + [0.1] * (n - n // 2) + [0.1] * n + [0.1, 0.9])
    groups = pd.Series(["female"] * 2 * n + ["male"] * 2 * n + ["other"] * 2, name="sex")
    result = metrics_by_group(labels, scores, 0.5, groups)
    by_group = result["alerts"]["by_group"]
    assert by_group["female"]["recall"] == 1.0 and by_group["male"]["recall"] == 0.5
    assert by_group["other"]["recall"] == 0.0 and by_group["other"]["count"] == 2
    assert result["recall_difference_groups"] == ["female", "male"]
    assert result["recall_difference"] == pytest.approx(0.5)
    assert result["alerts"]["difference"]["recall"] == pytest.approx(1.0)  # fairlearn, all groups
    assert result["probabilities"]["by_group"]["female"]["auroc"] == 1.0


def _frame(labels: np.ndarray, groups: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"acute_encounter_90d": labels, "sex": groups})


def test_evaluate_predictions_passes_a_good_calibrated_model() -> None:
    rng = np.random.default_rng(1)
    risk = rng.normal(size=4000)
    p = 1 / (1 + np.exp(-(-1.0 + 1.5 * risk)))
    y = (rng.random(4000) < p).astype(int)
    groups = list(rng.choice(["female", "male"], 4000))
    evaluation = evaluate_predictions(_frame(y, groups), p)
    assert evaluation["metrics"]["auroc"] > 0.75
    assert evaluation["passed"], evaluation["gates"]
    assert evaluation["warnings"] == []
    html = render_report(evaluation, {"path": "/m/1", "version": "1", "target": "acute <care> & more"})
    assert "all passed" in html and "acute &lt;care&gt; &amp; more" in html and html.count("PASS") == 4


def test_evaluate_predictions_on_one_class_reports_nulls_and_fails() -> None:
    y = np.zeros(50, dtype=int)
    evaluation = evaluate_predictions(_frame(y, ["female", "male"] * 25), np.linspace(0.05, 0.4, 50))
    assert evaluation["metrics"]["auroc"] is None and evaluation["metrics"]["calibration_slope"] is None
    assert evaluation["passed"] is False and evaluation["roc_curve"] == []
    assert any("single class" in w for w in evaluation["warnings"])
    assert "FAILED" in render_report(evaluation, {})
