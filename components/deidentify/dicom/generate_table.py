"""Generates the shipped Table E.1-1 JSON from the upstream machine-readable parse of the standard.

Usage::

    python -m components.deidentify.dicom.generate_table \
        --source ../shared/data/dicom-deid-profile/confidentiality_profile_attributes.json \
        --output components/deidentify/dicom/ps3_15_table_e1_1.json

The output is deterministic (rows sorted by id, sorted keys, fixed indentation), so re-running the
generator on the same source reproduces the shipped file byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinflow.errors import UserError, run_cli

GENERATOR_VERSION = "1"
STANDARD_REVISION = "2024b"
SOURCE_REPOSITORY = "innolitics/dicom-standard"
SOURCE_PATH = "standard/confidentiality_profile_attributes.json"
SOURCE_COMMIT = "8670abdd9ad16c61af5146ef857899699bdd9c5f"
EXPECTED_ROWS = 621

# Upstream option key -> our option name (the names the policy YAML uses).
OPTION_KEYS: dict[str, str] = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_long_full_dates",
    "rtnLongModifDatesOpt": "retain_long_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
ACTIONS = frozenset({"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})
PATTERN_IDS = frozenset({"50xxxxxx", "60xx3000", "60xx4000", "ggggeeee-where-gggg-is-odd"})
_TAG_ID = re.compile(r"^[0-9a-f]{8}$")


def _row(record: dict[str, Any], source: Path) -> dict[str, Any]:
    row_id = str(record["id"])
    if not (_TAG_ID.match(row_id) or row_id in PATTERN_IDS):
        raise UserError(f"{source}: unexpected row id {row_id!r}; regenerate from the upstream 2024b file")
    basic = str(record["basicProfile"]).strip()
    if basic not in ACTIONS:
        raise UserError(f"{source}: row {row_id} has unknown action {basic!r}")
    options = {}
    for upstream, name in OPTION_KEYS.items():
        if upstream in record:
            value = str(record[upstream]).strip()
            if value not in ACTIONS:
                raise UserError(f"{source}: row {row_id} option {upstream} has unknown action {value!r}")
            options[name] = value
    return {
        "id": row_id,
        "tag": str(record["tag"]),
        "name": " ".join(str(record["name"]).split()),
        "in_std_comp_iod": str(record["stdCompIOD"]).strip() == "Y",
        "basic": basic,
        "options": options,
    }


def build_table(source: Path) -> bytes:
    """Builds the shipped table from the upstream JSON.

    Args:
        source: ``confidentiality_profile_attributes.json`` (innolitics/dicom-standard, rev 2024b).

    Returns:
        The UTF-8 JSON document, ending in a newline.

    Raises:
        UserError: The source is missing, unreadable or not the expected table.
    """
    try:
        raw = source.read_bytes()
    except OSError as error:
        raise UserError(f"{source}: cannot read the Table E.1-1 source ({error.strerror}); pass --source") from None
    try:
        records = json.loads(raw)
    except json.JSONDecodeError:
        raise UserError(
            f"{source}: not valid JSON; pass the upstream confidentiality_profile_attributes.json"
        ) from None
    if not isinstance(records, list):
        raise UserError(f"{source}: expected a JSON list of rows")
    rows = sorted((_row(record, source) for record in records), key=lambda row: row["id"])
    if len({row["id"] for row in rows}) != len(rows):
        raise UserError(f"{source}: duplicate row ids")
    document = {
        "standard": "DICOM PS3.15",
        "table": "E.1-1 Application Level Confidentiality Profile Attributes",
        "revision": STANDARD_REVISION,
        "source": {
            "repository": SOURCE_REPOSITORY,
            "path": SOURCE_PATH,
            "commit": SOURCE_COMMIT,
            "sha256": hashlib.sha256(raw).hexdigest(),
        },
        "generator": {"module": "components.deidentify.dicom.generate_table", "version": GENERATOR_VERSION},
        "row_count": len(rows),
        "options": sorted(OPTION_KEYS.values()),
        "rows": rows,
    }
    return (json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: writes the generated table.

    Args:
        argv: Arguments without the program name.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--source", type=Path, required=True, help="upstream confidentiality_profile_attributes.json")
    parser.add_argument("--output", type=Path, required=True, help="where to write the generated table JSON")
    args = parser.parse_args(argv)
    data = build_table(args.source)
    args.output.write_bytes(data)
    rows = json.loads(data)["row_count"]
    print(f"wrote {args.output} ({rows} rows, revision {STANDARD_REVISION})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
