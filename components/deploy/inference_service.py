"""Builds the KServe ``InferenceService`` for a model with the kserve SDK model classes.

The predictor serves the SavedModel (``modelFormat: tensorflow``) from the storage
URI as a canary: ``canaryTrafficPercent`` routes that share of traffic to the new
revision. A model whose evaluation gates failed is still rendered (so the change
can be reviewed) but held at 0 percent, with the failed gates in an annotation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from kserve import (
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1ModelFormat,
    V1beta1ModelSpec,
    V1beta1PredictorSpec,
    constants,
)
from kubernetes.client import ApiClient, V1ObjectMeta, V1ResourceRequirements

from components.deploy.evidence import Evaluation, ModelInfo

ANNOTATION_PREFIX = "clinflow.io/"
PROMOTION_CANARY = "canary"
PROMOTION_HELD = "held"
DEFAULT_REQUESTS = {"cpu": "500m", "memory": "1Gi"}
DEFAULT_LIMITS = {"cpu": "1", "memory": "2Gi"}
LABEL_VALUE_MAX = 63


@dataclass(frozen=True)
class DeploymentRequest:
    """What to deploy, where, and how much traffic the canary asks for.

    Attributes:
        name: InferenceService name (also the model name on the serving endpoints).
        namespace: Target namespace.
        storage_uri: Where the predictor's storage initializer fetches the model from.
        canary_traffic_percent: Requested share of traffic for the new revision (0-100).
        service_account: Service account of the predictor pods (storage credentials), or None.
        min_replicas: Minimum predictor replicas.
        max_replicas: Maximum predictor replicas.
        requests: Container resource requests.
        limits: Container resource limits.
    """

    name: str
    namespace: str
    storage_uri: str
    canary_traffic_percent: int
    service_account: str | None = None
    min_replicas: int = 1
    max_replicas: int = 3
    requests: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_REQUESTS))
    limits: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LIMITS))


def label_value(value: str) -> str:
    """Makes a string a valid Kubernetes label value (``[A-Za-z0-9._-]``, at most 63, alnum ends).

    Args:
        value: Any string.

    Returns:
        The sanitised value (may be empty).
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", value)[:LABEL_VALUE_MAX]
    return cleaned.strip("._-")


def effective_traffic_percent(requested: int, evaluation: Evaluation) -> int:
    """Returns the canary share: the requested one when the gates passed, else 0.

    Args:
        requested: The requested ``canaryTrafficPercent``.
        evaluation: The evaluation result.

    Returns:
        The percent to render.
    """
    return requested if evaluation.passed else 0


def annotations_for(request: DeploymentRequest, model: ModelInfo, evaluation: Evaluation) -> dict[str, str]:
    """Builds the evidence annotations a GitOps reviewer reads on the resource.

    Args:
        request: The deployment request.
        model: Model facts.
        evaluation: Evaluation facts.

    Returns:
        Annotation key to value.
    """
    annotations = {
        "model-version": model.model_version,
        "eval-auroc": "n/a" if evaluation.auroc is None else f"{evaluation.auroc:.4f}",
        "eval-brier": "n/a" if evaluation.brier is None else f"{evaluation.brier:.4f}",
        "decision-threshold": f"{evaluation.threshold:.4f}",
        "gates-passed": "true" if evaluation.passed else "false",
        "promotion": PROMOTION_CANARY if evaluation.passed else PROMOTION_HELD,
        "requested-canary-traffic-percent": str(request.canary_traffic_percent),
    }
    if model.training_set_sha256:
        annotations["training-set-sha256"] = model.training_set_sha256
    if not evaluation.passed:
        annotations["failed-gates"] = ",".join(evaluation.failed_gates) or "(evaluation passed=false)"
    return {ANNOTATION_PREFIX + key: value for key, value in annotations.items()}


def labels_for(model: ModelInfo, evaluation: Evaluation) -> dict[str, str]:
    """Builds the selector-friendly labels.

    Args:
        model: Model facts.
        evaluation: Evaluation facts.

    Returns:
        Label key to value.
    """
    labels = {
        "app.kubernetes.io/name": "clinflow",
        "app.kubernetes.io/component": "risk-model",
        "app.kubernetes.io/managed-by": "clinflow-deploy",
        ANNOTATION_PREFIX + "promotion": PROMOTION_CANARY if evaluation.passed else PROMOTION_HELD,
    }
    version = label_value(model.model_version)
    if version:
        labels[ANNOTATION_PREFIX + "model-version"] = version
    return labels


def build_inference_service(
    request: DeploymentRequest, model: ModelInfo, evaluation: Evaluation
) -> V1beta1InferenceService:
    """Builds the InferenceService with the kserve SDK model classes.

    Args:
        request: The deployment request.
        model: Model facts (version, training-set hash).
        evaluation: Evaluation facts (metrics, gates).

    Returns:
        The ``serving.kserve.io/v1beta1`` InferenceService object.
    """
    predictor = V1beta1PredictorSpec(
        min_replicas=request.min_replicas,
        max_replicas=request.max_replicas,
        canary_traffic_percent=effective_traffic_percent(request.canary_traffic_percent, evaluation),
        service_account_name=request.service_account,
        model=V1beta1ModelSpec(
            name=None,  # the SDK defaults to ""; KServe names the container itself
            model_format=V1beta1ModelFormat(name="tensorflow"),
            storage_uri=request.storage_uri,
            resources=V1ResourceRequirements(requests=dict(request.requests), limits=dict(request.limits)),
        ),
    )
    return V1beta1InferenceService(
        api_version=f"{constants.KSERVE_GROUP}/{constants.KSERVE_V1BETA1_VERSION}",
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=request.name,
            namespace=request.namespace,
            labels=labels_for(model, evaluation),
            annotations=annotations_for(request, model, evaluation),
        ),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def to_manifest(inference_service: V1beta1InferenceService) -> dict[str, Any]:
    """Serialises an SDK object to the plain dict Kubernetes accepts (camelCase, no nulls).

    Args:
        inference_service: The SDK object.

    Returns:
        The manifest as a dict.
    """
    return dict(ApiClient().sanitize_for_serialization(inference_service))


def to_yaml(manifest: Mapping[str, Any]) -> str:
    """Renders a manifest as YAML in a stable, review-friendly order.

    Args:
        manifest: The manifest dict.

    Returns:
        The YAML text.
    """
    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False)
