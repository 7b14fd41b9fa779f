"""The committed compiled spec is current, loads with kfp, and has the seven typed steps."""

import itertools
import re
from pathlib import Path

import pytest
import yaml
from kfp import components as kfp_components

from clinflow import images
from pipelines.compile import COMPILED_DIR, compile_all

pytestmark = pytest.mark.spec

STAGES = ["ingest", "deidentify", "validate", "features", "train", "evaluate", "deploy"]
# Fields a fresh compile may legitimately change without changing the pipeline.
VOLATILE = re.compile(r"^(\s*sdkVersion:).*$", re.MULTILINE)


def _normalise(text: str) -> str:
    return VOLATILE.sub(r"\1 <sdk>", text)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_committed_specs_match_a_fresh_compile(tmp_path):
    fresh = compile_all(tmp_path)
    assert fresh, "no pipelines compiled"
    for path in fresh:
        committed = COMPILED_DIR / path.name
        assert committed.exists(), f"{committed} missing: run `clinflow compile` and commit it"
        assert _normalise(committed.read_text()) == _normalise(path.read_text()), (
            f"{committed} is stale: run `clinflow compile` and commit the result"
        )
    assert sorted(p.name for p in COMPILED_DIR.glob("*.yaml")) == sorted(p.name for p in fresh)


def test_spec_loads_with_kfp_and_has_seven_tasks():
    spec_path = COMPILED_DIR / "clinical_risk.yaml"
    component = kfp_components.load_component_from_file(str(spec_path))
    assert component.name == "clinflow-clinical-risk"
    pipeline = _docs(spec_path)[0]
    tasks = pipeline["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(STAGES)
    # typed artifacts flow between consecutive stages
    for upstream, downstream in itertools.pairwise(STAGES):
        inputs = tasks[downstream].get("inputs", {}).get("artifacts", {})
        producers = {a["taskOutputArtifact"]["producerTask"] for a in inputs.values()}
        assert upstream in producers or downstream == "deploy", f"{downstream} does not consume {upstream}"
    artifact_types = {
        name: {
            o: spec["artifactType"]["schemaTitle"]
            for o, spec in c.get("outputDefinitions", {}).get("artifacts", {}).items()
        }
        for name, c in pipeline["components"].items()
    }
    assert artifact_types["comp-train"]["model"] == "system.Model"
    assert artifact_types["comp-evaluate"]["classification_metrics"] == "system.ClassificationMetrics"
    assert artifact_types["comp-deidentify"]["report"] == "system.HTML"


def test_images_are_pinned_and_come_from_one_module():
    pipeline = _docs(COMPILED_DIR / "clinical_risk.yaml")[0]
    used = {e["container"]["image"] for e in pipeline["deploymentSpec"]["executors"].values()}
    assert used == {images.PLATFORM.reference(), images.TFX.reference()}
    assert not any(image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1] for image in used)
    for executor in pipeline["deploymentSpec"]["executors"].values():
        assert executor["container"]["command"][:2] == ["python", "-m"]
        assert executor["container"]["command"][2].startswith("components.")


def test_no_secret_in_the_spec_and_key_comes_from_a_kubernetes_secret():
    text = (COMPILED_DIR / "clinical_risk.yaml").read_text()
    platform = _docs(COMPILED_DIR / "clinical_risk.yaml")[1]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secret = executors["exec-deidentify"]["secretAsEnv"][0]
    assert secret["secretName"] == "clinflow-hmac-key"
    assert secret["keyToEnv"][0]["envVar"] == "CLINFLOW_HMAC_KEY"
    parameters = _docs(COMPILED_DIR / "clinical_risk.yaml")[0]["root"]["inputDefinitions"]["parameters"]
    assert not any("key" in name or "token" in name or "secret" in name for name in parameters)
    assert "BEGIN" not in text and "PRIVATE KEY-" not in text
    bulk = executors["exec-ingest"]["secretAsEnv"][0]
    assert bulk["secretName"] == "clinflow-bulk-client" and bulk["optional"] is True
    assert {item["envVar"] for item in bulk["keyToEnv"]} == {"CLINFLOW_BULK_CLIENT_ID", "CLINFLOW_BULK_PRIVATE_KEY"}


def test_dockerfiles_install_from_the_same_locks_as_local_envs(repo_root):
    for environment in images.ENVIRONMENTS:
        dockerfile = (repo_root / "images" / environment.name / "Dockerfile").read_text()
        assert f"locks/{environment.name}.txt" in dockerfile
        assert f"FROM python:{environment.python}" in dockerfile
    skaffold = (repo_root / "skaffold.yaml").read_text()
    for environment in images.ENVIRONMENTS:
        assert f"images/{environment.name}/Dockerfile" in skaffold
    for overlay in ("dev", "staging", "prod"):
        assert f"manifests/overlays/{overlay}" in skaffold
