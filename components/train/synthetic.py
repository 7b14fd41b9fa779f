"""A deterministic synthetic training set with real signal, for tests and demos.

Same columns as the features stage's ``training_set.parquet``. Each patient has a
latent frailty that drives utilisation features; the label is drawn from
``Bernoulli(sigmoid(linear in the features))``, so a model can learn it and a
held-out AUROC well above 0.5 is expected.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clinflow.prediction_task import (
    ENTITY_KEY,
    GROUP_COLUMN,
    LABEL_COLUMN,
    PREDICTION_CADENCE_MONTHS,
    PREDICTION_WINDOW_YEARS,
    TIMESTAMP_COLUMN,
)

_FIRST_PREDICTION = pd.Timestamp("2021-01-01", tz="UTC")


def _prediction_times(rng: np.random.Generator) -> list[pd.Timestamp]:
    """One patient's prediction times: every cadence step over the window, on a random day of month."""
    day = int(rng.integers(1, 27))
    steps = PREDICTION_WINDOW_YEARS * 12 // PREDICTION_CADENCE_MONTHS
    return [
        _FIRST_PREDICTION + pd.DateOffset(months=PREDICTION_CADENCE_MONTHS * k, days=day, hours=9) for k in range(steps)
    ]


def _patient_rows(rng: np.random.Generator, index: int, signal: float) -> list[dict[str, object]]:
    """Rows for one patient across their prediction times."""
    sex = str(rng.choice(["female", "male", "other"], p=[0.5, 0.47, 0.03]))
    base_age = float(rng.uniform(18, 90))
    frailty = float(rng.normal())
    chronic = int(rng.binomial(6, 1 / (1 + np.exp(-(frailty + (base_age - 60) / 20)))))
    rows = []
    for k, when in enumerate(_prediction_times(rng)):
        rate = np.exp(0.7 * frailty)
        ed = int(rng.poisson(0.4 * rate))
        inpatient = int(rng.poisson(0.15 * rate))
        encounters = ed + inpatient + int(rng.poisson(3 + 2 * chronic))
        days_since = float(rng.uniform(1, 365)) if ed + inpatient else 3650.0
        age = base_age + k * PREDICTION_CADENCE_MONTHS / 12
        hba1c = float(rng.normal(5.6 + 0.6 * max(frailty, 0), 0.4))
        logit = -2.2 + signal * (
            0.55 * ed
            + 0.7 * inpatient
            + 0.25 * chronic
            + 0.025 * (age - 55)
            - 0.0003 * days_since
            + 0.25 * (hba1c - 5.6)
        )
        rows.append(
            {
                ENTITY_KEY: f"patient-{index:05d}",
                TIMESTAMP_COLUMN: when,
                LABEL_COLUMN: int(rng.random() < 1 / (1 + np.exp(-logit))),
                GROUP_COLUMN: sex,
                "age_years": round(age, 2),
                "sex_female": int(sex == "female"),
                "encounters_365d": encounters,
                "ed_visits_365d": ed,
                "inpatient_admissions_365d": inpatient,
                "days_since_last_acute": round(days_since, 1),
                "active_conditions": chronic + int(rng.poisson(2)),
                "chronic_risk_conditions": chronic,
                "medications_365d": int(rng.poisson(1 + 1.5 * chronic)),
                "systolic_bp_last": round(float(rng.normal(125 + 3 * chronic, 12)), 1),
                "bmi_last": round(float(rng.normal(27.5, 4.5)), 1),
                "hba1c_last": round(hba1c, 2),
            }
        )
    return rows


def synthetic_training_set(patients: int = 400, seed: int = 0, signal: float = 1.0) -> pd.DataFrame:
    """Generates a training set shaped like the features stage's output.

    Args:
        patients: Number of patients (each gets one row per quarterly prediction time over 3 years).
        seed: Random seed; the same seed gives the same frame.
        signal: Scales the features' effect on the label log-odds (0 means labels are noise).

    Returns:
        Columns ``patient_id, event_timestamp, acute_encounter_90d, sex`` and every feature.
    """
    rng = np.random.default_rng(seed)
    rows = [row for i in range(patients) for row in _patient_rows(rng, i, signal)]
    frame = pd.DataFrame(rows)
    frame[TIMESTAMP_COLUMN] = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    return frame
