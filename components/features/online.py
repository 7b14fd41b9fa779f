"""Materializes the latest snapshots into the online store and reads them back to verify."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
from feast import FeatureService, FeatureStore

from clinflow.errors import UserError
from clinflow.prediction_task import ENTITY_KEY, TIMESTAMP_COLUMN
from components.features.training_set import VALUE_COLUMNS

READ_BATCH = 1000


@dataclass(frozen=True)
class OnlineWindow:
    """The materialization interval (both ends inclusive, UTC).

    Attributes:
        start: The latest snapshot time minus the TTL.
        end: The latest snapshot time in the table.
    """

    start: datetime
    end: datetime


def materialization_window(snapshots: pd.DataFrame, ttl: timedelta) -> OnlineWindow:
    """Chooses the interval to materialize: the TTL window ending at the latest snapshot.

    Patients whose latest snapshot is older than the TTL at that time are left out of the
    online store, as the point-in-time join would leave them out of training.

    Args:
        snapshots: ``patient_features`` (UTC timestamps).
        ttl: The feature view's time to live.

    Returns:
        The interval.
    """
    end = snapshots[TIMESTAMP_COLUMN].max().to_pydatetime()
    return OnlineWindow(start=end - ttl, end=end)


def expected_online_rows(snapshots: pd.DataFrame, window: OnlineWindow) -> pd.DataFrame:
    """Computes what the online store must hold after materializing the window.

    Args:
        snapshots: ``patient_features`` (UTC timestamps).
        window: The materialized interval.

    Returns:
        Each patient's latest snapshot inside the window, indexed by ``patient_id`` (sorted).
    """
    times = snapshots[TIMESTAMP_COLUMN]
    inside = snapshots[(times >= pd.Timestamp(window.start)) & (times <= pd.Timestamp(window.end))]
    latest = inside.sort_values(TIMESTAMP_COLUMN).groupby(ENTITY_KEY, sort=True).tail(1)
    return latest.set_index(ENTITY_KEY).sort_index().loc[:, VALUE_COLUMNS]


def materialize(store: FeatureStore, window: OnlineWindow) -> None:
    """Loads the latest value per patient in the window into the online store.

    Args:
        store: The applied feature store.
        window: The interval to materialize.
    """
    store.materialize(start_date=window.start, end_date=window.end)


def read_online(store: FeatureStore, service: FeatureService, patient_ids: list[str]) -> pd.DataFrame:
    """Reads the feature service for patients from the online store, in batches.

    Args:
        store: The feature store.
        service: The feature service to read.
        patient_ids: The patients.

    Returns:
        One row per patient (nulls when absent), indexed by ``patient_id``.
    """
    parts = []
    for offset in range(0, len(patient_ids), READ_BATCH):
        rows = [{ENTITY_KEY: pid} for pid in patient_ids[offset : offset + READ_BATCH]]
        parts.append(store.get_online_features(features=service, entity_rows=rows).to_df())
    if not parts:
        return pd.DataFrame(columns=[ENTITY_KEY, *VALUE_COLUMNS]).set_index(ENTITY_KEY)
    return pd.concat(parts, ignore_index=True).set_index(ENTITY_KEY).loc[:, VALUE_COLUMNS]


def first_difference(expected: pd.DataFrame, actual: pd.DataFrame) -> str | None:
    """Describes the first value that differs between two aligned frames.

    Args:
        expected: Rows indexed by ``patient_id``.
        actual: The same rows and columns as read back.

    Returns:
        ``"<patient> <column>: expected X, got Y"``, or None when all values are equal.
    """
    for column in expected.columns:
        differs = expected[column].to_numpy() != actual[column].to_numpy()
        if differs.any():
            row = int(differs.nonzero()[0][0])
            return (
                f"{expected.index[row]} {column}: expected {expected[column].iloc[row]!r}, "
                f"got {actual[column].iloc[row]!r}"
            )
    return None


def verify_online(store: FeatureStore, service: FeatureService, expected: pd.DataFrame) -> int:
    """Reads every materialized patient back and compares it with its latest snapshot.

    Args:
        store: The materialized feature store.
        service: The feature service to read.
        expected: The result of ``expected_online_rows``.

    Returns:
        The number of patients found in the online store.

    Raises:
        UserError: A patient is missing or a value differs (names the first one).
    """
    where = f"online store ({store.config.online_store.type}, repo {store.repo_path})"
    actual = read_online(store, service, list(expected.index))
    present = actual.notna().all(axis=1)
    if not present.all():
        first = actual.index[~present.to_numpy()][0]
        raise UserError(
            f"{where}: {int((~present).sum())} of {len(expected)} materialized patients absent, first {first}"
        )
    difference = first_difference(expected, actual)
    if difference is not None:
        raise UserError(f"{where}: value read back differs from the latest snapshot: {difference}")
    return int(present.sum())
