"""Contract test of ``components.evaluate.main`` (platform env, TF 2.21).

The SavedModel is built here with TF 2.21 and the train stage's serving contract
(one float32 ``[None]`` input per feature, ``probability`` output), so this test does
not depend on the tfx environment. It scores with the synthetic generator's own
risk equation, so it is calibrated and discriminative and should pass every gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinflow.errors import run_cli
from clinflow.prediction_task import FEATURE_NAMES, LABEL_COLUMN
from components.evaluate import main as evaluate_main
from components.train.synthetic import synthetic_training_set

tf = pytest.importorskip("tensorflow")

# The synthetic generator's log-odds (signal=1): intercept and per-feature weights around centres.
_WEIGHTS = {
    "ed_visits_365d": (0.55, 0.0),
    "inpatient_admissions_365d": (0.7, 0.0),
    "chronic_risk_conditions": (0.25, 0.0),
    "age_years": (0.025, 55.0),
    "days_since_last_acute": (-0.0003, 0.0),
    "hba1c_last": (0.25, 5.6),
}


def _export_model(directory: Path, intercept: float = -2.2) -> Path:
    spec = {name: tf.TensorSpec([None], tf.float32, name=name) for name in FEATURE_NAMES}

    class Risk(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.intercept = tf.Variable(intercept)

        @tf.function(input_signature=[spec])
        def serve(self, inputs):
            logit = self.intercept + tf.add_n([w * (inputs[n] - c) for n, (w, c) in _WEIGHTS.items()])
            return {"probability": tf.sigmoid(logit)}

    module = Risk()
    tf.saved_model.save(module, str(directory / "1"), signatures={"serving_default": module.serve})
    return directory


def _eval_examples(directory: Path, frame: pd.DataFrame) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(directory / "eval.parquet", index=False)
    return directory


def _flags(tmp_path: Path, model: Path, examples: Path) -> list[str]:
    return [
        "--model", str(model),
        "--eval-examples", str(examples),
        "--metrics", str(tmp_path / "out" / "metrics.json"),
        "--classification-metrics", str(tmp_path / "out" / "classification_metrics.json"),
        "--report", str(tmp_path / "out" / "report.html"),
        "--evaluation", str(tmp_path / "out" / "evaluation"),
        "--executor-output", str(tmp_path / "out" / "executor_output.json"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def eval_frame() -> pd.DataFrame:
    return synthetic_training_set(patients=500, seed=4)


def test_main_writes_metrics_report_and_evaluation(tmp_path: Path, eval_frame: pd.DataFrame) -> None:
    model = _export_model(tmp_path / "model")
    examples = _eval_examples(tmp_path / "eval_examples", eval_frame)

    assert evaluate_main.main(_flags(tmp_path, model, examples)) == 0

    out = tmp_path / "out"
    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    metrics = evaluation["metrics"]
    assert metrics["rows"] == len(eval_frame) and metrics["positives"] == eval_frame[LABEL_COLUMN].sum()
    assert metrics["auroc"] > 0.7
    assert metrics["calibration_slope"] == pytest.approx(1.0, abs=0.2)
    assert metrics["brier"] < 0.2
    assert evaluation["passed"] is True, evaluation["gates"]
    assert evaluation["threshold"]["method"] == "max Youden's J on the eval set"
    assert len(evaluation["calibration"]["curve"]) == 10
    assert set(evaluation["fairness"]["alerts"]["by_group"]) <= {"female", "male", "other"}
    assert evaluation["model"]["version"] == "1"
    assert evaluation["model"]["evaluated_with_tensorflow"] == tf.__version__

    scalar = json.loads((out / "metrics.json").read_text())
    assert scalar["auroc"] == pytest.approx(metrics["auroc"]) and scalar["passed"] == 1
    classification = json.loads((out / "classification_metrics.json").read_text())
    rows = classification["confusionMatrix"]["rows"]
    assert sum(sum(r["row"]) for r in rows) == len(eval_frame)
    assert len(classification["confidenceMetrics"]) > 2
    executor = json.loads((out / "executor_output.json").read_text())["artifacts"]
    assert executor["classification_metrics"]["artifacts"][0]["metadata"] == classification
    assert executor["metrics"]["artifacts"][0]["metadata"]["auroc"] == pytest.approx(metrics["auroc"])
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Fairness by sex" in html and "Calibration" in html


def test_badly_calibrated_model_fails_the_gates(tmp_path: Path, eval_frame: pd.DataFrame) -> None:
    model = _export_model(tmp_path / "model", intercept=1.5)  # everyone looks high-risk
    examples = _eval_examples(tmp_path / "eval_examples", eval_frame)
    assert evaluate_main.main(_flags(tmp_path, model, examples)) == 0
    evaluation = json.loads((tmp_path / "out" / "evaluation" / "evaluation.json").read_text())
    failed = {g["name"] for g in evaluation["gates"] if not g["passed"]}
    assert "max_brier" in failed and evaluation["passed"] is False


def test_one_class_eval_set_reports_nulls_without_crashing(tmp_path: Path, eval_frame: pd.DataFrame) -> None:
    model = _export_model(tmp_path / "model")
    examples = _eval_examples(tmp_path / "eval_examples", eval_frame.assign(**{LABEL_COLUMN: 0}).head(200))
    assert evaluate_main.main(_flags(tmp_path, model, examples)) == 0
    evaluation = json.loads((tmp_path / "out" / "evaluation" / "evaluation.json").read_text())
    assert evaluation["metrics"]["auroc"] is None and evaluation["passed"] is False
    assert evaluation["warnings"]
    scalar = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert scalar["auroc"] is None
    executor = json.loads((tmp_path / "out" / "executor_output.json").read_text())["artifacts"]
    assert "auroc" not in executor["metrics"]["artifacts"][0]["metadata"]
    assert executor["classification_metrics"]["artifacts"][0]["metadata"]["confidenceMetrics"] == []


def test_missing_model_is_one_line_error(tmp_path: Path, eval_frame: pd.DataFrame, capsys) -> None:
    examples = _eval_examples(tmp_path / "eval_examples", eval_frame.head(50))
    (tmp_path / "empty_model").mkdir()
    assert run_cli(evaluate_main.main, _flags(tmp_path, tmp_path / "empty_model", examples)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no <version>/saved_model.pb found" in err[0]


def test_wrong_signature_is_one_line_error(tmp_path: Path, eval_frame: pd.DataFrame, capsys) -> None:
    module = tf.Module()
    module.serve = tf.function(
        lambda x: {"probability": tf.sigmoid(x)}, input_signature=[tf.TensorSpec([None], tf.float32, name="x")]
    )
    tf.saved_model.save(module, str(tmp_path / "model" / "3"), signatures={"serving_default": module.serve})
    examples = _eval_examples(tmp_path / "eval_examples", eval_frame.head(50))
    assert run_cli(evaluate_main.main, _flags(tmp_path, tmp_path / "model", examples)) == 2
    assert "missing inputs" in capsys.readouterr().err


def test_model_output_matches_direct_call(tmp_path: Path, eval_frame: pd.DataFrame) -> None:
    from components.evaluate.model_io import load_model, predict

    loaded = load_model(str(_export_model(tmp_path / "model")))
    scores = predict(loaded, eval_frame.head(10))
    logit = -2.2 + sum(w * (eval_frame.head(10)[n].to_numpy() - c) for n, (w, c) in _WEIGHTS.items())
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logit)), rtol=1e-4)
