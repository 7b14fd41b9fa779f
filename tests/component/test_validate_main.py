"""Component contract of ``python -m components.validate.main`` on real small inputs (tfx env)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from clinflow.errors import UserError
from clinflow.prediction_task import FEATURE_NAMES
from components.validate.main import main

pytestmark = pytest.mark.tfx_env

tfdv = pytest.importorskip("tensorflow_data_validation")

REPO_ROOT = Path(__file__).resolve().parents[2]


def outputs(base: Path) -> dict[str, Path]:
    return {
        "tables": base / "tables",
        "statistics": base / "statistics",
        "report": base / "report.html",
        "metrics": base / "metrics.json",
        "executor-output": base / "executor_output.json",
    }


def argv(input_dir: Path, out: dict[str, Path]) -> list[str]:
    flags = ["--input-data", str(input_dir)]
    for name, path in out.items():
        flags += [f"--{name}", str(path)]
    return flags


def test_validate_on_fhir_bulk_100(shared_data: Path, tmp_path: Path) -> None:
    out = outputs(tmp_path)
    assert main(argv(shared_data / "fhir-bulk-100", out)) == 0

    features = pd.read_parquet(out["tables"] / "patient_features.parquet")
    events = pd.read_parquet(out["tables"] / "prediction_events.parquet")
    assert list(features.columns) == ["patient_id", "event_timestamp", *FEATURE_NAMES, "sex"]
    assert str(features.event_timestamp.dt.tz) == "UTC"
    assert features[list(FEATURE_NAMES)].notna().all().all()
    assert set(events.acute_encounter_90d) == {0, 1}

    stats = tfdv.load_stats_binary(str(out["statistics"] / "stats.pb"))
    assert stats.datasets[0].num_examples == len(features)
    assert {f.path.step[0] for f in stats.datasets[0].features} == {*FEATURE_NAMES, "sex"}
    schema_used = (out["statistics"] / "schema.pbtxt").read_text()
    assert schema_used == (REPO_ROOT / "components/validate/schema/patient_features.pbtxt").read_text()

    metrics = json.loads(out["metrics"].read_text())
    assert metrics["feature_rows"] == len(features)
    assert metrics["patients"] == 100
    assert metrics["prediction_events"] == len(events)
    assert metrics["positives"] == events.acute_encounter_90d.sum()
    assert metrics["positive_rate"] == pytest.approx(events.acute_encounter_90d.mean())
    assert metrics["anomalies"] == 0
    executor = json.loads(out["executor-output"].read_text())
    assert executor["artifacts"]["metrics"]["artifacts"][0]["metadata"] == metrics

    report = out["report"].read_text()
    assert "PASSED: no data anomalies" in report
    assert "<td>systolic_bp_last</td>" in report


def _observation(pid: str, when: str, code: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value},
    }


@pytest.fixture()
def corrupted_export(shared_data: Path, tmp_path: Path) -> Path:
    """fhir-bulk-100 plus a unit-error systolic pressure (mmHg x 10) and a BMI of 400."""
    directory = tmp_path / "corrupted"
    shutil.copytree(shared_data / "fhir-bulk-100", directory)
    with gzip.open(directory / "Patient.000.ndjson.gz", "rt", encoding="utf-8") as handle:
        alive = [r for r in map(json.loads, handle) if "deceasedDateTime" not in r]
    pid = alive[0]["id"]
    extra = [
        _observation(pid, "2020-05-31T23:00:00+00:00", "8480-6", 1250.0),
        _observation(pid, "2020-05-31T23:00:00+00:00", "39156-5", 400.0),
    ]
    (directory / "Observation.001.ndjson").write_text("".join(json.dumps(r) + "\n" for r in extra))
    return directory


def test_anomalies_fail_after_writing_every_output(corrupted_export: Path, tmp_path: Path) -> None:
    out = outputs(tmp_path / "out")
    with pytest.raises(UserError) as raised:
        main(argv(corrupted_export, out))
    message = str(raised.value)
    assert message == (
        "2 data anomalies in patient_features: bmi_last: Out-of-range values, "
        f"systolic_bp_last: Out-of-range values; see {out['report']}"
    )
    assert "\n" not in message
    assert json.loads(out["metrics"].read_text())["anomalies"] == 2
    assert (out["statistics"] / "stats.pb").is_file()
    assert "systolic_bp_last" in (out["statistics"] / "anomalies.pbtxt").read_text()
    report = out["report"].read_text()
    assert "FAILED: data anomalies" in report and "Unexpectedly high value" in report
    assert (out["tables"] / "patient_features.parquet").is_file()


def test_cli_prints_one_error_line_and_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "Condition.ndjson").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "components.validate.main", *argv(empty, outputs(tmp_path / "out"))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {empty}: no Patient or Encounter resources (found: nothing); "
        "the analytic tables need Patient and Encounter resources"
    ]


def test_no_prediction_events_is_a_user_error(tmp_path: Path) -> None:
    export = tmp_path / "young"
    export.mkdir()
    patient = {"resourceType": "Patient", "id": "b1", "gender": "female", "birthDate": "2023-10-20"}
    encounter = {
        "resourceType": "Encounter",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/b1"},
        "period": {"start": "2023-12-15T09:00:00Z"},
    }
    (export / "Patient.ndjson").write_text(json.dumps(patient) + "\n")
    (export / "Encounter.ndjson").write_text(json.dumps(encounter) + "\n")
    out = outputs(tmp_path / "out")
    with pytest.raises(UserError, match="no prediction events"):
        main(argv(export, out))
    assert json.loads(out["metrics"].read_text())["prediction_events"] == 0
    assert "no prediction events" in out["report"].read_text()
