"""Write KFP v2 executor output from a container component.

Container components get file paths for their output artifacts; metadata that
the KFP UI shows (scalar Metrics, ClassificationMetrics) travels in the
ExecutorOutput JSON written to ``{{$.outputs.output_file}}``. The KFP launcher
on a cluster and clinflow's local runner both merge that metadata into the
output artifacts by name. Standard library only, so every environment can use it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any


def _finite(value: Any) -> Any:
    """Replaces NaN/inf (not valid JSON for the KFP backend) with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_executor_output(
    path: str | None,
    artifact_metadata: Mapping[str, Mapping[str, Any]] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> None:
    """Writes (or merges into) an ExecutorOutput JSON file.

    Args:
        path: The ``{{$.outputs.output_file}}`` path; ``None`` or empty is a no-op,
            so mains run by hand need not pass it.
        artifact_metadata: Output artifact name to metadata dict.
        parameters: Output parameter name to JSON value.
    """
    if not path:
        return
    document: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    artifacts = document.setdefault("artifacts", {})
    for name, metadata in (artifact_metadata or {}).items():
        artifacts[name] = {"artifacts": [{"metadata": _finite(dict(metadata))}]}
    if parameters:
        document.setdefault("parameterValues", {}).update(_finite(dict(parameters)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)


def scalar_metrics(values: Mapping[str, float | int]) -> dict[str, float]:
    """Converts counts and scores to the float map a KFP ``Metrics`` artifact shows.

    Args:
        values: Metric name to number.

    Returns:
        The same map with float values (non-finite values dropped).
    """
    return {name: float(v) for name, v in values.items() if math.isfinite(float(v))}


def classification_metrics(
    roc_points: Sequence[tuple[float, float, float]],
    labels: Sequence[str],
    confusion_matrix: Sequence[Sequence[int]],
) -> dict[str, Any]:
    """Builds ``ClassificationMetrics`` metadata (ROC curve and confusion matrix).

    Args:
        roc_points: (threshold, false positive rate, recall) triples.
        labels: Class display names, in matrix order.
        confusion_matrix: Rows of counts; row i is the true class ``labels[i]``.

    Returns:
        The metadata dict the KFP UI renders as a ROC curve and a confusion matrix.
    """
    return {
        "confidenceMetrics": [
            {"confidenceThreshold": float(t), "falsePositiveRate": float(f), "recall": float(r)}
            for t, f, r in roc_points
        ],
        "confusionMatrix": {
            "annotationSpecs": [{"displayName": label} for label in labels],
            "rows": [{"row": [int(c) for c in row]} for row in confusion_matrix],
        },
    }
