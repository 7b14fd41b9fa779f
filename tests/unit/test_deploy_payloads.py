"""Request parsing/validation and response building of the KServe predictor (no server)."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from clinflow.errors import UserError
from clinflow.prediction_task import FEATURE_NAMES
from serving.model_artifact import locate_model
from serving.payloads import parse_v1_instances, parse_v2_request, score, v1_response, v2_response

FEATURES = list(FEATURE_NAMES)


def instance(offset: float = 0.0) -> dict[str, float]:
    return {name: float(index) + offset for index, name in enumerate(FEATURES)}


def v2_request(rows: int = 2, shape: list[int] | None = None, **overrides: InferInput | None) -> InferRequest:
    inputs = []
    for index, name in enumerate(FEATURES):
        if name in overrides:
            if overrides[name] is not None:
                inputs.append(overrides[name])
            continue
        data = [float(index) + row for row in range(rows)]
        inputs.append(InferInput(name, shape or [rows], "FP32", data=data))
    return InferRequest(model_name="risk", infer_inputs=inputs)


# ---- V1 ---------------------------------------------------------------------------------------


def test_v1_parses_instances_in_model_feature_order() -> None:
    batch = parse_v1_instances({"instances": [instance(), instance(10.0)]}, FEATURES)
    assert batch.size == 2
    assert list(batch.columns) == FEATURES
    for index, name in enumerate(FEATURES):
        assert batch.columns[name].dtype == np.float32
        np.testing.assert_array_equal(batch.columns[name], [index, index + 10.0])


def test_v1_accepts_integers_and_any_key_order() -> None:
    reordered = dict(reversed(list({name: 1 for name in FEATURES}.items())))
    batch = parse_v1_instances({"instances": [reordered]}, FEATURES)
    assert all(column.tolist() == [1.0] for column in batch.columns.values())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, '"instances" list'),
        ([instance()], '"instances" list'),
        ({"instances": instance()}, "must be a list"),
        ({"instances": []}, "is empty"),
        ({"instances": [[1.0, 2.0]]}, "instance 0: must be an object"),
        (
            {"instances": [instance(), {k: v for k, v in instance().items() if k != "bmi_last"}]},
            "instance 1: missing feature(s): bmi_last",
        ),
        ({"instances": [{**instance(), "zip_code": 12345}]}, "instance 0: unknown feature(s): zip_code"),
        ({"instances": [{**instance(), "age_years": "71"}]}, "instance 0: feature 'age_years' must be a finite number"),
        ({"instances": [{**instance(), "sex_female": True}]}, "feature 'sex_female' must be a finite number"),
        ({"instances": [{**instance(), "hba1c_last": None}]}, "feature 'hba1c_last' must be a finite number"),
        ({"instances": [{**instance(), "bmi_last": math.inf}]}, "feature 'bmi_last' must be a finite number"),
    ],
)
def test_v1_bad_input_is_invalid_input_naming_the_problem(body: object, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_v1_instances(body, FEATURES)
    assert message in str(caught.value)


def test_v1_error_never_echoes_the_value() -> None:
    secret = "Jane Doe 1970-01-01"
    with pytest.raises(InvalidInput) as caught:
        parse_v1_instances({"instances": [{**instance(), "age_years": secret}]}, FEATURES)
    assert secret not in str(caught.value)


# ---- V2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [[3], [3, 1]])
def test_v2_parses_one_fp32_tensor_per_feature(shape: list[int]) -> None:
    batch = parse_v2_request(v2_request(rows=3, shape=shape), FEATURES)
    assert batch.size == 3
    assert list(batch.columns) == FEATURES
    np.testing.assert_array_equal(batch.columns["sex_female"], [1.0, 2.0, 3.0])


def test_v2_accepts_nested_data_for_n_by_1() -> None:
    nested = InferInput("age_years", [2, 1], "FP32", data=[[70.0], [71.0]])
    batch = parse_v2_request(v2_request(rows=2, shape=[2, 1], age_years=nested), FEATURES)
    np.testing.assert_array_equal(batch.columns["age_years"], [70.0, 71.0])


@pytest.mark.parametrize(
    ("request_factory", "message"),
    [
        (lambda: InferRequest(model_name="risk", infer_inputs=[]), '"inputs" is empty'),
        (lambda: v2_request(bmi_last=None), "inputs: missing feature(s): bmi_last"),
        (
            lambda: InferRequest(
                model_name="risk",
                infer_inputs=[*v2_request().inputs, InferInput("ssn", [2], "FP32", data=[1.0, 2.0])],
            ),
            "inputs: unknown feature(s): ssn",
        ),
        (
            lambda: InferRequest(
                model_name="risk",
                infer_inputs=[*v2_request().inputs, InferInput("age_years", [2], "FP32", data=[1.0, 2.0])],
            ),
            "more than once: age_years",
        ),
        (
            lambda: v2_request(age_years=InferInput("age_years", [2], "INT64", data=[1, 2])),
            "input 'age_years': datatype INT64; expected FP32",
        ),
        (lambda: v2_request(shape=[2, 2]), "shape [2, 2] not accepted"),
        (lambda: v2_request(shape=[1, 2]), "shape [1, 2] not accepted"),
        (lambda: v2_request(rows=0), "shape [0] not accepted"),
        (
            lambda: v2_request(age_years=InferInput("age_years", [3], "FP32", data=[1.0, 2.0, 3.0])),
            "disagree on the batch size",
        ),
        (
            lambda: v2_request(age_years=InferInput("age_years", [2], "FP32", data=[1.0])),
            "input 'age_years': 1 values for shape [2]",
        ),
        (
            lambda: v2_request(age_years=InferInput("age_years", [2], "FP32", data=["1.0", 2.0])),
            "input 'age_years': every value must be a finite number",
        ),
        (
            lambda: v2_request(age_years=InferInput("age_years", [2], "FP32", data=[float("nan"), 2.0])),
            "every value must be a finite number",
        ),
    ],
)
def test_v2_bad_input_is_invalid_input_naming_the_problem(request_factory, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_v2_request(request_factory(), FEATURES)
    assert message in str(caught.value)


def test_v2_raw_binary_inputs_are_decoded() -> None:
    request = v2_request(rows=2)
    raw = InferInput("age_years", [2], "FP32", data=[])
    raw._raw_data = np.array([55.0, 66.0], dtype=np.float32).tobytes()  # as KServe sets it for gRPC raw input
    request.inputs[0] = raw
    batch = parse_v2_request(request, FEATURES)
    np.testing.assert_array_equal(batch.columns["age_years"], [55.0, 66.0])


# ---- scoring and responses --------------------------------------------------------------------


def test_score_applies_threshold_inclusively_and_ids_are_unique_uuids() -> None:
    scores = score(np.array([0.1, 0.3, 0.9], dtype=np.float32), np.float32(0.3).item(), "7")
    assert scores.alert.tolist() == [False, True, True]
    assert len(set(scores.prediction_ids)) == 3
    assert all(uuid.UUID(pid).version == 4 for pid in scores.prediction_ids)


def test_v1_response_shape() -> None:
    body = v1_response(score(np.array([0.2, 0.8], dtype=np.float32), 0.5, "3"))
    assert [p["alert"] for p in body["predictions"]] == [False, True]
    first = body["predictions"][0]
    assert set(first) == {"probability", "alert", "threshold", "model_version", "prediction_id"}
    assert first["threshold"] == 0.5 and first["model_version"] == "3"
    assert first["probability"] == pytest.approx(0.2)
    json.dumps(body)  # plain JSON types only


def test_v2_response_outputs_and_parameters() -> None:
    request = v2_request()
    request.id = "req-1"
    response = v2_response(score(np.array([0.2, 0.8], dtype=np.float32), 0.5, "3"), request, "risk")
    body, json_length = response.to_rest()
    assert json_length is None
    assert body["id"] == "req-1" and body["model_version"] == "3"
    assert body["parameters"] == {"threshold": 0.5}
    outputs = {output["name"]: output for output in body["outputs"]}
    assert outputs["probability"]["datatype"] == "FP32" and outputs["probability"]["shape"] == [2]
    assert outputs["alert"]["data"] == [False, True]
    assert len(outputs["prediction_id"]["data"]) == 2


def test_v2_response_unknown_requested_output_is_invalid_input() -> None:
    request = InferRequest("risk", v2_request().inputs, request_outputs=[RequestedOutput("logits")])
    response = v2_response(score(np.array([0.2, 0.8], dtype=np.float32), 0.5, "3"), request, "risk")
    with pytest.raises(InvalidInput, match="logits"):
        response.to_rest()


# ---- model artifact / threshold resolution ---------------------------------------------------


def make_layout(root: Path, versions: list[str], metadata: dict) -> Path:
    for version in versions:
        (root / version).mkdir(parents=True)
        (root / version / "saved_model.pb").write_bytes(b"\x08\x01")
    (root / "clinflow_model.json").write_text(json.dumps(metadata))
    return root


def test_locate_model_picks_highest_integer_version(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "m", ["2", "10", "9"], {})
    (root / "11-draft").mkdir()
    artifact = locate_model(root)
    assert artifact.version_dir.name == "10"
    assert artifact.model_version == "10"
    assert artifact.threshold == 0.5 and artifact.threshold_source == "default"


def test_threshold_precedence(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "m", ["1"], {"version": "1", "threshold": 0.4})
    assert locate_model(root).threshold == 0.4
    (root / "serving_config.json").write_text(json.dumps({"threshold": 0.35, "model_version": "1"}))
    assert locate_model(root).threshold == 0.35
    explicit = tmp_path / "deploy" / "serving_config.json"
    explicit.parent.mkdir()
    explicit.write_text(json.dumps({"threshold": 0.2, "model_version": "1"}))
    artifact = locate_model(root, explicit)
    assert artifact.threshold == 0.2 and artifact.threshold_source == str(explicit)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"threshold": 1.5}, "between 0 and 1"),
        ({"threshold": "0.3"}, "between 0 and 1"),
        ({"model_version": "1"}, "missing 'threshold'"),
        ({"threshold": 0.3, "model_version": "2"}, "written for model version 2"),
    ],
)
def test_bad_serving_config_is_a_user_error(tmp_path: Path, config: dict, message: str) -> None:
    root = make_layout(tmp_path / "m", ["1"], {})
    path = tmp_path / "serving_config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(UserError, match=message):
        locate_model(root, path)


def test_missing_layout_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match=r"no <version>/saved_model\.pb"):
        locate_model(tmp_path / "m")
    with pytest.raises(UserError, match="model directory not found"):
        locate_model(tmp_path / "absent")
