"""Unit tests of the validate stage's TFDV checks, schema and report (tfx environment)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from clinflow.errors import UserError
from clinflow.prediction_task import FEATURE_NAMES, FEATURES
from clinflow.tables import SEX_VALUES, Tables, build_tables
from components.validate import checks
from components.validate.report import ReportInputs, render

pytestmark = pytest.mark.tfx_env

tfdv = pytest.importorskip("tensorflow_data_validation")
schema_pb2 = pytest.importorskip("tensorflow_metadata.proto.v0.schema_pb2")


@pytest.fixture(scope="module")
def bulk100(shared_data: Path) -> Tables:
    return build_tables(shared_data / "fhir-bulk-100")


@pytest.fixture(scope="module")
def schema() -> object:
    return checks.load_schema()


def anomalies_of(frame: pd.DataFrame, schema: object) -> dict[str, str]:
    result = checks.validate(checks.compute_statistics(frame), schema)
    return {a.feature: a.short_description for a in checks.anomaly_list(result)}


def test_schema_matches_the_prediction_task(schema: object) -> None:
    features = {f.name: f for f in schema.feature}  # type: ignore[attr-defined]
    assert set(features) == {*FEATURE_NAMES, "sex"}
    for feature in FEATURES:
        expected = "INT" if feature.dtype == "int" else "FLOAT"
        assert schema_pb2.FeatureType.Name(features[feature.name].type) == expected, feature.name
        assert features[feature.name].presence.min_fraction == 1.0
    assert tuple(schema.string_domain[0].value) == SEX_VALUES  # type: ignore[attr-defined]


def test_real_synthea_tables_pass_the_schema(bulk100: Tables, schema: object) -> None:
    assert anomalies_of(bulk100.patient_features, schema) == {}


def test_generated_tables_pass_the_schema(synthetic_fhir_dir: Path, schema: object) -> None:
    tables = build_tables(synthetic_fhir_dir)
    assert len(tables.patient_features) > 0
    assert anomalies_of(tables.patient_features, schema) == {}


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("systolic_bp_last", 999.0, "Out-of-range values"),
        ("age_years", -1.0, "Out-of-range values"),
        ("encounters_365d", -3, "Out-of-range values"),
        ("sex", "unknown", "Unexpected string values"),
        ("hba1c_last", None, "Column dropped"),
    ],
)
def test_corrupted_values_are_anomalies(
    bulk100: Tables, schema: object, column: str, value: object, expected: str
) -> None:
    frame = bulk100.patient_features.copy()
    if value is None:
        frame[column] = frame[column].astype(object)
    frame.loc[frame.index[5], column] = value
    assert anomalies_of(frame, schema) == {column: expected}


def test_feature_summaries_match_pandas(bulk100: Tables) -> None:
    frame = bulk100.patient_features
    summaries = {s.name: s for s in checks.feature_summaries(checks.compute_statistics(frame))}
    assert list(summaries) == [*FEATURE_NAMES, "sex"]
    bp = summaries["systolic_bp_last"]
    assert bp.count == len(frame) and bp.missing == 0
    assert bp.mean == pytest.approx(frame.systolic_bp_last.mean())
    assert bp.max == pytest.approx(frame.systolic_bp_last.max())
    assert summaries["ed_visits_365d"].zeros == int((frame.ed_visits_365d == 0).sum())
    assert dict(summaries["sex"].top_values) == frame.sex.value_counts().to_dict()


def test_empty_feature_table_is_a_user_error() -> None:
    frame = pd.DataFrame({name: pd.Series(dtype="float64") for name in [*FEATURE_NAMES, "sex"]})
    with pytest.raises(UserError, match="patient_features: no rows"):
        checks.compute_statistics(frame)


def test_prediction_event_checks() -> None:
    stamps = pd.to_datetime(["2021-01-05", "2021-04-09"], utc=True)
    both = pd.DataFrame({"patient_id": ["a", "b"], "event_timestamp": stamps, "acute_encounter_90d": [0, 1]})
    check = checks.check_prediction_events(both, "in")
    assert (check.events, check.positives, check.positive_rate, check.warnings) == (2, 1, 0.5, ())
    negatives = both.assign(acute_encounter_90d=[0, 0])
    assert "no positive" in checks.check_prediction_events(negatives, "in").warnings[0]
    with pytest.raises(UserError, match="in: no prediction events"):
        checks.check_prediction_events(both.iloc[:0], "in")


def test_anomaly_message_is_one_line() -> None:
    anomalies = [
        checks.Anomaly("bmi_last", "ERROR", "Out-of-range values", "Unexpectedly high value: 400>120"),
        checks.Anomaly("sex", "ERROR", "Unexpected string values", "unknown"),
    ]
    message = checks.anomaly_message(anomalies, "/out/report.html")
    assert message == (
        "2 data anomalies in patient_features: bmi_last: Out-of-range values, "
        "sex: Unexpected string values; see /out/report.html"
    )


def test_report_shows_anomalies_and_escapes_html(bulk100: Tables) -> None:
    statistics = checks.compute_statistics(bulk100.patient_features)
    inputs = ReportInputs(
        input_dir="<in>",
        tables=bulk100,
        summaries=checks.feature_summaries(statistics),
        anomalies=[checks.Anomaly("bmi_last", "ERROR", "Out-of-range values", "value <400> too high")],
        labels=checks.check_prediction_events(bulk100.prediction_events, "in"),
        schema_path="schema.pbtxt",
    )
    page = render(inputs)
    assert "FAILED: data anomalies" in page
    assert "value &lt;400&gt; too high" in page and "<400>" not in page
    assert "&lt;in&gt;" in page
    for name in FEATURE_NAMES:
        assert f"<td>{name}</td>" in page
    assert "<td>Observation</td>" in page
