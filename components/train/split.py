"""Temporal, patient-grouped train/eval split (plain pandas; runs in both environments).

* A cutoff time is taken at a quantile of the prediction times.
* A deterministic share of patients, chosen by hashing ``seed:patient_id``, is held out.
* Train = the other patients' rows whose label window closed before the cutoff
  (``event_timestamp + HORIZON_DAYS <= cutoff``), so no training label looks past it.
* Eval = the held-out patients' rows at or after the cutoff.

No patient is in both splits and every eval prediction time is later than every
training label window: the eval set estimates performance on new patients in the future.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clinflow.errors import UserError
from clinflow.prediction_task import ENTITY_KEY, HORIZON_DAYS, LABEL_COLUMN, TIMESTAMP_COLUMN

DEFAULT_CUTOFF_QUANTILE = 0.75
DEFAULT_EVAL_PATIENT_FRACTION = 0.25
_HASH_BUCKETS = 10_000


@dataclass(frozen=True)
class Split:
    """The two splits and how they were made.

    Attributes:
        train: Training rows (all input columns).
        eval: Held-out rows (all input columns).
        cutoff: The cutoff time (UTC).
        summary: JSON-ready description: cutoff, fractions, rows/positives/patients per split.
    """

    train: pd.DataFrame
    eval: pd.DataFrame
    cutoff: pd.Timestamp
    summary: dict[str, Any]


def is_eval_patient(patient_id: str, seed: int, fraction: float) -> bool:
    """Decides, deterministically, whether a patient is held out for evaluation.

    Args:
        patient_id: The de-identified patient key.
        seed: Split seed; a different seed picks a different patient set.
        fraction: Share of patients to hold out, in (0, 1).

    Returns:
        True when the patient belongs to the eval split.
    """
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _HASH_BUCKETS < round(fraction * _HASH_BUCKETS)


def cutoff_time(timestamps: pd.Series, quantile: float) -> pd.Timestamp:
    """Picks the cutoff: the prediction time at a quantile (an observed time, never interpolated).

    Args:
        timestamps: UTC prediction times.
        quantile: In (0, 1).

    Returns:
        The cutoff as a UTC timestamp.
    """
    nanos = pd.to_datetime(timestamps, utc=True).astype("int64").to_numpy()
    return pd.Timestamp(int(np.quantile(nanos, quantile, method="lower")), tz="UTC")


def split_counts(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts rows, positives and patients of one split.

    Args:
        frame: The split's rows.

    Returns:
        ``rows``, ``positives``, ``prevalence``, ``patients``, ``first_time`` and ``last_time``.
    """
    rows = len(frame)
    positives = int(frame[LABEL_COLUMN].sum()) if rows else 0
    return {
        "rows": rows,
        "positives": positives,
        "prevalence": positives / rows if rows else None,
        "patients": int(frame[ENTITY_KEY].nunique()),
        "first_time": frame[TIMESTAMP_COLUMN].min().isoformat() if rows else None,
        "last_time": frame[TIMESTAMP_COLUMN].max().isoformat() if rows else None,
    }


def _check_usable(name: str, counts: dict[str, Any], source: str) -> None:
    """Raises a UserError when a split is empty or holds a single class."""
    if counts["rows"] == 0:
        raise UserError(
            f"{source}: the {name} split is empty; provide more patients or a longer span of prediction times"
        )
    if counts["positives"] in (0, counts["rows"]):
        only = "positive" if counts["positives"] else "negative"
        raise UserError(
            f"{source}: the {name} split has only {only} labels ({counts['rows']} rows); "
            "provide more patients so both outcomes occur in it"
        )


def temporal_patient_split(
    frame: pd.DataFrame,
    seed: int,
    source: str = "training set",
    cutoff_quantile: float = DEFAULT_CUTOFF_QUANTILE,
    eval_fraction: float = DEFAULT_EVAL_PATIENT_FRACTION,
) -> Split:
    """Splits a training set into train and eval by time and by patient.

    Args:
        frame: Rows with ``patient_id``, UTC ``event_timestamp`` and the 0/1 label.
        seed: Chooses the held-out patients.
        source: File name used in error messages.
        cutoff_quantile: Quantile of prediction times used as the cutoff.
        eval_fraction: Share of patients held out.

    Returns:
        The split, rows sorted by patient and time.

    Raises:
        UserError: When either split is empty or has a single class.
    """
    if not 0 < cutoff_quantile < 1 or not 0 < eval_fraction < 1:
        raise UserError(
            f"split: cutoff quantile and eval fraction must be in (0, 1), got {cutoff_quantile} and {eval_fraction}"
        )
    times = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    cutoff = cutoff_time(times, cutoff_quantile)
    patients = pd.Series(frame[ENTITY_KEY].astype(str).unique())
    held_out = set(patients[patients.map(lambda p: is_eval_patient(p, seed, eval_fraction))])
    in_eval = frame[ENTITY_KEY].astype(str).isin(held_out)
    window_closed = times + pd.Timedelta(days=HORIZON_DAYS) <= cutoff
    order = [ENTITY_KEY, TIMESTAMP_COLUMN]
    train = frame[~in_eval & window_closed].sort_values(order, kind="mergesort").reset_index(drop=True)
    held = frame[in_eval & (times >= cutoff)].sort_values(order, kind="mergesort").reset_index(drop=True)
    train_counts, eval_counts = split_counts(train), split_counts(held)
    _check_usable("train", train_counts, source)
    _check_usable("eval", eval_counts, source)
    summary = {
        "method": "temporal, patient-grouped",
        "cutoff": cutoff.isoformat(),
        "cutoff_quantile": cutoff_quantile,
        "eval_patient_fraction": eval_fraction,
        "horizon_days": HORIZON_DAYS,
        "seed": seed,
        "input_rows": len(frame),
        "input_patients": len(patients),
        "set_aside_rows": len(frame) - len(train) - len(held),
        "train": train_counts,
        "eval": eval_counts,
    }
    return Split(train=train, eval=held, cutoff=cutoff, summary=summary)
