"""Finding, loading and calling the exported SavedModel (TensorFlow imported inside functions)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clinflow.errors import UserError
from clinflow.prediction_task import FEATURE_NAMES

MODEL_METADATA_FILE = "clinflow_model.json"
OUTPUT_KEY = "probability"
SIGNATURE = "serving_default"
_BATCH = 8192


@dataclass(frozen=True)
class LoadedModel:
    """A loaded serving signature and where it came from.

    Attributes:
        path: The SavedModel directory.
        version: Its version directory name (``""`` when the model directory is the SavedModel itself).
        features: Input names, in ``clinflow_model.json`` order (or the prediction task's).
        metadata: ``clinflow_model.json`` contents, or an empty dict when absent.
        signature: The ``serving_default`` concrete function.
        module: The loaded SavedModel object; kept because the signature uses its variables.
    """

    path: str
    version: str
    features: tuple[str, ...]
    metadata: dict[str, Any]
    signature: Any
    module: Any


def find_saved_model(model_dir: str) -> tuple[str, str]:
    """Locates the SavedModel in a TF-Serving layout (``<dir>/<version>/saved_model.pb``).

    Args:
        model_dir: The Model artifact directory.

    Returns:
        (SavedModel directory, version); the highest numeric version wins.

    Raises:
        UserError: When no SavedModel is found.
    """
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: model directory not found; pass the train stage's --model output")
    versions = sorted(
        (int(entry), entry)
        for entry in os.listdir(model_dir)
        if entry.isdigit() and os.path.isfile(os.path.join(model_dir, entry, "saved_model.pb"))
    )
    if versions:
        return os.path.join(model_dir, versions[-1][1]), versions[-1][1]
    if os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        return model_dir, ""
    raise UserError(f"{model_dir}: no <version>/saved_model.pb found; pass the train stage's --model output")


def _read_metadata(model_dir: str) -> dict[str, Any]:
    """Reads ``clinflow_model.json`` when present."""
    path = os.path.join(model_dir, MODEL_METADATA_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from error


def load_model(model_dir: str) -> LoadedModel:
    """Loads the newest SavedModel version and checks its serving signature.

    Args:
        model_dir: The Model artifact directory.

    Returns:
        The loaded model.

    Raises:
        UserError: When the SavedModel cannot be loaded or its signature does not match the contract.
    """
    import tensorflow as tf

    path, version = find_saved_model(model_dir)
    metadata = _read_metadata(model_dir)
    features = tuple(f["name"] for f in metadata.get("features", [])) or FEATURE_NAMES
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # TF raises many types for unreadable/incompatible SavedModels
        raise UserError(f"{path}: cannot load SavedModel ({type(error).__name__}: {error})") from error
    if SIGNATURE not in loaded.signatures:
        raise UserError(f"{path}: no {SIGNATURE} signature (found {sorted(loaded.signatures)})")
    signature = loaded.signatures[SIGNATURE]
    inputs = signature.structured_input_signature[1]
    missing = [name for name in features if name not in inputs]
    if missing or OUTPUT_KEY not in signature.structured_outputs:
        raise UserError(
            f"{path}: {SIGNATURE} must take float32 inputs {list(features)} and return {OUTPUT_KEY!r}; "
            f"missing inputs {missing}, outputs {sorted(signature.structured_outputs)}"
        )
    return LoadedModel(path, version, features, metadata, signature, loaded)


def predict(model: LoadedModel, frame: pd.DataFrame, features: Sequence[str] | None = None) -> np.ndarray:
    """Calls ``serving_default`` in batches with float32 tensors.

    Args:
        model: The loaded model.
        frame: Rows holding every feature column.
        features: Input names; defaults to the model's.

    Returns:
        Probabilities as a float64 vector.

    Raises:
        UserError: When the model returns values outside [0, 1] or of the wrong length.
    """
    import tensorflow as tf

    names = tuple(features or model.features)
    outputs = []
    for start in range(0, len(frame), _BATCH):
        batch = frame.iloc[start : start + _BATCH]
        tensors = {name: tf.constant(batch[name].to_numpy(dtype=np.float32)) for name in names}
        outputs.append(np.reshape(model.signature(**tensors)[OUTPUT_KEY].numpy(), [-1]).astype(np.float64))
    scores = np.concatenate(outputs) if outputs else np.zeros(0)
    if len(scores) != len(frame) or not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise UserError(f"{model.path}: {OUTPUT_KEY} must be one probability in [0, 1] per row")
    return scores
