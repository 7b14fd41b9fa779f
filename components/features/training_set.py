"""Point-in-time correct training set from the ``patient_risk_v1`` FeatureService."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import FeatureService, FeatureStore

from clinflow.prediction_task import (
    ENTITY_KEY,
    FEATURE_NAMES,
    FEATURES,
    GROUP_COLUMN,
    LABEL_COLUMN,
    TIMESTAMP_COLUMN,
)

TRAINING_SET_FILE = "training_set.parquet"
QUARANTINE_FILE = "rows_without_features.parquet"
KEY_COLUMNS: list[str] = [ENTITY_KEY, TIMESTAMP_COLUMN]
VALUE_COLUMNS: list[str] = [GROUP_COLUMN, *FEATURE_NAMES]
OUTPUT_COLUMNS: list[str] = [ENTITY_KEY, TIMESTAMP_COLUMN, LABEL_COLUMN, GROUP_COLUMN, *FEATURE_NAMES]
REASON_COLUMN = "reason"

REASON_UNKNOWN_PATIENT = "patient_not_in_feature_table"
REASON_BEFORE_FIRST_SNAPSHOT = "before_first_snapshot"
REASON_OUTSIDE_TTL = "latest_snapshot_older_than_ttl"
REASONS: tuple[str, ...] = (REASON_UNKNOWN_PATIENT, REASON_BEFORE_FIRST_SNAPSHOT, REASON_OUTSIDE_TTL)


@dataclass(frozen=True)
class TrainingSet:
    """The joined training rows and the events set aside.

    Attributes:
        rows: Events with features, columns ``OUTPUT_COLUMNS``, sorted by time then patient.
        quarantined: Events without a feature snapshot: key, label and ``reason``.
    """

    rows: pd.DataFrame
    quarantined: pd.DataFrame

    def reason_counts(self) -> dict[str, int]:
        """Counts the quarantined events per reason.

        Returns:
            Every reason in ``REASONS`` with its count (zero included).
        """
        counts = self.quarantined[REASON_COLUMN].value_counts()
        return {reason: int(counts.get(reason, 0)) for reason in REASONS}


def retrieve_historical(store: FeatureStore, events: pd.DataFrame, service: FeatureService) -> pd.DataFrame:
    """Runs Feast's point-in-time join of the events with the feature service.

    Args:
        store: The applied feature store.
        events: ``patient_id, event_timestamp, acute_encounter_90d``.
        service: The feature service to retrieve.

    Returns:
        Feast's result, one row per matched event (not necessarily all events, nor in order).
    """
    return store.get_historical_features(entity_df=events, features=service).to_df()


def align_to_events(events: pd.DataFrame, retrieved: pd.DataFrame) -> pd.DataFrame:
    """Puts Feast's result back on the events, one row per event.

    Feast's file offline store drops an event whose patient has snapshots but none inside
    the TTL window, and keeps an event of an unknown patient with nulls; aligning on the
    event keys makes both show up as null features.

    Args:
        events: The entity rows that went in.
        retrieved: Feast's result.

    Returns:
        The events with ``sex`` and the features (null where Feast found no snapshot).
    """
    values = retrieved.loc[:, KEY_COLUMNS + VALUE_COLUMNS]
    return events.merge(values, on=KEY_COLUMNS, how="left", validate="one_to_one")


def latest_snapshot_times(events: pd.DataFrame, snapshots: pd.DataFrame) -> pd.Series:
    """Finds, for each event, its patient's latest snapshot time at or before the event.

    Args:
        events: Key columns of the events.
        snapshots: Key columns of ``patient_features``.

    Returns:
        The snapshot time per event (NaT when none), indexed like ``events``.
    """
    left = events.loc[:, KEY_COLUMNS].reset_index().sort_values(TIMESTAMP_COLUMN)
    right = snapshots.loc[:, KEY_COLUMNS].rename(columns={TIMESTAMP_COLUMN: "snapshot_timestamp"})
    joined = pd.merge_asof(
        left,
        right.sort_values("snapshot_timestamp"),
        left_on=TIMESTAMP_COLUMN,
        right_on="snapshot_timestamp",
        by=ENTITY_KEY,
        direction="backward",
    )
    return joined.set_index("index")["snapshot_timestamp"].reindex(events.index)


def missing_reasons(missing: pd.DataFrame, snapshots: pd.DataFrame, ttl: timedelta) -> pd.Series:
    """Explains why each event got no features.

    Args:
        missing: Events without features.
        snapshots: ``patient_features`` (UTC timestamps).
        ttl: The feature view's time to live.

    Returns:
        One of ``REASONS`` per event.

    Raises:
        RuntimeError: An event has a snapshot inside the TTL window yet Feast returned none
            (a Feast or configuration bug, never silently dropped).
    """
    latest = latest_snapshot_times(missing, snapshots)
    known = missing[ENTITY_KEY].isin(set(snapshots[ENTITY_KEY]))
    reasons = pd.Series(REASON_OUTSIDE_TTL, index=missing.index, dtype=object)
    reasons[latest.isna()] = REASON_BEFORE_FIRST_SNAPSHOT
    reasons[~known] = REASON_UNKNOWN_PATIENT
    within_ttl = latest.notna() & (latest >= missing[TIMESTAMP_COLUMN] - ttl)
    if within_ttl.any():
        first = missing[within_ttl].iloc[0]
        raise RuntimeError(
            f"Feast returned no features for {first[ENTITY_KEY]} at {first[TIMESTAMP_COLUMN]} although a "
            f"snapshot at {latest[within_ttl].iloc[0]} is within the {ttl} TTL"
        )
    return reasons


def typed_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Restores the contract dtypes (Feast widens int features to float) and the column order.

    Args:
        rows: Events with complete features.

    Returns:
        ``OUTPUT_COLUMNS`` with int64/float64 features, sorted by time then patient.
    """
    dtypes = {feature.name: "int64" if feature.dtype == "int" else "float64" for feature in FEATURES}
    typed = rows.astype({**dtypes, GROUP_COLUMN: str, LABEL_COLUMN: "int64"}).loc[:, OUTPUT_COLUMNS]
    return typed.sort_values([TIMESTAMP_COLUMN, ENTITY_KEY], kind="stable").reset_index(drop=True)


def build_training_set(
    store: FeatureStore,
    service: FeatureService,
    events: pd.DataFrame,
    snapshots: pd.DataFrame,
    ttl: timedelta,
) -> TrainingSet:
    """Joins the prediction events point-in-time with the feature service.

    Args:
        store: The applied feature store.
        service: ``patient_risk_v1``.
        events: Checked prediction events (UTC).
        snapshots: Checked ``patient_features`` (UTC), used to explain events without features.
        ttl: The feature view's time to live.

    Returns:
        Training rows and the quarantined events with their reasons.
    """
    joined = align_to_events(events, retrieve_historical(store, events, service))
    complete = joined[VALUE_COLUMNS].notna().all(axis=1)
    missing = joined.loc[~complete, [*KEY_COLUMNS, LABEL_COLUMN]]
    quarantined = missing.assign(**{REASON_COLUMN: missing_reasons(missing, snapshots, ttl)})
    return TrainingSet(rows=typed_rows(joined[complete]), quarantined=quarantined.reset_index(drop=True))


def write_training_set(training_set: TrainingSet, training_dir: Path, quarantine_dir: Path) -> tuple[Path, Path]:
    """Writes the training rows and the quarantined events.

    Args:
        training_set: The result of ``build_training_set``.
        training_dir: The ``--training-set`` Dataset directory.
        quarantine_dir: Where the set-aside events go (inside the feature store artifact).

    Returns:
        The training set file and the quarantine file.
    """
    training_dir.mkdir(parents=True, exist_ok=True)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    training_path = training_dir / TRAINING_SET_FILE
    quarantine_path = quarantine_dir / QUARANTINE_FILE
    training_set.rows.to_parquet(training_path, index=False)
    training_set.quarantined.to_parquet(quarantine_path, index=False)
    return training_path, quarantine_path
