"""Every kustomize overlay renders offline and its resources validate.

The InferenceService is checked against the real KServe CRD schema (types, required
fields and undeclared fields). Kubernetes built-ins are checked against the Kubernetes
OpenAPI schemas with ``kubernetes-validate`` (strict: unknown fields fail), and by a
round trip through the official ``kubernetes`` client models.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient

from components.deploy.crd import validate_against_crd

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "staging", "prod")
EXPECTED_NAMESPACE = {"dev": "clinflow-dev", "staging": "clinflow-staging", "prod": "clinflow"}
BUILTIN_GROUPS = {"v1", "rbac.authorization.k8s.io/v1"}


def kustomize(path: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {env: kustomize(REPO / "manifests" / "overlays" / env) for env in OVERLAYS}


@pytest.fixture(scope="module")
def crd_path(shared_data: Path) -> Path:
    path = shared_data / "kserve-crd" / "serving.kserve.io_inferenceservices.yaml"
    if not path.is_file():
        pytest.skip(f"InferenceService CRD not found at {path}")
    return path


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def round_trip(doc: dict[str, Any]) -> Any:
    client = ApiClient()
    model = client.deserialize(SimpleNamespace(data=json.dumps(doc)), f"V1{doc['kind']}")
    return client.sanitize_for_serialization(model)


def test_base_renders() -> None:
    docs = kustomize(REPO / "manifests" / "base")
    assert {doc["kind"] for doc in docs} == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "InferenceService"}


@pytest.mark.parametrize("env", OVERLAYS)
def test_every_resource_has_identity(rendered: dict[str, list[dict[str, Any]]], env: str) -> None:
    for doc in rendered[env]:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc


@pytest.mark.parametrize("env", OVERLAYS)
def test_builtins_round_trip_through_kubernetes_models(rendered: dict[str, list[dict[str, Any]]], env: str) -> None:
    builtins = [doc for doc in rendered[env] if doc["apiVersion"] in BUILTIN_GROUPS]
    assert builtins
    for doc in builtins:
        assert round_trip(doc) == doc


KUBERNETES_VERSION = "1.30"  # the cluster line matching the kubernetes 30.x client in the lock


@pytest.mark.parametrize("env", OVERLAYS)
def test_builtins_validate_against_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]], env: str) -> None:
    builtins = [doc for doc in rendered[env] if doc["apiVersion"] in BUILTIN_GROUPS]
    for doc in builtins:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_schema_catches_a_wrong_type() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "x"},
        "automountServiceAccountToken": "no",
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_round_trip_catches_a_misspelled_field() -> None:
    doc = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x", "annotaions": {"a": "b"}}}
    assert round_trip(doc) != doc


@pytest.mark.parametrize("env", OVERLAYS)
def test_inference_service_validates_against_crd(
    rendered: dict[str, list[dict[str, Any]]], env: str, crd_path: Path
) -> None:
    (isvc,) = by_kind(rendered[env], "InferenceService")
    validate_against_crd(isvc, crd_path)
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["modelFormat"]["name"] == "tensorflow"
    assert predictor["model"]["storageUri"].startswith("gs://")
    assert 0 <= predictor["canaryTrafficPercent"] <= 100


@pytest.mark.parametrize("env", OVERLAYS)
def test_everything_lands_in_the_overlay_namespace(rendered: dict[str, list[dict[str, Any]]], env: str) -> None:
    namespace = EXPECTED_NAMESPACE[env]
    (ns,) = by_kind(rendered[env], "Namespace")
    assert ns["metadata"]["name"] == namespace
    for doc in rendered[env]:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]
    (binding,) = by_kind(rendered[env], "RoleBinding")
    assert binding["subjects"][0]["namespace"] == namespace


def test_overlays_differ_and_prod_is_redundant(rendered: dict[str, list[dict[str, Any]]]) -> None:
    predictors = {env: by_kind(rendered[env], "InferenceService")[0]["spec"]["predictor"] for env in OVERLAYS}
    assert predictors["prod"]["minReplicas"] >= 2
    assert len({json.dumps(p, sort_keys=True) for p in predictors.values()}) == len(OVERLAYS)
    assert len({p["canaryTrafficPercent"] for p in predictors.values()}) == len(OVERLAYS)
    assert len({p["model"]["storageUri"] for p in predictors.values()}) == len(OVERLAYS)


@pytest.mark.parametrize("env", OVERLAYS)
def test_no_secret_values_only_a_reference(rendered: dict[str, list[dict[str, Any]]], env: str) -> None:
    assert not by_kind(rendered[env], "Secret")
    (role,) = by_kind(rendered[env], "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["clinflow-hmac-key"], "verbs": ["get"]}
    ]
