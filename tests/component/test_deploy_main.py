"""Contract test of ``python -m components.deploy.main``: ``main([...])`` on real small inputs.

Deploy never loads the graph (it renders a manifest that points at the storage URI),
so the model directory here is the TF-Serving layout with ``clinflow_model.json``;
``tests/integration/test_serving.py`` exercises a real exported SavedModel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clinflow.errors import run_cli
from components.deploy.main import main

# The evaluate stage's evaluation.json shape (components/evaluate/evaluation.py).
EVALUATION = {
    "metrics": {"auroc": 0.78, "brier": 0.11},
    "threshold": {"value": 0.27, "method": "max Youden's J on the eval set"},
    "passed": True,
    "gates": [{"name": "min_auroc", "passed": True, "value": 0.78}, {"name": "calibration_slope", "passed": True}],
}


@pytest.fixture()
def crd_path(shared_data: Path) -> Path:
    path = shared_data / "kserve-crd" / "serving.kserve.io_inferenceservices.yaml"
    if not path.is_file():
        pytest.skip(f"InferenceService CRD not found at {path}")
    return path


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    for version in ("1", "2"):
        (root / version / "variables").mkdir(parents=True)
        (root / version / "saved_model.pb").write_bytes(b"\x08\x01")
    (root / "clinflow_model.json").write_text(
        json.dumps({"version": "2", "training_set_sha256": "0f" * 32, "label": "acute_encounter_90d"})
    )
    return root


def evaluation_dir(tmp_path: Path, document: dict) -> Path:
    directory = tmp_path / "evaluation"
    directory.mkdir()
    (directory / "evaluation.json").write_text(json.dumps(document))
    return directory


def argv(tmp_path: Path, model_dir: Path, evaluation: Path, crd: Path | None, percent: str = "10") -> list[str]:
    args = [
        "--model",
        str(model_dir),
        "--evaluation",
        str(evaluation),
        "--model-name",
        "clinflow-risk",
        "--namespace",
        "clinflow-staging",
        "--storage-uri",
        "gs://clinflow-models-staging/clinflow-risk/2",
        "--canary-traffic-percent",
        percent,
        "--inference-service",
        str(tmp_path / "out" / "isvc"),
        "--metrics",
        str(tmp_path / "out" / "metrics.json"),
        "--executor-output",
        str(tmp_path / "out" / "executor_output.json"),
    ]
    return [*args, "--crd", str(crd)] if crd else args


def test_promoted_run_writes_manifest_config_metrics(
    tmp_path: Path, model_dir: Path, crd_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv(tmp_path, model_dir, evaluation_dir(tmp_path, EVALUATION), crd_path)) == 0
    out = tmp_path / "out"
    manifest = yaml.safe_load((out / "isvc" / "inferenceservice.yaml").read_text())
    assert manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["namespace"] == "clinflow-staging"
    assert manifest["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert manifest["spec"]["predictor"]["model"]["storageUri"] == "gs://clinflow-models-staging/clinflow-risk/2"
    annotations = manifest["metadata"]["annotations"]
    assert annotations["clinflow.io/model-version"] == "2"
    assert annotations["clinflow.io/training-set-sha256"] == "0f" * 32
    assert annotations["clinflow.io/promotion"] == "canary"
    config = json.loads((out / "isvc" / "serving_config.json").read_text())
    assert config["threshold"] == 0.27 and config["model_version"] == "2"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["promoted"] == 1.0 and metrics["canary_traffic_percent"] == 10.0
    executor = json.loads((out / "executor_output.json").read_text())
    assert executor["artifacts"]["metrics"]["artifacts"][0]["metadata"] == metrics
    isvc_meta = executor["artifacts"]["inference_service"]["artifacts"][0]["metadata"]
    assert isvc_meta["crd_validated"] is True and isvc_meta["promotion"] == "canary"
    assert "promoted as canary" in capsys.readouterr().err


def test_failed_gates_render_held_manifest(tmp_path: Path, model_dir: Path, crd_path: Path) -> None:
    document = {
        **EVALUATION,
        "passed": False,
        "gates": [{"name": "min_auroc", "passed": False}, {"name": "max_brier", "passed": True}],
    }
    assert main(argv(tmp_path, model_dir, evaluation_dir(tmp_path, document), crd_path, percent="30")) == 0
    manifest = yaml.safe_load((tmp_path / "out" / "isvc" / "inferenceservice.yaml").read_text())
    assert manifest["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert manifest["metadata"]["annotations"]["clinflow.io/promotion"] == "held"
    assert manifest["metadata"]["annotations"]["clinflow.io/failed-gates"] == "min_auroc"
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["promoted"] == 0.0 and metrics["canary_traffic_percent"] == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"percent": "150"}, "--canary-traffic-percent 150: must be between 0 and 100"),
        ({"name": "Clinflow_Risk"}, "--model-name 'Clinflow_Risk'"),
        ({"evaluation": {"metrics": {"auroc": 0.7}}}, "'threshold' must be an object"),
        ({"no_model": True}, "model directory not found"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    tmp_path: Path, model_dir: Path, change: dict, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluation = evaluation_dir(tmp_path, change.get("evaluation", EVALUATION))
    args = argv(
        tmp_path,
        tmp_path / "absent" if change.get("no_model") else model_dir,
        evaluation,
        None,
        percent=change.get("percent", "10"),
    )
    if "name" in change:
        args[args.index("--model-name") + 1] = change["name"]
    assert run_cli(main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out" / "isvc" / "inferenceservice.yaml").exists()


def test_crd_file_missing_is_a_user_error(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argv(tmp_path, model_dir, evaluation_dir(tmp_path, EVALUATION), tmp_path / "no-crd.yaml")
    assert run_cli(main, args) == 2
    assert "CRD file not found" in capsys.readouterr().err
