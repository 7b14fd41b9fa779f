"""End to end: ``python -m serving.predictor`` on 127.0.0.1 with a real SavedModel.

V1 through ``requests``, V2 through ``tritonclient.http`` (a real Open Inference
Protocol client; binary input tensors, binary and JSON outputs -- tritonclient sends an
all-JSON request without a JSON content type, which KServe 0.21 rejects, so JSON-input
V2 requests are sent with ``requests``). Probabilities must equal the SavedModel's
own output; the threshold must come from the deploy stage's ``serving_config.json``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from clinflow.prediction_task import FEATURE_NAMES

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "clinflow-risk"
SERVING_THRESHOLD = 0.35
STARTUP_TIMEOUT_S = 120
WEIGHTS = np.linspace(-0.4, 0.6, len(FEATURE_NAMES)).astype(np.float32)


def export_logistic_model(root: Path, version: str) -> None:
    """Exports a SavedModel with the train stage's signature: float32 [None] per feature -> probability."""
    import tensorflow as tf

    class Logistic(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = tf.Variable(WEIGHTS)
            self.bias = tf.Variable(-2.5)

        @tf.function
        def serve(self, **features: tf.Tensor) -> dict[str, tf.Tensor]:
            x = tf.stack([features[name] for name in FEATURE_NAMES], axis=1)
            return {"probability": tf.sigmoid(tf.linalg.matvec(x, self.weights) + self.bias)}

    module = Logistic()
    specs = {name: tf.TensorSpec([None], tf.float32, name=name) for name in FEATURE_NAMES}
    signature = module.serve.get_concrete_function(**specs)
    tf.saved_model.save(module, str(root / version), signatures={"serving_default": signature})


def model_output(model_dir: Path, columns: dict[str, np.ndarray]) -> np.ndarray:
    """The SavedModel's own output, loaded independently of the server."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    return signature(**{k: tf.constant(v) for k, v in columns.items()})["probability"].numpy()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model") / "clinflow-risk"
    root.mkdir()
    export_logistic_model(root, "1")
    export_logistic_model(root, "2")
    (root / "clinflow_model.json").write_text(
        json.dumps({"feature_names": list(FEATURE_NAMES), "label": "acute_encounter_90d", "threshold": 0.9})
    )
    return root


@pytest.fixture(scope="module")
def serving_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("deploy") / "serving_config.json"
    path.write_text(json.dumps({"model_name": MODEL_NAME, "model_version": "2", "threshold": SERVING_THRESHOLD}))
    return path


@pytest.fixture(scope="module")
def server_process(
    model_dir: Path, serving_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("logs") / "predictor.log"
    command = [
        sys.executable,
        "-m",
        "serving.predictor",
        "--model_dir",
        str(model_dir),
        "--model_name",
        MODEL_NAME,
        "--serving_config",
        str(serving_config),
        "--http_port",
        str(port),
        "--enable_grpc",
        "false",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"predictor exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{base}/v2/models/{MODEL_NAME}/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"predictor not ready after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield base, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(server_process: tuple[str, Path]) -> str:
    return server_process[0]


def patients(count: int, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(0.0, 3.0, size=count).astype(np.float32) for name in FEATURE_NAMES}


def as_instances(columns: dict[str, np.ndarray]) -> list[dict[str, float]]:
    count = len(next(iter(columns.values())))
    return [{name: float(columns[name][i]) for name in FEATURE_NAMES} for i in range(count)]


def test_v1_predict_matches_the_model(server: str, model_dir: Path) -> None:
    columns = patients(5)
    response = requests.post(
        f"{server}/v1/models/{MODEL_NAME}:predict", json={"instances": as_instances(columns)}, timeout=30
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = model_output(model_dir / "2", columns)
    np.testing.assert_allclose([p["probability"] for p in predictions], expected, rtol=1e-6)
    assert [p["alert"] for p in predictions] == [bool(p >= SERVING_THRESHOLD) for p in expected]
    assert len({p["alert"] for p in predictions}) == 2, "test data should produce both decisions"
    assert all(p["threshold"] == SERVING_THRESHOLD and p["model_version"] == "2" for p in predictions)
    assert len({uuid.UUID(p["prediction_id"]) for p in predictions}) == 5


@pytest.mark.parametrize("binary_outputs", [True, False])
def test_v2_infer_with_tritonclient(server: str, model_dir: Path, binary_outputs: bool) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready(MODEL_NAME)
    metadata = client.get_model_metadata(MODEL_NAME)
    assert sorted(i["name"] for i in metadata["inputs"]) == sorted(FEATURE_NAMES)
    columns = patients(6, seed=11)
    inputs = []
    for name in FEATURE_NAMES:
        tensor = httpclient.InferInput(name, [6, 1], "FP32")
        tensor.set_data_from_numpy(columns[name].reshape(6, 1), binary_data=True)
        inputs.append(tensor)
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary_outputs)
        for n in ("probability", "alert", "prediction_id")
    ]
    result = client.infer(MODEL_NAME, inputs, outputs=outputs, request_id="req-42")
    probability = result.as_numpy("probability")
    alert = result.as_numpy("alert")
    np.testing.assert_allclose(probability, model_output(model_dir / "2", columns), rtol=1e-6)
    assert probability.dtype == np.float32 and probability.shape == (6,)
    assert alert.dtype == np.bool_ and alert.tolist() == (probability >= np.float32(SERVING_THRESHOLD)).tolist()
    ids = [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("prediction_id")]
    assert len({uuid.UUID(i) for i in ids}) == 6
    response = result.get_response()
    assert response["id"] == "req-42"
    assert response["model_version"] == "2"
    assert response["parameters"]["threshold"] == SERVING_THRESHOLD


def test_v2_json_infer_with_flat_shape(server: str, model_dir: Path) -> None:
    columns = patients(4, seed=5)
    body = {
        "id": "json-1",
        "inputs": [{"name": n, "shape": [4], "datatype": "FP32", "data": columns[n].tolist()} for n in FEATURE_NAMES],
    }
    response = requests.post(f"{server}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    document = response.json()
    outputs = {o["name"]: o for o in document["outputs"]}
    np.testing.assert_allclose(outputs["probability"]["data"], model_output(model_dir / "2", columns), rtol=1e-6)
    assert outputs["alert"]["datatype"] == "BOOL" and outputs["alert"]["shape"] == [4]
    assert document["id"] == "json-1" and document["model_version"] == "2"
    assert document["parameters"]["threshold"] == SERVING_THRESHOLD


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": []}, "is empty"),
        ({"instances": [{k: 1.0 for k in FEATURE_NAMES if k != "age_years"}]}, "missing feature(s): age_years"),
        ({"instances": [{**{k: 1.0 for k in FEATURE_NAMES}, "mrn": 1.0}]}, "unknown feature(s): mrn"),
        (
            {"instances": [{**{k: 1.0 for k in FEATURE_NAMES}, "age_years": "Sensitive-Marker"}]},
            "'age_years' must be a finite number",
        ),
        ({"rows": []}, '"instances" list'),
    ],
)
def test_v1_bad_input_is_400(server: str, body: dict, message: str) -> None:
    response = requests.post(f"{server}/v1/models/{MODEL_NAME}:predict", json=body, timeout=30)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert "Sensitive-Marker" not in response.text


def test_v1_malformed_json_is_400(server: str) -> None:
    response = requests.post(
        f"{server}/v1/models/{MODEL_NAME}:predict",
        data=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400


def v2_body(shape: list[int], drop: str | None = None, extra: str | None = None, datatype: str = "FP32") -> dict:
    count = int(np.prod(shape))
    inputs = [
        {"name": n, "shape": shape, "datatype": datatype, "data": [1.0] * count} for n in FEATURE_NAMES if n != drop
    ]
    if extra:
        inputs.append({"name": extra, "shape": shape, "datatype": "FP32", "data": [1.0] * count})
    return {"inputs": inputs}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (v2_body([2], drop="bmi_last"), "missing feature(s): bmi_last"),
        (v2_body([2], extra="postcode"), "unknown feature(s): postcode"),
        (v2_body([2, 2]), "shape [2, 2] not accepted"),
        (v2_body([2], datatype="INT32"), "datatype INT32; expected FP32"),
        (
            {"inputs": [{**i, "data": ["Sensitive-Marker", 1.0]} for i in v2_body([2])["inputs"]]},
            "every value must be a finite number",
        ),
        ({"inputs": []}, '"inputs" is empty'),
    ],
)
def test_v2_bad_input_is_400(server: str, body: dict, message: str) -> None:
    response = requests.post(f"{server}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_v2_bad_input_through_tritonclient_raises_400(server: str) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=server.removeprefix("http://"))
    tensor = httpclient.InferInput("age_years", [1], "FP32")
    tensor.set_data_from_numpy(np.array([70.0], dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL_NAME, [tensor])
    assert caught.value.status() == "400"
    assert "missing feature(s)" in caught.value.message()


def test_unknown_model_is_404(server: str) -> None:
    response = requests.post(f"{server}/v1/models/other:predict", json={"instances": []}, timeout=30)
    assert response.status_code == 404


def test_log_counts_requests_but_never_input_values(server_process: tuple[str, Path]) -> None:
    base, log_path = server_process
    marker = {"instances": [{**{k: 1.0 for k in FEATURE_NAMES}, "age_years": "Sensitive-Marker"}]}
    assert requests.post(f"{base}/v1/models/{MODEL_NAME}:predict", json=marker, timeout=30).status_code == 400
    good = {"instances": [{k: 1.0 for k in FEATURE_NAMES}]}
    assert requests.post(f"{base}/v1/models/{MODEL_NAME}:predict", json=good, timeout=30).status_code == 200
    time.sleep(0.5)  # let the server flush its log lines
    server_log = log_path.read_text()
    assert "scored v1 request: 1 instance(s)" in server_log
    assert "Sensitive-Marker" not in server_log
