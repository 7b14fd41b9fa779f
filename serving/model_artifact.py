"""Reads a clinflow model artifact: TF-Serving layout plus its JSON sidecars.

Layout (written by the train stage)::

    <model_dir>/clinflow_model.json      feature names/defaults, label, version info
    <model_dir>/<version>/saved_model.pb one directory per integer version

The deploy stage writes ``serving_config.json`` (decision threshold, model
version) into its own output directory; the predictor reads it from
``--serving_config`` or, when present, from ``<model_dir>/serving_config.json``.
No TensorFlow import here, so deploy can use it without loading TF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinflow.errors import UserError

MODEL_METADATA_FILE = "clinflow_model.json"
SERVING_CONFIG_FILE = "serving_config.json"
SAVED_MODEL_FILE = "saved_model.pb"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ModelArtifact:
    """A located model, ready to load.

    Attributes:
        model_dir: The model root directory.
        version_dir: The highest integer version directory (holds ``saved_model.pb``).
        model_version: The model version string reported with every prediction.
        metadata: The parsed ``clinflow_model.json``.
        threshold: Decision threshold for the alert flag.
        threshold_source: Where the threshold came from (a file path or ``"default"``).
    """

    model_dir: Path
    version_dir: Path
    model_version: str
    metadata: dict[str, Any]
    threshold: float
    threshold_source: str


def read_json_object(path: Path) -> dict[str, Any]:
    """Reads a JSON file whose top level must be an object.

    Args:
        path: The file.

    Returns:
        The parsed object.

    Raises:
        UserError: The file is missing, not JSON, or not an object.
    """
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a JSON object at the top level")
    return document


def find_version_dir(model_dir: Path) -> Path:
    """Finds the highest integer version directory holding a SavedModel.

    Args:
        model_dir: The model root in TF-Serving layout.

    Returns:
        The ``<model_dir>/<highest version>`` directory.

    Raises:
        UserError: No integer-named directory with a ``saved_model.pb`` exists.
    """
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: model directory not found")
    versions = [
        child
        for child in model_dir.iterdir()
        if child.is_dir() and child.name.isdigit() and (child / SAVED_MODEL_FILE).is_file()
    ]
    if not versions:
        raise UserError(
            f"{model_dir}: no <version>/{SAVED_MODEL_FILE} found; expected TF-Serving layout "
            "(integer version directories), as written by the train stage"
        )
    return max(versions, key=lambda child: int(child.name))


def model_version_of(metadata: dict[str, Any], version_dir: Path) -> str:
    """Returns the model version: ``clinflow_model.json``'s own, else the directory name.

    Args:
        metadata: Parsed ``clinflow_model.json``.
        version_dir: The selected version directory.

    Returns:
        The version string.
    """
    for key in ("model_version", "version"):
        value = metadata.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return version_dir.name


def parse_threshold(value: Any, source: Path) -> float:
    """Checks a decision threshold read from a file.

    Args:
        value: The raw JSON value.
        source: The file it came from, for the error message.

    Returns:
        The threshold as a float in [0, 1].

    Raises:
        UserError: Not a number in [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise UserError(f"{source}: 'threshold' must be a number between 0 and 1")
    return float(value)


def serving_config_path(model_dir: Path, serving_config: Path | None) -> Path | None:
    """Returns the serving config to use: the explicit one, else one beside the model, else None.

    Args:
        model_dir: The model root.
        serving_config: An explicit path (must exist), or None.

    Returns:
        The path to read, or None when there is none.
    """
    if serving_config is not None:
        return serving_config
    beside = model_dir / SERVING_CONFIG_FILE
    return beside if beside.is_file() else None


def resolve_threshold(
    model_dir: Path, metadata: dict[str, Any], model_version: str, serving_config: Path | None
) -> tuple[float, str]:
    """Picks the decision threshold: serving config, then model metadata, then 0.5.

    Args:
        model_dir: The model root (a ``serving_config.json`` beside it is used when present).
        metadata: Parsed ``clinflow_model.json``.
        model_version: The located model version; a serving config for another version is refused.
        serving_config: An explicit ``serving_config.json`` path, or None.

    Returns:
        The threshold and where it came from.

    Raises:
        UserError: The serving config is missing, malformed or written for another model version.
    """
    path = serving_config_path(model_dir, serving_config)
    if path is not None:
        config = read_json_object(path)
        if "threshold" not in config:
            raise UserError(f"{path}: missing 'threshold'")
        configured_version = config.get("model_version")
        if configured_version is not None and str(configured_version) != model_version:
            raise UserError(
                f"{path}: written for model version {configured_version}, but {model_dir} holds "
                f"version {model_version}; re-run deploy for this model"
            )
        return parse_threshold(config["threshold"], path), str(path)
    if "threshold" in metadata:
        metadata_path = model_dir / MODEL_METADATA_FILE
        return parse_threshold(metadata["threshold"], metadata_path), str(metadata_path)
    return DEFAULT_THRESHOLD, "default"


def locate_model(model_dir: Path, serving_config: Path | None = None) -> ModelArtifact:
    """Locates and describes a model artifact without loading TensorFlow.

    Args:
        model_dir: The model root in TF-Serving layout.
        serving_config: Optional ``serving_config.json`` written by the deploy stage.

    Returns:
        The located artifact.

    Raises:
        UserError: The layout or the JSON sidecars are wrong.
    """
    version_dir = find_version_dir(model_dir)
    metadata = read_json_object(model_dir / MODEL_METADATA_FILE)
    model_version = model_version_of(metadata, version_dir)
    threshold, source = resolve_threshold(model_dir, metadata, model_version, serving_config)
    return ModelArtifact(
        model_dir=model_dir,
        version_dir=version_dir,
        model_version=model_version,
        metadata=metadata,
        threshold=threshold,
        threshold_source=source,
    )
