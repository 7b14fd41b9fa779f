"""What deploy reads from the model and evaluation artifacts.

Model: TF-Serving layout plus ``clinflow_model.json`` (version, training-set hash).
Evaluation: ``evaluation.json`` with ``auroc``, ``brier``, ``threshold``, ``passed`` and
``gates`` (gate name to a bool or to an object with a boolean ``passed``).
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
        auroc: Area under the ROC curve on the held-out split.
        brier: Brier score on the held-out split.
        threshold: Decision threshold chosen by evaluate.
        passed: Whether every promotion gate passed.
        failed_gates: Names of the gates that failed, sorted.
    """

    auroc: float
    brier: float
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


def gate_passed(name: str, gate: Any, source: Path) -> bool:
    """Interprets one gate entry.

    Args:
        name: Gate name.
        gate: ``true``/``false`` or an object with a boolean ``passed``.
        source: The file, for messages.

    Returns:
        Whether the gate passed.

    Raises:
        UserError: The entry has neither form.
    """
    if isinstance(gate, bool):
        return gate
    if isinstance(gate, dict) and isinstance(gate.get("passed"), bool):
        return bool(gate["passed"])
    raise UserError(f"{source}: gate '{name}' must be true/false or an object with a boolean 'passed'")


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
    gates = document.get("gates")
    if not isinstance(gates, dict):
        raise UserError(f"{source}: 'gates' must be an object of gate name to result")
    if not isinstance(document.get("passed"), bool):
        raise UserError(f"{source}: 'passed' must be true or false")
    failed = tuple(sorted(name for name, gate in gates.items() if not gate_passed(name, gate, source)))
    return Evaluation(
        auroc=require_number(document, "auroc", source, 0.0, 1.0),
        brier=require_number(document, "brier", source, 0.0, 1.0),
        threshold=require_number(document, "threshold", source, 0.0, 1.0),
        passed=bool(document["passed"]) and not failed,
        failed_gates=failed,
    )
