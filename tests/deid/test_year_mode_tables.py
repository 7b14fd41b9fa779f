"""Year-mode de-identified output still builds the analytic tables (dates are years only)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import yaml

from clinflow.synthetic import generate_fhir_bulk
from clinflow.tables import build_tables
from components.deidentify.free_text import Redactor
from components.deidentify.policy import load_policy, rules_of
from components.deidentify.transform import deidentify_patient, deidentify_resource

KEY = b"year-mode-test-key-0123456789abcdef0123456789"
SHIPPED = Path(__file__).resolve().parents[2] / "components" / "deidentify" / "policies" / "safe-harbor-v1.yaml"


def test_year_mode_output_builds_tables(tmp_path: Path) -> None:
    document = yaml.safe_load(SHIPPED.read_text())
    document["fhir"]["dates"]["mode"] = "year"
    (tmp_path / "year.yaml").write_text(yaml.safe_dump(document))
    policy = load_policy(tmp_path / "year.yaml")
    rules = rules_of(policy)
    generate_fhir_bulk(tmp_path / "in", patients=12, seed=4)
    output = tmp_path / "out"
    output.mkdir()
    redactor = Redactor(None)
    for path in sorted((tmp_path / "in").glob("*.ndjson")):
        lines = []
        for raw in path.read_bytes().splitlines():
            resource = orjson.loads(raw)
            if resource["resourceType"] == "Patient":
                out = deidentify_patient(resource, KEY, Counter(), "2025-06-30", rules, policy, redactor)
            else:
                out = deidentify_resource(resource, KEY, Counter(), rules, policy, redactor=redactor).resource
            lines.append(orjson.dumps(out))
        (output / path.name).write_bytes(b"\n".join(lines) + b"\n")
    patients = [orjson.loads(line) for line in (output / "Patient.000.ndjson").read_bytes().splitlines()]
    assert all(len(patient["birthDate"]) == 4 for patient in patients)
    tables = build_tables(output)
    assert len(tables.patient_features) > 0
    assert tables.patient_features["patient_id"].nunique() > 1
