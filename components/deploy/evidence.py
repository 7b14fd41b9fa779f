"""What deploy reads from the model and evaluation artifacts.

Model: TF-Serving layout plus ``clinflow_model.json`` (version, training-set hash).
Evaluation: the evaluate stage's ``evaluation.json``: ``metrics`` (``auroc``, ``brier``; null
when the held-out data could not support them), ``threshold`` (``{"value", "method"}``),
``passed`` and ``gates`` (a list of ``{"name", "passed", ...}``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinflow.errors import UserError
from serving.model_artifact import MODEL_METADATA_FILE, find_version_dir, model_version_of, read_json_object

EVALUATION_FILE = "evaluation.json"
TRAINING_SET_HASH_KEYS = ("training_set_sha256", "training_set_hash")


@dataclass(frozen=True)
class ModelInfo:
    """The model facts that travel into the manifest.

    Attributes:
        model_version: The version the predictor reports.
        training_set_sha256: Content hash of the training set, when the model records it.
    """

    model_version: str
    training_set_sha256: str | None


@dataclass(frozen=True)
class Evaluation:
    """The evaluation facts deploy acts on.

    Attributes:
        auroc: Area under the ROC curve on the held-out split (None when undefined).
        brier: Brier score on the held-out split (None when undefined).
        threshold: Decision threshold chosen by evaluate.
        passed: Whether every promotion gate passed.
        failed_gates: Names of the gates that failed, sorted.
    """

    auroc: float | None
    brier: float | None
    threshold: float
    passed: bool
    failed_gates: tuple[str, ...]


def read_model_info(model_dir: Path) -> ModelInfo:
    """Reads the model version and training-set hash.

    Args:
        model_dir: The model artifact directory.

    Returns:
        The model facts.

    Raises:
        UserError: The layout or ``clinflow_model.json`` is wrong.
    """
    version_dir = find_version_dir(model_dir)
    metadata = read_json_object(model_dir / MODEL_METADATA_FILE)
    digest = next((str(metadata[key]) for key in TRAINING_SET_HASH_KEYS if metadata.get(key)), None)
    return ModelInfo(model_version=model_version_of(metadata, version_dir), training_set_sha256=digest)


def require_number(document: dict[str, Any], key: str, source: Path, low: float, high: float) -> float:
    """Reads a finite number within bounds from a JSON object.

    Args:
        document: The parsed object.
        key: The field name.
        source: The file, for messages.
        low: Smallest accepted value.
        high: Largest accepted value.

    Returns:
        The value as a float.

    Raises:
        UserError: Missing, not a number, or out of bounds.
    """
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{source}: '{key}' must be a number")
    if not low <= float(value) <= high:
        raise UserError(f"{source}: '{key}' = {value} is outside [{low}, {high}]")
    return float(value)


def optional_number(document: dict[str, Any], key: str, source: Path, low: float, high: float) -> float | None:
    """Reads a number within bounds that may be null (a metric the data could not support)."""
    if document.get(key) is None:
        return None
    return require_number(document, key, source, low, high)


def failed_gate_names(gates: Any, source: Path) -> tuple[str, ...]:
    """Lists the gates that did not pass.

    Args:
        gates: The ``gates`` list from ``evaluation.json``.
        source: The file, for messages.

    Returns:
        Names of failed gates, sorted.

    Raises:
        UserError: ``gates`` is not a list of objects with a name and a boolean ``passed``.
    """
    if not isinstance(gates, list):
        raise UserError(f"{source}: 'gates' must be a list of gate results")
    failed = []
    for index, gate in enumerate(gates):
        if (
            not isinstance(gate, dict)
            or not isinstance(gate.get("name"), str)
            or not isinstance(gate.get("passed"), bool)
        ):
            raise UserError(f"{source}: gate #{index} must be an object with a 'name' and a boolean 'passed'")
        if not gate["passed"]:
            failed.append(gate["name"])
    return tuple(sorted(failed))


def read_evaluation(evaluation_dir: Path) -> Evaluation:
    """Reads ``evaluation.json`` from the evaluate stage's output.

    Args:
        evaluation_dir: The evaluation artifact directory.

    Returns:
        The evaluation facts; ``passed`` is false when the file says so or any gate failed.

    Raises:
        UserError: The file is missing or malformed.
    """
    source = evaluation_dir / EVALUATION_FILE
    document = read_json_object(source)
    metrics = document.get("metrics")
    if not isinstance(metrics, dict):
        raise UserError(f"{source}: 'metrics' must be an object")
    threshold = document.get("threshold")
    if not isinstance(threshold, dict):
        raise UserError(f"{source}: 'threshold' must be an object with a 'value'")
    if not isinstance(document.get("passed"), bool):
        raise UserError(f"{source}: 'passed' must be true or false")
    failed = failed_gate_names(document.get("gates"), source)
    return Evaluation(
        auroc=optional_number(metrics, "auroc", source, 0.0, 1.0),
        brier=optional_number(metrics, "brier", source, 0.0, 1.0),
        threshold=require_number(threshold, "value", source, 0.0, 1.0),
        passed=bool(document["passed"]) and not failed,
        failed_gates=failed,
    )
