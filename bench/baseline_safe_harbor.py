"""Baseline: a widely published reference Safe Harbor de-identifier for FHIR NDJSON, re-implemented.

Re-implemented exactly from its description (the bench peer for ``bench/deid_fhir.py``):

* Patient: ``id`` -> ``sha256(salt + ":" + id)`` hex truncated to 16 characters; ``name``,
  ``telecom``, ``identifier``, ``photo`` removed; in each ``address`` the ``line``, ``city`` and
  ``district`` removed and ``postalCode`` cut to its first 3 digits (``000`` for the 17 restricted
  ZIP3 prefixes); ``birthDate`` cut to the year (``1900`` when older than 89).
* Every other resource: deep copy through a JSON round trip; ``id`` and every ``reference`` of the
  form ``Type/id`` pseudonymised the same way; ``text`` removed; date strings generalised to month
  precision.

Plain Python, json module, one resource at a time, one file after another.

    .venvs/platform/bin/python bench/baseline_safe_harbor.py INPUT_DIR OUTPUT_DIR [--salt S]
"""

import argparse
import datetime
import hashlib
import json
import re
import sys
import time
from pathlib import Path

RESTRICTED_ZIP3 = {
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878", "879", "884", "890",
    "893",
}  # fmt: skip
DATE_RE = re.compile(r"^(\d{4}-\d{2})-\d{2}(T.*)?$")
REFERENCE_RE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-\.]{1,64})$")


def pseudonymize(salt, value):
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()[:16]


def deidentify_patient(patient, salt, today=None):
    today = today or datetime.date.today()
    out = json.loads(json.dumps(patient))
    if "id" in out:
        out["id"] = pseudonymize(salt, out["id"])
    for field in ("name", "telecom", "identifier", "photo"):
        out.pop(field, None)
    for address in out.get("address", []):
        for field in ("line", "city", "district"):
            address.pop(field, None)
        postal = address.get("postalCode")
        if postal:
            zip3 = postal[:3]
            address["postalCode"] = "000" if zip3 in RESTRICTED_ZIP3 else zip3
    birth = out.get("birthDate")
    if birth:
        year = int(birth[:4])
        out["birthDate"] = "1900" if today.year - year > 89 else str(year)
    return out


def _generalize(value, salt, key=None):
    if isinstance(value, dict):
        return {k: _generalize(v, salt, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_generalize(v, salt, key) for v in value]
    if isinstance(value, str):
        if key == "reference":
            match = REFERENCE_RE.match(value)
            if match:
                return f"{match.group(1)}/{pseudonymize(salt, match.group(2))}"
            return value
        match = DATE_RE.match(value)
        if match:
            return match.group(1)
    return value


def deidentify_resource(resource, salt):
    if resource.get("resourceType") == "Patient":
        return deidentify_patient(resource, salt)
    out = json.loads(json.dumps(resource))
    out.pop("text", None)
    out = _generalize(out, salt)
    if "id" in out:
        out["id"] = pseudonymize(salt, resource["id"])
    return out


def deidentify_directory(input_dir, output_dir, salt):
    """De-identifies every ``*.ndjson`` file; returns the number of resources written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(Path(input_dir).glob("*.ndjson")):
        with open(path, encoding="utf-8") as source, open(output_dir / path.name, "w", encoding="utf-8") as target:
            for line in source:
                if not line.strip():
                    continue
                target.write(json.dumps(deidentify_resource(json.loads(line), salt)) + "\n")
                count += 1
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--salt", default="bench-salt")
    args = parser.parse_args()
    started = time.perf_counter()
    count = deidentify_directory(args.input_dir, args.output_dir, args.salt)
    seconds = time.perf_counter() - started
    print(f"{count} resources in {seconds:.2f} s ({count / seconds:,.0f}/s)", file=sys.stderr)


if __name__ == "__main__":
    main()
