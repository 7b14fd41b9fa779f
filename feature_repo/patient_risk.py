"""Feast definitions for the 90-day acute-care risk model.

The feature list comes from ``clinflow.prediction_task.FEATURES`` (the single
definition of the prediction task), so adding a feature there adds it here.
Feast imports every ``.py`` file in this directory: keep only definitions here.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, PrimitiveFeastType, String

from clinflow.prediction_task import (
    ENTITY_KEY,
    ENTITY_NAME,
    FEATURES,
    GROUP_COLUMN,
    TARGET_DESCRIPTION,
    TIMESTAMP_COLUMN,
)

FEAST_TYPES: dict[str, PrimitiveFeastType] = {"float": Float64, "int": Int64}

# A monthly snapshot older than this is too stale to describe the patient.
SNAPSHOT_TTL = timedelta(days=400)

patient = Entity(
    name=ENTITY_NAME,
    join_keys=[ENTITY_KEY],
    value_type=ValueType.STRING,
    description="A patient, keyed by the de-identified HMAC pseudonym",
)

patient_features_source = FileSource(
    name="patient_features",
    path="data/patient_features.parquet",
    timestamp_field=TIMESTAMP_COLUMN,
    description="Monthly feature snapshots built by clinflow.tables from de-identified FHIR data",
)


def _fields() -> list[Field]:
    """Builds the feature view schema from ``clinflow.prediction_task.FEATURES``.

    Returns:
        One Field per feature (Float64/Int64 from its dtype) plus the sex subgroup (String).

    Raises:
        ValueError: A feature has a dtype with no Feast type.
    """
    fields = []
    for feature in FEATURES:
        if feature.dtype not in FEAST_TYPES:
            raise ValueError(
                f"feature {feature.name!r} has dtype {feature.dtype!r}; expected one of {sorted(FEAST_TYPES)}"
            )
        fields.append(Field(name=feature.name, dtype=FEAST_TYPES[feature.dtype], description=feature.description))
    fields.append(Field(name=GROUP_COLUMN, dtype=String, description="Administrative gender: female/male/other"))
    return fields


patient_history = FeatureView(
    name="patient_history",
    entities=[patient],
    ttl=SNAPSHOT_TTL,
    schema=_fields(),
    online=True,
    source=patient_features_source,
    description="Patient history as of each monthly snapshot (data strictly before the snapshot time)",
    tags={"snapshot_cadence": "monthly"},
)

patient_risk_v1 = FeatureService(
    name="patient_risk_v1",
    features=[patient_history],
    description=f"Inputs of the risk model, version 1. Target: {TARGET_DESCRIPTION}",
    tags={"version": "1", "model": "acute_encounter_90d"},
)
