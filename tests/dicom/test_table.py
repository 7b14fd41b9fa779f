from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from components.deidentify.dicom.generate_table import build_table
from components.deidentify.dicom.profile import resolve_action
from components.deidentify.dicom.table import TABLE_PATH, load_table


def test_table_row_count_and_spot_checks():
    table = load_table()
    assert table.row_count == 621
    assert table.revision == "2024b"
    assert table.lookup(0x00100010).basic == "Z"
    assert table.lookup(0x00100020).basic == "Z/D"
    assert table.lookup(0x00100030).basic == "Z"
    study_uid = table.lookup(0x0020000D)
    assert study_uid.basic == "U" and study_uid.options["retain_uids"] == "K"
    assert resolve_action(study_uid, {"retain_uids"}, "StudyInstanceUID") == "K"
    description = table.lookup(0x00081030)
    assert description.basic == "X" and resolve_action(description, {"clean_descriptors"}, "StudyDescription") == "C"


def test_pattern_rows():
    table = load_table()
    assert table.lookup(0x50020010).id == "50xxxxxx"
    assert table.lookup(0x60023000).id == "60xx3000"
    assert table.lookup(0x601E4000).id == "60xx4000"
    assert table.lookup(0x00090010).id.startswith("ggggeeee")
    assert table.lookup(0x00280010) is None  # Rows: not listed


def test_generator_reproduces_shipped_table(shared_data: Path, tmp_path: Path):
    source = shared_data / "dicom-deid-profile" / "confidentiality_profile_attributes.json"
    assert build_table(source) == TABLE_PATH.read_bytes()
    out = tmp_path / "table.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "components.deidentify.dicom.generate_table",
            "--source",
            str(source),
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == TABLE_PATH.read_bytes()
