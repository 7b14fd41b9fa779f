"""Tests of clinflow.tables: point-in-time features, labels, defaults, deaths, real Synthea data.

Runs in both environments (pandas 1.5/py3.10 and pandas 2.x/py3.11).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from clinflow.errors import UserError
from clinflow.prediction_task import FEATURE_NAMES, FEATURES, HORIZON_DAYS
from clinflow.tables import (
    Tables,
    build_tables,
    day_offset,
    merge_intervals,
    patient_id_from_reference,
    write_tables,
)

DEFAULTS = {f.name: f.default for f in FEATURES}
DATA_END = "2023-12-15T12:00:00+00:00"  # latest Encounter start in the hand-built exports
FIRST_PERIOD = pd.Timestamp("2021-01-01", tz="UTC")  # first quarter whose times follow the window start


def patient(pid: str, gender: str = "female", birth: str = "1980-05-05", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": gender, "birthDate": birth, **extra}


def encounter(pid: str, start: str, cls: str = "AMB", ref: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": f"e-{pid}-{start}-{cls}",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls},
        "subject": {"reference": ref or f"Patient/{pid}"},
        "period": {"start": start, "end": start},
    }


def condition(pid: str, code: str, onset: str, abatement: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": onset,
    }
    if abatement:
        resource["abatementDateTime"] = abatement
    return resource


def medication(pid: str, code: str, authored: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": "stopped",
        "medicationCodeableConcept": {"coding": [{"code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": authored,
    }


def quantity_obs(pid: str, code: str, when: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "x"},
    }


def bp_obs(pid: str, when: str, systolic: float, panel: str = "85354-9") -> dict[str, Any]:
    def component(code: str, value: float) -> dict[str, Any]:
        return {"code": {"coding": [{"code": code}]}, "valueQuantity": {"value": value}}

    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": panel}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "component": [component("8462-4", 80.0), component("8480-6", systolic)],
    }


def write_export(directory: Path, resources: list[dict[str, Any]], gz_types: tuple[str, ...] = ()) -> Path:
    """Writes resources as <ResourceType>.ndjson (gzipped for gz_types), plus the data-end anchor."""
    directory.mkdir(parents=True, exist_ok=True)
    resources = [patient("anchor"), encounter("anchor", DATA_END), *resources]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    for rtype, items in by_type.items():
        text = "".join(json.dumps(item) + "\n" for item in items)
        if rtype in gz_types:
            with gzip.open(directory / f"{rtype}.000.ndjson.gz", "wt", encoding="utf-8") as handle:
                handle.write(text)
        else:
            (directory / f"{rtype}.000.ndjson").write_text(text, encoding="utf-8")
    return directory


def feature_at(tables: Tables, pid: str, when: str) -> pd.Series:
    frame = tables.patient_features
    rows = frame[(frame.patient_id == pid) & (frame.event_timestamp == pd.Timestamp(when, tz="UTC"))]
    assert len(rows) == 1, f"expected one snapshot for {pid} at {when}, got {len(rows)}"
    return rows.iloc[0]


def prediction_time(pid: str, period: pd.Timestamp) -> pd.Timestamp:
    return period + pd.Timedelta(days=day_offset(pid, period))


def iso(when: pd.Timestamp) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S+00:00")


# --------------------------------------------------------------------------- hand-built exports


def test_encounter_on_the_snapshot_instant_is_not_counted(tmp_path: Path) -> None:
    resources = [
        patient("p1"),
        encounter("p1", "2021-06-01T00:00:00Z", "EMER"),  # exactly the 2021-06-01 snapshot
        encounter("p1", "2021-05-31T23:30:00-01:00"),  # 2021-06-01T00:30Z: after the snapshot
        encounter("p1", "2021-05-31T23:59:59Z"),  # the last second before the snapshot
    ]
    tables = build_tables(write_export(tmp_path / "in", resources, gz_types=("Encounter",)))
    june = feature_at(tables, "p1", "2021-06-01")
    assert june["encounters_365d"] == 1
    assert june["ed_visits_365d"] == 0
    assert june["days_since_last_acute"] == DEFAULTS["days_since_last_acute"]
    july = feature_at(tables, "p1", "2021-07-01")
    assert july["encounters_365d"] == 3
    assert july["ed_visits_365d"] == 1
    assert july["days_since_last_acute"] == pytest.approx(30.0)


def test_lookback_window_is_365_days_before_the_snapshot(tmp_path: Path) -> None:
    resources = [
        patient("p1"),
        encounter("p1", "2020-06-01T00:00:00Z", "IMP"),  # exactly 365 days before 2021-06-01
        encounter("p1", "2020-05-31T23:59:59Z", "IMP"),  # one second too early
    ]
    tables = build_tables(write_export(tmp_path / "in", resources))
    row = feature_at(tables, "p1", "2021-06-01")
    assert row["inpatient_admissions_365d"] == 1
    assert row["encounters_365d"] == 1
    assert row["days_since_last_acute"] == pytest.approx(365.0)


def test_label_window_is_open_at_t_and_closed_at_t_plus_horizon(tmp_path: Path) -> None:
    horizon = pd.Timedelta(days=HORIZON_DAYS)
    second = pd.Timedelta(seconds=1)
    cases = {
        "at-t": (pd.Timedelta(0), "EMER", 0),
        "just-after-t": (second, "EMER", 1),
        "at-horizon": (horizon, "IMP", 1),
        "after-horizon": (horizon + second, "EMER", 0),
        "ambulatory": (second, "AMB", 0),
    }
    resources: list[dict[str, Any]] = []
    for pid, (delta, cls, _) in cases.items():
        resources += [patient(pid), encounter(pid, iso(prediction_time(pid, FIRST_PERIOD) + delta), cls)]
    tables = build_tables(write_export(tmp_path / "in", resources))
    events = tables.prediction_events
    for pid, (_, _, expected) in cases.items():
        row = events[(events.patient_id == pid) & (events.event_timestamp == prediction_time(pid, FIRST_PERIOD))]
        assert len(row) == 1, pid
        assert row["acute_encounter_90d"].iloc[0] == expected, pid


def test_prediction_times_avoid_snapshots_and_have_complete_label_windows(tmp_path: Path) -> None:
    tables = build_tables(write_export(tmp_path / "in", [patient("p1"), patient("p2", gender="male")]))
    events = tables.prediction_events
    data_end = pd.Timestamp(DATA_END)
    assert tables.data_end == data_end
    assert set(events.patient_id) == {"anchor", "p1", "p2"}
    times = events.event_timestamp
    assert (times.dt.day >= 2).all() and (times.dt.day <= 28).all()
    assert (times + pd.Timedelta(days=HORIZON_DAYS) <= data_end).all()
    assert (times >= data_end - pd.DateOffset(years=3)).all()
    assert set(times.dt.month) <= {1, 4, 7, 10}
    periods = sorted({(t.year, t.month) for t in times[events.patient_id == "p1"]})
    assert periods[0] == (2021, 1) and periods[-1] == (2023, 7) and len(periods) == 11
    # every prediction time has a snapshot at or before it for the same patient
    snapshots = tables.patient_features.groupby("patient_id")["event_timestamp"].min()
    assert (events.event_timestamp.values >= snapshots.loc[events.patient_id].values).all()


def test_defaults_when_the_patient_has_no_data(tmp_path: Path) -> None:
    tables = build_tables(write_export(tmp_path / "in", [patient("p1", gender="unknown", birth="2000")]))
    row = feature_at(tables, "p1", "2022-01-01")
    for name in FEATURE_NAMES:
        if name == "age_years":
            assert row[name] == pytest.approx(22.0, abs=0.01)
        else:
            assert row[name] == DEFAULTS[name], name
    assert row["sex"] == "other"
    assert tables.patient_features[list(FEATURE_NAMES)].notna().all().all()


def test_observations_use_the_latest_value_strictly_before_the_snapshot(tmp_path: Path) -> None:
    resources = [
        patient("p1"),
        bp_obs("p1", "2021-03-10T10:00:00Z", 150.0),
        bp_obs("p1", "2021-04-01T00:00:00Z", 170.0, panel="55284-4"),  # at the snapshot: not yet
        quantity_obs("p1", "8480-6", "2021-04-20T00:00:00Z", 111.0),  # a bare systolic observation
        quantity_obs("p1", "39156-5", "2021-02-01T00:00:00Z", 31.5),
        quantity_obs("p1", "4548-4", "2019-01-01T00:00:00Z", 7.2),
        quantity_obs("p1", "8302-2", "2021-02-01T00:00:00Z", 170.0),  # height: ignored
    ]
    tables = build_tables(write_export(tmp_path / "in", resources, gz_types=("Observation",)))
    assert feature_at(tables, "p1", "2021-03-01")["systolic_bp_last"] == DEFAULTS["systolic_bp_last"]
    april = feature_at(tables, "p1", "2021-04-01")
    assert april["systolic_bp_last"] == 150.0
    assert april["bmi_last"] == 31.5
    assert april["hba1c_last"] == 7.2
    assert feature_at(tables, "p1", "2021-05-01")["systolic_bp_last"] == 111.0
    assert tables.resources_read["Observation"] == 6


def test_conditions_count_distinct_active_codes(tmp_path: Path) -> None:
    resources = [
        patient("p1"),
        condition("p1", "44054006", "2021-02-10T00:00:00Z", "2021-08-01T00:00:00Z"),  # diabetes
        condition("p1", "44054006", "2021-03-01T00:00:00Z"),  # same code again, overlapping: one code
        condition("p1", "195967001", "2021-06-15T00:00:00Z", "2021-07-01T00:00:00Z"),  # asthma
        condition("p1", "10509002", "2021-01-05T00:00:00Z", "2021-02-01T00:00:00Z"),  # bronchitis
    ]
    tables = build_tables(write_export(tmp_path / "in", resources))
    expected = {  # snapshot: (active, chronic)
        "2021-02-01": (1, 0),  # abated exactly at the snapshot: not before it, so still active
        "2021-03-01": (1, 1),
        "2021-04-01": (1, 1),
        "2021-07-01": (2, 2),
        "2021-09-01": (1, 1),
    }
    for when, (active, chronic) in expected.items():
        row = feature_at(tables, "p1", when)
        assert (row["active_conditions"], row["chronic_risk_conditions"]) == (active, chronic), when


def test_medications_count_distinct_codes_in_the_last_year(tmp_path: Path) -> None:
    resources = [
        patient("p1"),
        medication("p1", "A", "2021-01-10T00:00:00Z"),
        medication("p1", "A", "2021-03-10T00:00:00Z"),
        medication("p1", "B", "2021-03-20T00:00:00Z"),
    ]
    tables = build_tables(write_export(tmp_path / "in", resources))
    assert feature_at(tables, "p1", "2021-01-01")["medications_365d"] == 0
    assert feature_at(tables, "p1", "2021-04-01")["medications_365d"] == 2
    assert feature_at(tables, "p1", "2022-03-01")["medications_365d"] == 2
    assert feature_at(tables, "p1", "2022-04-01")["medications_365d"] == 0


def test_dead_patients_have_no_rows_after_death_and_unborn_none_before_birth(tmp_path: Path) -> None:
    death = pd.Timestamp("2022-03-15T08:00:00Z")
    resources = [
        patient("dead", deceasedDateTime=iso(death)),
        encounter("dead", "2022-03-01T09:00:00Z"),
        patient("baby", birth="2022-05-20"),
        patient("flagged", deceasedBoolean=True),
        encounter("flagged", "2021-08-10T00:00:00Z"),
    ]
    tables = build_tables(write_export(tmp_path / "in", resources))
    features, events = tables.patient_features, tables.prediction_events
    dead = features[features.patient_id == "dead"].event_timestamp
    assert dead.max() == pd.Timestamp("2022-03-01", tz="UTC")
    assert (events[events.patient_id == "dead"].event_timestamp < death).all()
    assert len(events[events.patient_id == "dead"]) == 5  # 2021-01 .. 2022-01 periods
    baby = features[features.patient_id == "baby"].event_timestamp
    assert baby.min() == pd.Timestamp("2022-06-01", tz="UTC")
    assert feature_at(tables, "baby", "2022-06-01")["age_years"] == pytest.approx(12 / 365.25)
    baby_events = events[events.patient_id == "baby"].event_timestamp
    assert baby_events.min() >= pd.Timestamp("2022-07-01", tz="UTC")
    flagged = features[features.patient_id == "flagged"].event_timestamp
    assert flagged.max() == pd.Timestamp("2021-08-01", tz="UTC")


def test_urn_uuid_references_and_sex(tmp_path: Path) -> None:
    resources = [
        patient("p1", gender="male"),
        encounter("p1", "2021-05-02T00:00:00Z", "EMER", ref="urn:uuid:p1"),
    ]
    tables = build_tables(write_export(tmp_path / "in", resources))
    row = feature_at(tables, "p1", "2021-06-01")
    assert row["ed_visits_365d"] == 1
    assert row["sex"] == "male" and row["sex_female"] == 0
    assert feature_at(tables, "anchor", "2021-06-01")["sex_female"] == 1


def test_skipped_records_are_counted_with_reasons(tmp_path: Path) -> None:
    resources = [
        patient("p1"),
        {"resourceType": "Patient", "id": "nobirth", "gender": "male"},
        encounter("ghost", "2021-05-02T00:00:00Z"),
        {"resourceType": "Encounter", "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"}},
        encounter("p1", "not-a-date"),
    ]
    tables = build_tables(write_export(tmp_path / "in", resources))
    assert tables.skipped == {
        "Encounter referencing an unknown Patient": 1,
        "Encounter with unparseable or out-of-range period.start": 1,
        "Encounter without period.start": 1,
        "Patient without birthDate": 1,
    }
    assert tables.patients == 2


def test_missing_patient_or_encounter_is_a_user_error(tmp_path: Path) -> None:
    only_patients = tmp_path / "p"
    only_patients.mkdir()
    (only_patients / "Patient.ndjson").write_text(json.dumps(patient("p1")) + "\n")
    with pytest.raises(UserError, match="no Encounter resources"):
        build_tables(only_patients)
    only_encounters = tmp_path / "e"
    only_encounters.mkdir()
    (only_encounters / "Encounter.ndjson").write_text(json.dumps(encounter("p1", DATA_END)) + "\n")
    with pytest.raises(UserError, match="no Patient resources"):
        build_tables(only_encounters)
    with pytest.raises(UserError, match=r"no \*\.ndjson"):
        build_tables(tmp_path)


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    directory = write_export(tmp_path / "in", [patient("p1")])
    with open(directory / "Encounter.000.ndjson", "a", encoding="utf-8") as handle:
        handle.write('{"resourceType": "Encounter", "id": \n')
    with pytest.raises(UserError, match=r"Encounter\.000\.ndjson:2: not valid JSON"):
        build_tables(directory)


def test_reference_parsing() -> None:
    assert patient_id_from_reference("Patient/abc") == "abc"
    assert patient_id_from_reference("urn:uuid:abc") == "abc"
    assert patient_id_from_reference("https://fhir.example/r4/Patient/abc/_history/2") == "abc"
    assert patient_id_from_reference("Group/abc") is None
    assert patient_id_from_reference(None) is None


def test_merge_intervals_makes_codes_disjoint() -> None:
    patient_ix = np.array([0, 0, 0, 1], dtype=np.int64)
    code = np.array(["a", "a", "a", "a"], dtype=object)
    start = np.array([10, 15, 40, 10], dtype=np.int64)
    end = np.array([20, 30, 50, 20], dtype=np.int64)
    owner, first, last = merge_intervals(patient_ix, code, start, end)
    assert list(zip(owner, first, last, strict=True)) == [(0, 10, 30), (0, 40, 50), (1, 10, 20)]


# --------------------------------------------------------------------------- real Synthea data


@pytest.fixture(scope="module")
def bulk100_tables(shared_data: Path) -> Tables:
    return build_tables(shared_data / "fhir-bulk-100")


def test_fhir_bulk_100_tables(bulk100_tables: Tables) -> None:
    tables = bulk100_tables
    features, events = tables.patient_features, tables.prediction_events
    assert tables.patients == 100
    assert tables.resources_read["Patient"] == 100
    assert tables.resources_read["Encounter"] == 3126
    assert tables.resources_read["Observation"] == 15404
    assert tables.data_end == pd.Timestamp("2021-03-30T19:43:24Z")
    assert list(features.columns) == ["patient_id", "event_timestamp", *FEATURE_NAMES, "sex"]
    assert features.notna().all().all()
    assert str(features.event_timestamp.dt.tz) == "UTC"
    stamps = features.event_timestamp
    assert (stamps.dt.day == 1).all() and (stamps == stamps.dt.normalize()).all()
    assert stamps.nunique() == 37  # 2018-03 .. 2021-03
    assert not features.duplicated(["patient_id", "event_timestamp"]).any()
    assert set(features.sex) <= {"female", "male", "other"}
    assert features.patient_id.nunique() == 75  # alive during the window (26 of 100 died earlier)
    assert (features.systolic_bp_last != 120.0).mean() > 0.5  # BP panels are read from components
    assert (features.bmi_last != 27.0).mean() > 0.5
    assert (features.active_conditions > 0).mean() > 0.3
    assert (events.event_timestamp.dt.day != 1).all()
    labels = events.acute_encounter_90d
    assert set(labels) == {0, 1}
    assert 0.005 < labels.mean() < 0.3
    assert len(events) > 500


def test_fhir_bulk_100_point_in_time_join_finds_a_snapshot(bulk100_tables: Tables) -> None:
    features = bulk100_tables.patient_features.sort_values("event_timestamp")
    events = bulk100_tables.prediction_events.sort_values("event_timestamp")
    joined = pd.merge_asof(
        events,
        features.rename(columns={"event_timestamp": "snapshot"}),
        left_on="event_timestamp",
        right_on="snapshot",
        by="patient_id",
        direction="backward",
    )
    assert joined["snapshot"].notna().all()
    assert (joined["snapshot"] < joined["event_timestamp"]).all()
    assert (joined["event_timestamp"] - joined["snapshot"] < pd.Timedelta(days=28)).all()


def test_write_tables_round_trip(bulk100_tables: Tables, tmp_path: Path) -> None:
    paths = write_tables(bulk100_tables, tmp_path / "tables")
    assert sorted(Path(p).name for p in paths.values()) == ["patient_features.parquet", "prediction_events.parquet"]
    schema = pq.read_schema(paths["patient_features"])
    assert str(schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("encounters_365d").type) == "int64"
    assert str(schema.field("age_years").type) == "double"
    back = pd.read_parquet(paths["patient_features"])
    assert len(back) == len(bulk100_tables.patient_features)
    assert (back.event_timestamp == bulk100_tables.patient_features.event_timestamp).all()
    pd.testing.assert_frame_equal(
        back.drop(columns="event_timestamp"), bulk100_tables.patient_features.drop(columns="event_timestamp")
    )
    events = pd.read_parquet(paths["prediction_events"])
    assert list(events.columns) == ["patient_id", "event_timestamp", "acute_encounter_90d"]
    assert events.acute_encounter_90d.dtype == np.int64
