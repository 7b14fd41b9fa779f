"""Reads and checks the features stage's input tables (schemas in docs/stages.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow

from clinflow.errors import UserError
from clinflow.prediction_task import ENTITY_KEY, FEATURES, GROUP_COLUMN, LABEL_COLUMN, TIMESTAMP_COLUMN

PATIENT_FEATURES_FILE = "patient_features.parquet"
PREDICTION_EVENTS_FILE = "prediction_events.parquet"

FEATURE_DTYPES: dict[str, str] = {"float": "float64", "int": "int64"}
EVENT_COLUMNS: tuple[str, ...] = (ENTITY_KEY, TIMESTAMP_COLUMN, LABEL_COLUMN)


@dataclass(frozen=True)
class Tables:
    """The checked input tables.

    Attributes:
        patient_features_path: The snapshot parquet file, copied as-is into the feature store.
        patient_features: Snapshots with ``event_timestamp`` in UTC.
        prediction_events: ``patient_id, event_timestamp (UTC), acute_encounter_90d`` only.
    """

    patient_features_path: Path
    patient_features: pd.DataFrame
    prediction_events: pd.DataFrame


def read_parquet(path: Path) -> pd.DataFrame:
    """Reads one parquet table.

    Args:
        path: The file.

    Returns:
        Its rows.

    Raises:
        UserError: The file is missing or is not readable parquet.
    """
    if not path.is_file():
        raise UserError(f"{path}: not found; run the validate stage (clinflow.tables) to build the tables")
    try:
        return pd.read_parquet(path)
    except (OSError, pyarrow.ArrowException) as error:
        raise UserError(f"{path}: not a readable parquet file ({error})") from error


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    """Fails unless every required column is present.

    Args:
        frame: The table.
        columns: Required column names.
        path: The file, for the message.

    Raises:
        UserError: Naming the missing columns.
    """
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; see docs/stages.md for the schema")


def require_rows(frame: pd.DataFrame, path: Path) -> None:
    """Fails on an empty table.

    Args:
        frame: The table.
        path: The file, for the message.

    Raises:
        UserError: The table has no rows.
    """
    if frame.empty:
        raise UserError(f"{path}: the table has no rows; nothing to build a training set from")


def require_not_null(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    """Fails on a null in any of the columns, naming the first offending row.

    Args:
        frame: The table.
        columns: Columns that must never be null.
        path: The file, for the message.

    Raises:
        UserError: A null value.
    """
    for name in columns:
        nulls = frame[name].isna()
        if nulls.any():
            row = int(nulls.to_numpy().nonzero()[0][0])
            raise UserError(f"{path}: row {row}: column {name} is null ({int(nulls.sum())} null value(s))")


def require_unique_keys(frame: pd.DataFrame, path: Path) -> None:
    """Fails when a (patient_id, event_timestamp) pair occurs twice.

    Args:
        frame: The table.
        path: The file, for the message.

    Raises:
        UserError: Naming the first duplicated key.
    """
    duplicated = frame.duplicated([ENTITY_KEY, TIMESTAMP_COLUMN])
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise UserError(
            f"{path}: {int(duplicated.sum())} duplicate ({ENTITY_KEY}, {TIMESTAMP_COLUMN}) row(s), first "
            f"{first[ENTITY_KEY]} at {first[TIMESTAMP_COLUMN]}; each key must occur once"
        )


def require_strings(frame: pd.DataFrame, name: str, path: Path) -> None:
    """Fails unless a column holds strings (the pseudonymous patient ids are strings).

    Args:
        frame: The table.
        name: The column.
        path: The file, for the message.

    Raises:
        UserError: The column holds something else.
    """
    if not pd.api.types.is_string_dtype(frame[name]):
        raise UserError(f"{path}: column {name} has type {frame[name].dtype}; expected strings")


def utc_timestamps(column: pd.Series, path: Path) -> pd.Series:
    """Converts a timestamp column to UTC; naive timestamps are taken as UTC.

    Args:
        column: The ``event_timestamp`` column.
        path: The file, for the message.

    Returns:
        The column as ``datetime64[ns, UTC]``.

    Raises:
        UserError: The column does not hold timestamps.
    """
    if not pd.api.types.is_datetime64_any_dtype(column):
        raise UserError(f"{path}: column {column.name} has type {column.dtype}; expected a UTC timestamp")
    if column.dt.tz is None:
        return column.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    return column.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def check_feature_dtypes(frame: pd.DataFrame, path: Path) -> None:
    """Fails unless each feature column has the dtype its ``Feature.dtype`` promises.

    Args:
        frame: The patient feature snapshots.
        path: The file, for the message.

    Raises:
        UserError: Naming the first column with a wrong dtype.
    """
    for feature in FEATURES:
        expected = FEATURE_DTYPES[feature.dtype]
        if str(frame[feature.name].dtype) != expected:
            raise UserError(f"{path}: column {feature.name} has type {frame[feature.name].dtype}; expected {expected}")


def load_patient_features(path: Path) -> pd.DataFrame:
    """Reads and checks ``patient_features.parquet``.

    Args:
        path: The file.

    Returns:
        The snapshots, ``event_timestamp`` in UTC.

    Raises:
        UserError: Missing file or columns, no rows, nulls, wrong dtypes or duplicate keys.
    """
    frame = read_parquet(path)
    feature_names = tuple(feature.name for feature in FEATURES)
    columns = (ENTITY_KEY, TIMESTAMP_COLUMN, *feature_names, GROUP_COLUMN)
    require_columns(frame, columns, path)
    require_rows(frame, path)
    require_not_null(frame, columns, path)
    require_strings(frame, ENTITY_KEY, path)
    require_strings(frame, GROUP_COLUMN, path)
    check_feature_dtypes(frame, path)
    frame = frame.assign(**{TIMESTAMP_COLUMN: utc_timestamps(frame[TIMESTAMP_COLUMN], path)})
    require_unique_keys(frame, path)
    return frame


def load_prediction_events(path: Path) -> pd.DataFrame:
    """Reads and checks ``prediction_events.parquet``.

    Args:
        path: The file.

    Returns:
        ``patient_id``, ``event_timestamp`` (UTC) and the 0/1 label as int64, in file order.

    Raises:
        UserError: Missing file or columns, no rows, nulls, a label other than 0/1 or duplicate keys.
    """
    frame = read_parquet(path)
    require_columns(frame, EVENT_COLUMNS, path)
    require_rows(frame, path)
    frame = frame.loc[:, list(EVENT_COLUMNS)]
    require_not_null(frame, EVENT_COLUMNS, path)
    require_strings(frame, ENTITY_KEY, path)
    labels = frame[LABEL_COLUMN]
    bad = ~labels.isin([0, 1])
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise UserError(f"{path}: row {row}: {LABEL_COLUMN} is {labels.iloc[row]}; expected 0 or 1")
    frame = frame.assign(
        **{
            TIMESTAMP_COLUMN: utc_timestamps(frame[TIMESTAMP_COLUMN], path),
            LABEL_COLUMN: labels.astype("int64"),
        }
    )
    require_unique_keys(frame, path)
    return frame.reset_index(drop=True)


def load_tables(tables_dir: Path) -> Tables:
    """Reads and checks both input tables of the features stage.

    Args:
        tables_dir: The ``tables`` Dataset directory written by the validate stage.

    Returns:
        The checked tables.

    Raises:
        UserError: The directory or a table is missing or malformed.
    """
    if not tables_dir.is_dir():
        raise UserError(f"{tables_dir}: tables directory not found; pass the validate stage's --tables")
    features_path = tables_dir / PATIENT_FEATURES_FILE
    return Tables(
        patient_features_path=features_path,
        patient_features=load_patient_features(features_path),
        prediction_events=load_prediction_events(tables_dir / PREDICTION_EVENTS_FILE),
    )
