"""Reading and checking the training set (plain pandas; runs in both environments)."""

from __future__ import annotations

import hashlib
import os

import pandas as pd

from clinflow.errors import UserError
from clinflow.prediction_task import (
    ENTITY_KEY,
    FEATURE_NAMES,
    GROUP_COLUMN,
    LABEL_COLUMN,
    TIMESTAMP_COLUMN,
)

TRAINING_SET_FILE = "training_set.parquet"
EVAL_EXAMPLES_FILE = "eval.parquet"
REQUIRED_COLUMNS: tuple[str, ...] = (ENTITY_KEY, TIMESTAMP_COLUMN, LABEL_COLUMN, GROUP_COLUMN, *FEATURE_NAMES)


def parquet_in(directory: str, file_name: str) -> str:
    """Returns the path of a parquet file expected inside a Dataset directory.

    Args:
        directory: The Dataset directory.
        file_name: The file expected in it.

    Returns:
        The file path.

    Raises:
        UserError: When the file does not exist.
    """
    path = os.path.join(directory, file_name)
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found; pass the directory that holds {file_name}")
    return path


def file_sha256(path: str) -> str:
    """Hashes a file.

    Args:
        path: File to hash.

    Returns:
        The hex SHA-256 digest of its bytes.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_examples(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Checks columns and values of a training set or eval examples frame.

    Args:
        frame: The rows as read.
        source: File name used in error messages.

    Returns:
        A copy with ``event_timestamp`` as UTC datetimes, the label as int64, boolean
        features as int64 and other numeric features unchanged.

    Raises:
        UserError: On missing columns, nulls, non-numeric features or labels other than 0/1.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{source}: missing column(s) {', '.join(missing)}; regenerate it with the features stage")
    if frame.empty:
        raise UserError(f"{source}: no rows; the features stage produced an empty training set")
    nulls = [c for c in REQUIRED_COLUMNS if frame[c].isna().any()]
    if nulls:
        raise UserError(f"{source}: null values in column(s) {', '.join(nulls)}; features must use their defaults")
    out = frame.copy()
    try:
        out[TIMESTAMP_COLUMN] = pd.to_datetime(out[TIMESTAMP_COLUMN], utc=True)
    except (ValueError, TypeError) as error:
        raise UserError(f"{source}: column {TIMESTAMP_COLUMN} is not a timestamp ({error})") from error
    for name in FEATURE_NAMES:
        if pd.api.types.is_bool_dtype(out[name]):
            out[name] = out[name].astype("int64")
        elif not pd.api.types.is_numeric_dtype(out[name]):
            raise UserError(f"{source}: feature {name} is not numeric (dtype {out[name].dtype})")
    labels = set(pd.unique(out[LABEL_COLUMN]).tolist())
    if not labels <= {0, 1}:
        bad = sorted(str(v) for v in labels - {0, 1})[:3]
        raise UserError(f"{source}: {LABEL_COLUMN} must be 0/1, found {', '.join(bad)}")
    out[LABEL_COLUMN] = out[LABEL_COLUMN].astype("int64")
    out[ENTITY_KEY] = out[ENTITY_KEY].astype(str)
    out[GROUP_COLUMN] = out[GROUP_COLUMN].astype(str)
    return out


def read_examples(path: str) -> pd.DataFrame:
    """Reads and checks a parquet file of examples.

    Args:
        path: ``training_set.parquet`` or ``eval.parquet``.

    Returns:
        The checked frame (see ``check_examples``).

    Raises:
        UserError: When the file cannot be read as parquet or fails the checks.
    """
    name = os.path.basename(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several unrelated types for corrupt files
        raise UserError(f"{path}: cannot read as parquet ({type(error).__name__}: {error})") from error
    return check_examples(frame, name)
