"""The prediction task, defined once: what is predicted, for whom, when, from what.

Target: an unplanned acute encounter -- an emergency-department visit or an
inpatient admission (FHIR ``Encounter.class`` in ``ACUTE_ENCOUNTER_CLASSES``) --
starting within ``HORIZON_DAYS`` days after the prediction time. This is the
"90-day acute care utilisation" outcome care-management teams use to target
outreach.

Entity: one patient, keyed by the de-identified ``patient_id`` pseudonym.

Prediction times: every ``PREDICTION_CADENCE_MONTHS`` months over the last
``PREDICTION_WINDOW_YEARS`` years of data whose label window is complete, for
patients alive and born at that time. Features are computed from data strictly
before the monthly feature snapshot at or before the prediction time (Feast's
point-in-time join picks that snapshot), so no label-window data leaks in.
"""

from __future__ import annotations

from dataclasses import dataclass

ENTITY_NAME = "patient"
ENTITY_KEY = "patient_id"
TIMESTAMP_COLUMN = "event_timestamp"
LABEL_COLUMN = "acute_encounter_90d"
GROUP_COLUMN = "sex"  # fairness subgroup column carried beside the features ("female"/"male"/"other")

ACUTE_ENCOUNTER_CLASSES = frozenset({"EMER", "IMP", "ACUTE"})
HORIZON_DAYS = 90
LOOKBACK_DAYS = 365
PREDICTION_WINDOW_YEARS = 3
PREDICTION_CADENCE_MONTHS = 3

TARGET_DESCRIPTION = (
    f"Emergency or inpatient encounter (Encounter.class in {sorted(ACUTE_ENCOUNTER_CLASSES)}) "
    f"starting within {HORIZON_DAYS} days after the prediction time"
)


@dataclass(frozen=True)
class Feature:
    """One model input.

    Attributes:
        name: Column, Feast field and model input name.
        dtype: ``"float"`` or ``"int"``.
        description: What it measures, as of the snapshot time.
        default: Value used when the patient has no data for it (documented imputation).
    """

    name: str
    dtype: str
    description: str
    default: float


FEATURES: tuple[Feature, ...] = (
    Feature("age_years", "float", "Age in years at the snapshot time", 0.0),
    Feature("sex_female", "int", "1 if administrative gender is female, else 0", 0),
    Feature("encounters_365d", "int", "Encounters of any class starting in the previous 365 days", 0),
    Feature("ed_visits_365d", "int", "Emergency encounters (class EMER) in the previous 365 days", 0),
    Feature(
        "inpatient_admissions_365d",
        "int",
        "Inpatient encounters (class IMP/ACUTE) in the previous 365 days",
        0,
    ),
    Feature(
        "days_since_last_acute",
        "float",
        "Days since the last emergency/inpatient encounter (3650 if none)",
        3650.0,
    ),
    Feature(
        "active_conditions",
        "int",
        "Distinct condition codes with onset before and no abatement before the snapshot",
        0,
    ),
    Feature(
        "chronic_risk_conditions",
        "int",
        "Active conditions among heart failure, COPD, diabetes, CKD, hypertension, asthma",
        0,
    ),
    Feature("medications_365d", "int", "Distinct medication codes ordered in the previous 365 days", 0),
    Feature(
        "systolic_bp_last",
        "float",
        "Most recent systolic blood pressure, mmHg (LOINC 8480-6); 120 if none",
        120.0,
    ),
    Feature("bmi_last", "float", "Most recent body mass index, kg/m2 (LOINC 39156-5); 27 if none", 27.0),
    Feature("hba1c_last", "float", "Most recent hemoglobin A1c, % (LOINC 4548-4); 5.6 if none", 5.6),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

# SNOMED CT codes counted by ``chronic_risk_conditions``.
CHRONIC_RISK_CONDITION_CODES = frozenset(
    {
        "88805009",  # chronic congestive heart failure
        "84114007",  # heart failure
        "13645005",  # chronic obstructive lung disease
        "185086009",  # chronic obstructive bronchitis
        "44054006",  # diabetes mellitus type 2
        "431855005",  # chronic kidney disease stage 1
        "431856006",  # chronic kidney disease stage 2
        "433144002",  # chronic kidney disease stage 3
        "431857002",  # chronic kidney disease stage 4
        "38341003",  # hypertensive disorder
        "59621000",  # essential hypertension
        "195967001",  # asthma
        "233678006",  # childhood asthma
    }
)

LOINC_SYSTOLIC_BP = "8480-6"
LOINC_BMI = "39156-5"
LOINC_HBA1C = "4548-4"


def is_acute_encounter_class(code: str | None) -> bool:
    """Tells whether an ``Encounter.class`` code counts toward the target.

    Args:
        code: The v3 ActCode, e.g. ``"EMER"``; ``None`` when absent.

    Returns:
        True for emergency and inpatient classes.
    """
    return (code or "").upper() in ACUTE_ENCOUNTER_CLASSES
