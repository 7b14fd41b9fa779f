"""InferenceService rendering (kserve SDK), evidence parsing and CRD validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from clinflow.errors import UserError
from components.deploy.crd import schema_errors, unknown_fields, validate_against_crd
from components.deploy.evidence import Evaluation, ModelInfo, read_evaluation, read_model_info
from components.deploy.inference_service import (
    DeploymentRequest,
    build_inference_service,
    label_value,
    to_manifest,
    to_yaml,
)

MODEL = ModelInfo(model_version="3", training_set_sha256="ab" * 32)
PASSED = Evaluation(auroc=0.81234, brier=0.1111, threshold=0.3, passed=True, failed_gates=())
HELD = Evaluation(auroc=0.61, brier=0.2, threshold=0.3, passed=False, failed_gates=("auroc_min", "calibration"))
REQUEST = DeploymentRequest(
    name="clinflow-risk",
    namespace="clinflow-dev",
    storage_uri="gs://bucket/models/clinflow-risk/3",
    canary_traffic_percent=20,
    service_account="clinflow-serving",
)


@pytest.fixture(scope="module")
def crd_path(shared_data: Path) -> Path:
    path = shared_data / "kserve-crd" / "serving.kserve.io_inferenceservices.yaml"
    if not path.is_file():
        pytest.skip(f"InferenceService CRD not found at {path}")
    return path


def test_manifest_content_when_gates_pass() -> None:
    manifest = to_manifest(build_inference_service(REQUEST, MODEL, PASSED))
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1"
    assert manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["name"] == "clinflow-risk"
    assert manifest["metadata"]["namespace"] == "clinflow-dev"
    predictor = manifest["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 20
    assert predictor["serviceAccountName"] == "clinflow-serving"
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "tensorflow"}
    assert model["storageUri"] == "gs://bucket/models/clinflow-risk/3"
    assert model["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert model["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert "name" not in model
    annotations = manifest["metadata"]["annotations"]
    assert annotations["clinflow.io/model-version"] == "3"
    assert annotations["clinflow.io/training-set-sha256"] == "ab" * 32
    assert annotations["clinflow.io/eval-auroc"] == "0.8123"
    assert annotations["clinflow.io/eval-brier"] == "0.1111"
    assert annotations["clinflow.io/gates-passed"] == "true"
    assert annotations["clinflow.io/promotion"] == "canary"
    assert "clinflow.io/failed-gates" not in annotations
    assert manifest["metadata"]["labels"]["clinflow.io/model-version"] == "3"


def test_failed_gates_hold_the_canary_at_zero() -> None:
    manifest = to_manifest(build_inference_service(REQUEST, MODEL, HELD))
    assert manifest["spec"]["predictor"]["canaryTrafficPercent"] == 0
    annotations = manifest["metadata"]["annotations"]
    assert annotations["clinflow.io/promotion"] == "held"
    assert annotations["clinflow.io/failed-gates"] == "auroc_min,calibration"
    assert annotations["clinflow.io/requested-canary-traffic-percent"] == "20"
    assert manifest["metadata"]["labels"]["clinflow.io/promotion"] == "held"


def test_all_annotation_and_label_values_are_strings_and_yaml_round_trips() -> None:
    manifest = to_manifest(build_inference_service(REQUEST, MODEL, HELD))
    for key in ("annotations", "labels"):
        assert all(isinstance(v, str) for v in manifest["metadata"][key].values())
    assert yaml.safe_load(to_yaml(manifest)) == manifest


def test_label_value_sanitises() -> None:
    assert label_value("2024-06-01T10:00:00Z/run#7") == "2024-06-01T10-00-00Z-run-7"
    assert len(label_value("x" * 100)) == 63
    assert label_value("--") == ""


def test_rendered_manifests_validate_against_the_crd(crd_path: Path) -> None:
    for evaluation in (PASSED, HELD):
        validate_against_crd(to_manifest(build_inference_service(REQUEST, MODEL, evaluation)), crd_path)


def test_wrong_type_fails_crd_validation(crd_path: Path) -> None:
    manifest = to_manifest(build_inference_service(REQUEST, MODEL, PASSED))
    broken = copy.deepcopy(manifest)
    broken["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    with pytest.raises(UserError, match=r"spec\.predictor\.canaryTrafficPercent: 'ten' is not of type 'integer'"):
        validate_against_crd(broken, crd_path)


def test_missing_required_and_unknown_fields_fail_crd_validation(crd_path: Path) -> None:
    manifest = to_manifest(build_inference_service(REQUEST, MODEL, PASSED))
    no_predictor = copy.deepcopy(manifest)
    del no_predictor["spec"]["predictor"]
    with pytest.raises(UserError, match="'predictor' is a required property"):
        validate_against_crd(no_predictor, crd_path)
    typo = copy.deepcopy(manifest)
    typo["spec"]["predictor"]["model"]["storageURI"] = typo["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(UserError, match=r"spec\.predictor\.model\.storageURI: field not declared"):
        validate_against_crd(typo, crd_path)


def test_crd_for_another_kind_is_refused(crd_path: Path) -> None:
    manifest = to_manifest(build_inference_service(REQUEST, MODEL, PASSED))
    manifest["kind"] = "ServingRuntime"
    with pytest.raises(UserError, match=r"CRD is for serving\.kserve\.io/InferenceService"):
        validate_against_crd(manifest, crd_path)


def test_unknown_fields_respects_open_maps_and_preserve_unknown() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "integer"}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "string"}}}},
        },
    }
    doc = {"a": {"b": 1, "c": 2}, "labels": {"any": "x"}, "free": {"z": 1}, "items": [{"n": "x", "m": 1}]}
    assert unknown_fields(doc, schema) == ["a.c", "items[0].m"]
    assert schema_errors({"a": {"b": "x"}}, schema) == ["a.b: 'x' is not of type 'integer'"]


# ---- evidence ---------------------------------------------------------------------------------


def write_evaluation(directory: Path, document: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "evaluation.json").write_text(json.dumps(document))
    return directory


# The evaluate stage's evaluation.json shape (components/evaluate/evaluation.py).
GOOD_EVALUATION = {
    "metrics": {"auroc": 0.8, "brier": 0.1},
    "threshold": {"value": 0.25, "method": "max Youden's J on the eval set"},
    "passed": True,
    "gates": [
        {"name": "min_auroc", "passed": True, "value": 0.8, "minimum": 0.6},
        {"name": "max_brier", "passed": True},
    ],
}


def test_read_evaluation_reads_the_evaluate_format(tmp_path: Path) -> None:
    evaluation = read_evaluation(write_evaluation(tmp_path / "e", GOOD_EVALUATION))
    assert evaluation == Evaluation(auroc=0.8, brier=0.1, threshold=0.25, passed=True, failed_gates=())


def test_undefined_metrics_are_allowed_and_reported_as_none(tmp_path: Path) -> None:
    document = {**GOOD_EVALUATION, "metrics": {"auroc": None, "brier": 0.1}, "passed": False}
    evaluation = read_evaluation(write_evaluation(tmp_path / "e", document))
    assert evaluation.auroc is None and not evaluation.passed


def test_a_failed_gate_fails_the_evaluation_even_if_passed_says_true(tmp_path: Path) -> None:
    document = {
        **GOOD_EVALUATION,
        "gates": [{"name": "min_auroc", "passed": False}, {"name": "max_brier", "passed": True}],
    }
    evaluation = read_evaluation(write_evaluation(tmp_path / "e", document))
    assert not evaluation.passed
    assert evaluation.failed_gates == ("min_auroc",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics": {"auroc": "high"}}, "'auroc' must be a number"),
        ({"metrics": {"brier": 1.5}}, r"'brier' = 1.5 is outside"),
        ({"metrics": None}, "'metrics' must be an object"),
        ({"threshold": 0.3}, "'threshold' must be an object"),
        ({"threshold": {"value": "0.3"}}, "'value' must be a number"),
        ({"passed": "yes"}, "'passed' must be true or false"),
        ({"gates": {}}, "'gates' must be a list"),
        ({"gates": [{"name": "g", "passed": "ok"}]}, "gate #0 must be an object"),
    ],
)
def test_malformed_evaluation_is_a_user_error(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        read_evaluation(write_evaluation(tmp_path / "e", {**GOOD_EVALUATION, **change}))


def test_missing_evaluation_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"evaluation\.json: file not found"):
        read_evaluation(tmp_path)


def test_read_model_info(tmp_path: Path) -> None:
    (tmp_path / "m" / "4").mkdir(parents=True)
    (tmp_path / "m" / "4" / "saved_model.pb").write_bytes(b"\x08\x01")
    (tmp_path / "m" / "clinflow_model.json").write_text(json.dumps({"training_set_sha256": "cd" * 32}))
    assert read_model_info(tmp_path / "m") == ModelInfo(model_version="4", training_set_sha256="cd" * 32)
