"""The whole compiled pipeline, run locally: generated data, real Synthea data, bad input, serving."""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.http as triton_http
import yaml

from clinflow import serve
from clinflow.cli import main as clinflow_main
from clinflow.ndjson import iter_resources
from clinflow.prediction_task import FEATURE_NAMES
from clinflow.synthetic.drop import DropSizes, generate_clinical_drop

pytestmark = pytest.mark.integration
STAGES = ["ingest", "deidentify", "validate", "features", "train", "evaluate", "deploy"]


def _identifiers(source: Path) -> set[str]:
    """Every direct identifier of every input patient: names, identifiers, telecom, street lines, cities."""
    values: set[str] = set()
    for path in sorted(source.glob("Patient*.ndjson*")):
        for _, patient in iter_resources(path):
            for name in patient.get("name", []):
                values.update((name.get("family", "") and [name["family"]]) or [])
                values.update(g for g in name.get("given", []))
            values.update(i.get("value", "") for i in patient.get("identifier", []))
            values.update(t.get("value", "") for t in patient.get("telecom", []))
            for address in patient.get("address", []):
                values.update(address.get("line", []))
                values.add(address.get("city", ""))
            for extension in patient.get("extension", []):
                if extension.get("url", "").endswith("mothersMaidenName"):
                    values.add(extension.get("valueString", ""))
    # short tokens (e.g. a 3-letter given name) also occur inside ordinary words; keep distinctive ones.
    # A single-word name that is also coded vocabulary (a family name "White" and the US Core race display
    # "White") is not an identifier where it appears as a code, so coded displays are excluded.
    return {v for v in values if len(v) >= 5} - _coded_vocabulary(source)


def _coded_vocabulary(source: Path) -> set[str]:
    """Every Coding.display and CodeableConcept.text in the input: terminology, not identifiers."""
    vocabulary: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("display"), str) and "code" in node:
                vocabulary.add(node["display"])
            if isinstance(node.get("text"), str) and "coding" in node:
                vocabulary.add(node["text"])
            if node.get("url") == "text" and isinstance(node.get("valueString"), str):
                vocabulary.add(node["valueString"])  # US Core race/ethnicity text sub-extension
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(source.glob("*.ndjson*")):
        for _, resource in iter_resources(path):
            walk(resource)
    return vocabulary


TOKEN = re.compile(r"[0-9A-Za-z]+")


def _contains_whole(text: str, value: str) -> bool:
    """Tells whether ``value`` occurs in ``text`` not glued to letters or digits on either side."""
    start = text.find(value)
    while start != -1:
        end = start + len(value)
        before_ok = start == 0 or not text[start - 1].isalnum()
        after_ok = end == len(text) or not text[end].isalnum()
        if before_ok and after_ok:
            return True
        start = text.find(value, start + 1)
    return False


def _leaks(run_dir: Path, identifiers: set[str]) -> dict[str, int]:
    """Counts identifier hits in every file the run wrote after ingest (ingest's clean zone holds raw PHI).

    Matches whole tokens: an 8-digit identifier can occur by chance inside a 64-hex-digit pseudonym.
    """
    single_token = {v for v in identifiers if TOKEN.fullmatch(v)}
    compound = identifiers - single_token
    hits: dict[str, int] = {}
    for path in run_dir.rglob("*"):
        if not path.is_file() or path.relative_to(run_dir).parts[0] == "ingest":
            continue
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        text = data.decode("utf-8", errors="ignore")
        tokens = set(TOKEN.findall(text))
        candidates = {v for v in compound if tokens.issuperset(TOKEN.findall(v))}
        found = (single_token & tokens) | {v for v in candidates if _contains_whole(text, v)}
        if found:
            hits[str(path.relative_to(run_dir))] = len(found)
    return hits


def _run(source: Path, runs: Path, run_id: str, capsys) -> tuple[int, Path]:
    status = clinflow_main(["run", "--source", str(source), "--runs-dir", str(runs), "--run-id", run_id, "--quiet"])
    capsys.readouterr()
    return status, runs / run_id


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    source = tmp_path_factory.mktemp("generated")
    # every lane: FHIR at the top level, DICOM, device logs and PDFs for the first patients
    generate_clinical_drop(source, patients=400, seed=11, sizes=DropSizes(5, 40, 8))
    runs = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("CLINFLOW_HMAC_KEY", "integration-test-key-0123456789abcdef0123")
    status = clinflow_main(
        ["run", "--source", str(source), "--runs-dir", str(runs), "--run-id", "generated", "--quiet"]
    )
    mp.undo()
    return status, source, runs / "generated"


def test_every_step_succeeds_on_generated_data(generated_run):
    status, _, run_dir = generated_run
    record = json.loads((run_dir / "run.json").read_text())
    assert status == 0, [(t["name"], t["status"], t["error"]) for t in record["tasks"]]
    assert [t["name"] for t in record["tasks"]] == STAGES
    assert all(t["status"] == "succeeded" for t in record["tasks"])


def test_outputs_have_the_cluster_layout_and_ui_metadata(generated_run):
    _, _, run_dir = generated_run
    record = json.loads((run_dir / "run.json").read_text())
    tasks = {t["name"]: t for t in record["tasks"]}
    for name, task in tasks.items():
        for output_name, output in task["outputs"].items():
            assert Path(output["uri"]) == run_dir / name / output_name
            assert Path(output["uri"]).exists(), f"{name}.{output_name} missing"
    assert tasks["evaluate"]["outputs"]["metrics"]["metadata"]["auroc"] > 0.6
    roc = tasks["evaluate"]["outputs"]["classification_metrics"]["metadata"]
    assert roc["confidenceMetrics"] and roc["confusionMatrix"]["rows"]
    model_dir = Path(tasks["train"]["outputs"]["model"]["uri"])
    assert any((p / "saved_model.pb").exists() for p in model_dir.iterdir() if p.is_dir())


def test_counts_add_up_across_deidentification(generated_run):
    _, _, run_dir = generated_run
    record = json.loads((run_dir / "run.json").read_text())
    tasks = {t["name"]: t for t in record["tasks"]}
    ingest = tasks["ingest"]["outputs"]["metrics"]["metadata"]
    deid = tasks["deidentify"]["outputs"]["metrics"]["metadata"]
    assert ingest["fhir_resources"] == deid["resources_in"] == deid["resources_out"] + deid["dead_letter"]
    assert ingest["files_received"] == sum(
        ingest[f"files_{state}"] for state in ("promoted", "quarantined", "rejected", "duplicate", "skipped")
    )
    for lane in ("fhir", "dicom", "device_logs", "pdf"):
        assert ingest[f"{lane}_promoted"] > 0 and ingest[f"{lane}_received"] == ingest[f"{lane}_promoted"]


def test_no_input_identifier_survives_after_ingest(generated_run):
    _, source, run_dir = generated_run
    identifiers = _identifiers(source)
    assert len(identifiers) > 1000
    assert _leaks(run_dir, identifiers) == {}


def test_inference_service_validates_against_the_crd(generated_run, shared_data):
    jsonschema = pytest.importorskip("jsonschema")
    _, _, run_dir = generated_run
    manifest = yaml.safe_load((run_dir / "deploy" / "inference_service" / "inferenceservice.yaml").read_text())
    crd = yaml.safe_load((shared_data / "kserve-crd" / "serving.kserve.io_inferenceservices.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.Draft7Validator(schema).validate(manifest)
    assert manifest["kind"] == "InferenceService"


def test_served_model_answers_v1_and_v2(generated_run, tmp_path):
    _, _, run_dir = generated_run
    model_dir, config = serve.model_artifacts_from_run(run_dir)
    port = serve.free_port()
    log = tmp_path / "serve.log"
    process = serve.start_server(serve.server_command(model_dir, "clinflow-risk", port, config), log)
    try:
        serve.wait_until_ready(process, f"http://127.0.0.1:{port}", "clinflow-risk", log)
        import pandas as pd

        rows = pd.read_parquet(run_dir / "train" / "eval_examples" / "eval.parquet").head(4)
        client = triton_http.InferenceServerClient(url=f"127.0.0.1:{port}")
        inputs = []
        for name in FEATURE_NAMES:
            tensor = triton_http.InferInput(name, [len(rows)], "FP32")
            tensor.set_data_from_numpy(rows[name].to_numpy(dtype="float32"))
            inputs.append(tensor)
        result = client.infer("clinflow-risk", inputs)
        probabilities = result.as_numpy("probability")
        assert probabilities.shape == (4,)
        assert ((probabilities > 0) & (probabilities < 1)).all()
        v1 = serve.v1_predict(
            f"http://127.0.0.1:{port}",
            "clinflow-risk",
            [{name: float(rows.iloc[0][name]) for name in FEATURE_NAMES}],
        )
        assert abs(v1["predictions"][0]["probability"] - float(probabilities[0])) < 1e-5
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_real_synthea_export_runs_and_leaks_nothing(shared_data, tmp_path, monkeypatch, capsys):
    source = shared_data / "fhir-bulk-100"
    monkeypatch.setenv("CLINFLOW_HMAC_KEY", "integration-test-key-synthea-0123456789abcdef")
    status, run_dir = _run(source, tmp_path, "synthea", capsys)
    record = json.loads((run_dir / "run.json").read_text())
    assert status == 0, [(t["name"], t["status"], t["error"]) for t in record["tasks"]]
    assert _leaks(run_dir, _identifiers(source)) == {}


def _cli(*args: str, env_key: bool = True) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_key:
        env["CLINFLOW_HMAC_KEY"] = "integration-test-key-0123456789abcdef0123"
    return subprocess.run([sys.executable, "-m", "clinflow.cli", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("truncated-line", r"Patient.000.ndjson:3"),
        ("no-fhir-file", r"no FHIR NDJSON file was promoted.*notes.txt"),
        ("empty-dir", r"no FHIR NDJSON|empty|no NDJSON"),
    ],
)
def test_bad_input_gives_one_clear_line(case, expected, tmp_path, synthetic_fhir_dir):
    import re

    source = tmp_path / case
    source.mkdir()
    if case == "truncated-line":
        lines = (synthetic_fhir_dir / "Patient.000.ndjson").read_text().splitlines()
        lines[2] = lines[2][: len(lines[2]) // 2]
        (source / "Patient.000.ndjson").write_text("\n".join(lines[:5]) + "\n")
    elif case == "no-fhir-file":
        (source / "notes.txt").write_text("this is not FHIR\n")
    result = _cli("run", "--source", str(source), "--runs-dir", str(tmp_path / "runs"), "--quiet")
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("error: ")
    assert re.search(expected, error_lines[0]), error_lines[0]
    assert "Traceback" not in result.stderr + result.stdout
