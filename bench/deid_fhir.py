"""FHIR de-identification: clinflow's deidentify stage vs a reference Safe Harbor baseline, side by side.

Both tools read the same NDJSON export in one run: the baseline (``bench/baseline_safe_harbor.py``,
plain Python, one resource at a time) in this process, clinflow's stage as the real CLI
(``python -m components.deidentify.main``, Beam on its default local runner) in a subprocess with a
bench-only ``CLINFLOW_HMAC_KEY``. Printed per dataset: resources/s of each and the ratio (wall clock;
clinflow also net of its start-up overhead, measured on a one-patient export), then a **leak
analysis**: every identifying value of every input patient (names, maiden names, identifiers
incl. SSN without dashes, phones, e-mails, street lines, cities, birthplaces, ZIP codes, original
resource ids, birth/death dates and visit dates in ISO, US and long renderings) is searched in each
tool's output, with base64 text attachments decoded, and hits are counted per category and per
resource type.

Matching is token based (case-insensitive runs of letters/digits must occur consecutively), like
the stage's own residual-PHI scan. Unambiguous values (ids, identifiers, telecom, full names,
maiden names, street lines) are searched in every output line; ambiguous ones (single name words,
cities, ZIP codes, dates and date-times) only in the output resources of the same patient (linked
through each tool's patient pseudonym), so another patient's shifted date is not miscounted as a
leak. The stage's own rule for codes applies to both tools: a value equal to the whole ``code`` of a
coding of a standard terminology (``phi_scan.TERMINOLOGY_SYSTEMS``: an MRN that is also a SNOMED CT
concept id) is that code, not a leak; such matches are counted apart. For clinflow the top matched
values are printed, so a hit can be judged (e.g. a family name that is also a coded display such as
the race ``White``).

    .venvs/platform/bin/python bench/deid_fhir.py                       # 2000 generated patients (+ shared data)
    .venvs/platform/bin/python bench/deid_fhir.py --workers 2 --no-shared   # also 2 DirectRunner worker processes
    .venvs/platform/bin/python bench/deid_fhir.py --patients 500 --no-shared
    .venvs/platform/bin/python bench/deid_fhir.py --input ../shared/data/fhir-bulk-100 --patients 0
"""

import argparse
import base64
import binascii
import calendar
import contextlib
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import baseline_safe_harbor as baseline

from clinflow.synthetic import generate_fhir_bulk
from components.deidentify.keys import pseudonym
from components.deidentify.phi_scan import TERMINOLOGY_SYSTEMS

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_EXPORT = REPO_ROOT.parent / "shared" / "data" / "fhir-bulk-100"
BENCH_KEY = "bench-only-hmac-key-0123456789abcdef0123456789"
SALT = "bench-salt"
MAIDEN_URL = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
GLOBAL_CATEGORIES = (
    "ids",
    "identifiers",
    "telecom",
    "full_names",
    "maiden_names",
    "address_lines",
)
PATIENT_CATEGORIES = (
    "visit_datetimes",
    "name_words",
    "cities",
    "birthplaces",
    "postal_codes",
    "birth_dates",
    "death_dates",
    "visit_dates",
)
CATEGORIES = GLOBAL_CATEGORIES + PATIENT_CATEGORIES
TOKEN_SPLIT = re.compile(r"[\W_]+")


def tokens(text):
    return tuple(TOKEN_SPLIT.sub(" ", text.casefold()).split())


def open_text(path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def ndjson_files(directory):
    return sorted(p for p in Path(directory).iterdir() if p.name.endswith((".ndjson", ".ndjson.gz")))


def read_resources(directory):
    for path in ndjson_files(directory):
        with open_text(path) as handle:
            for line in handle:
                if line.strip():
                    yield line


# --------------------------------------------------------------------------- input PHI


def date_forms(iso):
    """ISO, US numeric and long renderings of a ``YYYY-MM-DD`` date."""
    try:
        year, month, day = int(iso[:4]), int(iso[5:7]), int(iso[8:10])
    except ValueError:
        return []
    name = calendar.month_name[month]
    return [iso[:10], f"{month:02d}/{day:02d}/{year}", f"{month}/{day}/{year}", f"{name} {day}, {year}"]


def subject_of(resource):
    for key in ("subject", "patient", "beneficiary"):
        value = resource.get(key)
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            reference = value["reference"]
            for prefix in ("Patient/", "urn:uuid:"):
                if reference.startswith(prefix):
                    return reference[len(prefix) :]
    return None


def patient_values(patient):
    values = defaultdict(set)
    values["ids"].add(patient["id"])
    for identifier in patient.get("identifier", []):
        value = identifier.get("value")
        if value and value != patient["id"]:
            values["identifiers"].add(value)
            if re.fullmatch(r"\d{3}-\d{2}-\d{4}", value):
                values["identifiers"].add(value.replace("-", ""))
    for name in patient.get("name", []):
        given, family = name.get("given", []), name.get("family")
        if family and given:
            values["full_names"].update({" ".join([*given, family]), f"{given[0]} {family}", f"{family}, {given[0]}"})
        for word in [*given, family or ""]:
            if len(word) >= 3:
                values["name_words"].add(word)
    for point in patient.get("telecom", []):
        if point.get("value"):
            values["telecom"].add(point["value"])
    for address in patient.get("address", []):
        values["address_lines"].update(address.get("line", []))
        if address.get("city"):
            values["cities"].add(address["city"])
        if address.get("postalCode") and len(address["postalCode"]) >= 5:
            values["postal_codes"].add(address["postalCode"])
    for extension in patient.get("extension", []):
        if extension.get("url") == MAIDEN_URL and extension.get("valueString"):
            values["maiden_names"].add(extension["valueString"])
        elif extension.get("url") == BIRTH_PLACE_URL:
            city = (extension.get("valueAddress") or {}).get("city")
            if city:
                values["birthplaces"].add(city)
    if patient.get("birthDate"):
        values["birth_dates"].update(date_forms(patient["birthDate"]))
    if patient.get("deceasedDateTime"):
        values["death_dates"].update(date_forms(patient["deceasedDateTime"]))
    return values


class Index:
    """Token sequences to find: single tokens by value, longer ones by their most distinctive token pair."""

    def __init__(self):
        self.singles = {}
        self.pairs = {}
        self.size = Counter()

    def add(self, category, value):
        parts = tokens(value)
        if not parts or (len(parts) == 1 and len(parts[0]) < 3):
            return
        if len(parts) == 1:
            bucket, entry = self.singles.setdefault(parts[0], []), (parts, category, 0)
        else:
            offset = max(range(len(parts) - 1), key=lambda i: len(parts[i]) + len(parts[i + 1]))
            bucket = self.pairs.setdefault((parts[offset], parts[offset + 1]), [])
            entry = (parts, category, offset)
        if entry not in bucket:
            bucket.append(entry)
            self.size[category] += 1

    def hits(self, line_tokens, matched=None):
        found = Counter()
        singles, pairs = self.singles, self.pairs
        for position, token in enumerate(line_tokens):
            for parts, category, _ in singles.get(token, ()):
                found[category] += 1
                if matched is not None:
                    matched.append((category, parts))
            if pairs:
                for parts, category, offset in pairs.get(
                    (token, line_tokens[position + 1] if position + 1 < len(line_tokens) else ""), ()
                ):
                    begin = position - offset
                    if begin >= 0 and line_tokens[begin : begin + len(parts)] == parts:
                        found[category] += 1
                        if matched is not None:
                            matched.append((category, parts))
        return found


def build_indexes(directory):
    """Returns the global index, per-patient indexes and the input resource count."""
    global_index = Index()
    per_patient = defaultdict(Index)
    patients = {}
    count = 0
    for line in read_resources(directory):
        count += 1
        resource = json.loads(line)
        if resource.get("resourceType") == "Patient":
            patients[resource["id"]] = resource
            continue
        owner = subject_of(resource)
        if owner is None:
            continue
        per_patient[owner].add("ids", resource.get("id", ""))
        global_index.add("ids", resource.get("id", ""))
        if resource.get("resourceType") == "Encounter":
            start = (resource.get("period") or {}).get("start", "")
            if len(start) > 10:
                per_patient[owner].add("visit_datetimes", start)
            for form in date_forms(start)[1:]:  # the ISO date itself may be another visit's shifted date
                per_patient[owner].add("visit_dates", form)
    for patient_id, patient in patients.items():
        for category, values in patient_values(patient).items():
            for value in values:
                if category in GLOBAL_CATEGORIES:
                    global_index.add(category, value)
                else:
                    per_patient[patient_id].add(category, value)
    return global_index, per_patient, list(patients), count


# --------------------------------------------------------------------------- output scan


def decoded_attachments(value, found):
    if isinstance(value, dict):
        data, content_type = value.get("data"), str(value.get("contentType", ""))
        if isinstance(data, str) and (
            content_type.startswith("text/") or "xml" in content_type or "json" in content_type
        ):
            with contextlib.suppress(binascii.Error, ValueError):
                found.append(base64.b64decode(data).decode("utf-8", "replace"))
        for item in value.values():
            decoded_attachments(item, found)
    elif isinstance(value, list):
        for item in value:
            decoded_attachments(item, found)
    return found


def blank_terminology_codes(value, codes):
    """A copy of ``value`` without the ``code`` of codings of a standard terminology (appended to ``codes``)."""
    if isinstance(value, dict):
        terminology = value.get("system") in TERMINOLOGY_SYSTEMS and isinstance(value.get("code"), str)
        if terminology:
            codes.append(value["code"])
        return {
            key: blank_terminology_codes(item, codes)
            for key, item in value.items()
            if not (terminology and key == "code")
        }
    if isinstance(value, list):
        return [blank_terminology_codes(item, codes) for item in value]
    return value


def coded_matches(codes, global_index):
    """Per category, the terminology codes that are, whole, an unambiguous input value (not leaks)."""
    found = Counter()
    for code in codes:
        parts = tokens(code)
        matched = []
        global_index.hits(parts, matched)
        found.update(category for category, value in matched if value == parts)
    return found


def scan_output(directory, global_index, per_patient, patient_by_pseudonym):
    """Hits per category, per (resource type, category) and per value; linked resources; coded matches."""
    totals, by_type, values, coded = Counter(), Counter(), Counter(), Counter()
    linked = resources = 0
    for line in read_resources(directory):
        resources += 1
        resource = json.loads(line)
        resource_type = resource.get("resourceType", "?")
        codes = []
        searched = json.dumps(blank_terminology_codes(resource, codes))
        coded.update(coded_matches(codes, global_index))
        text = " ".join([searched, *decoded_attachments(resource, [])])
        line_tokens = tokens(text)
        matched = []
        hits = global_index.hits(line_tokens, matched)
        pseudo = resource.get("id") if resource_type == "Patient" else subject_of(resource)
        original = patient_by_pseudonym.get(pseudo or "")
        if original is not None:
            linked += 1
            hits.update(per_patient[original].hits(line_tokens, matched))
        for category, count in hits.items():
            totals[category] += count
            by_type[resource_type, category] += count
        for category, parts in matched:
            values[resource_type, category, " ".join(parts)] += 1
    return totals, by_type, values, linked, resources, coded


# --------------------------------------------------------------------------- runs


def run_baseline(source, output):
    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in ndjson_files(source):
        name = path.name.removesuffix(".gz")
        with open_text(path) as handle, open(output / name, "w", encoding="utf-8") as target:
            for line in handle:
                if line.strip():
                    target.write(json.dumps(baseline.deidentify_resource(json.loads(line), SALT)) + "\n")
                    count += 1
    return time.perf_counter() - started, count


def run_stage(source, work, beam_args=()):
    """Runs the clinflow deidentify CLI; returns (seconds, returncode, stderr tail, output dir, phase timings)."""
    output = work / "out"
    args = [
        sys.executable,
        "-m",
        "components.deidentify.main",
        "--input-data", str(source),
        "--output-data", str(output),
        "--dead-letter", str(work / "dead"),
        "--report", str(work / "report.html"),
        "--report-json", str(work / "report-json"),
        "--metrics", str(work / "metrics.json"),
        *(["--", *beam_args] if beam_args else []),
    ]  # fmt: skip
    env = {**os.environ, "CLINFLOW_HMAC_KEY": BENCH_KEY, "PYTHONPATH": str(REPO_ROOT)}
    started = time.perf_counter()
    done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    report = work / "report-json" / "deid_report.json"
    timings = json.loads(report.read_text()).get("timings_seconds", {}) if report.exists() else {}
    return seconds, done.returncode, (done.stderr or "").strip().splitlines()[-6:], output, timings


def print_table(title, rows, header):
    print(f"\n{title}")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  "
            + "  ".join(
                str(cell).rjust(width) if i else str(cell).ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )


def stage_rows(name, count, seconds, overhead, base_rate, timings):
    """Throughput rows of one stage run: wall, net of start-up, and the de-identify pipeline alone."""
    net = max(seconds - overhead, 1e-9)
    rows = [
        [f"{name} (wall)", f"{seconds:.2f}", f"{count / seconds:,.0f}", f"{count / seconds / base_rate:.2f}x"],
        [f"{name} (net of start-up)", f"{net:.2f}", f"{count / net:,.0f}", f"{count / net / base_rate:.2f}x"],
    ]
    deid = timings.get("deidentify")
    if deid:
        rate = count / deid
        rows.append([f"{name}: de-identify pipeline only", f"{deid:.2f}", f"{rate:,.0f}", f"{rate / base_rate:.2f}x"])
    scan = timings.get("residual_scan")
    if scan:
        rows.append([f"{name}: residual-PHI scan only", f"{scan:.2f}", f"{count / scan:,.0f}", "-"])
    return rows


def bench_dataset(label, source, work, overhead, workers=0):
    print(f"\n=== {label}: {source}", flush=True)
    global_index, per_patient, patient_ids, count = build_indexes(source)
    print(f"input: {count:,} resources, {len(patient_ids):,} patients", flush=True)

    base_seconds, base_count = run_baseline(source, work / "baseline")
    stage_seconds, code, tail, stage_out, timings = run_stage(source, work / "clinflow")
    base_rate = base_count / base_seconds
    rows = [["baseline (Safe Harbor reference)", f"{base_seconds:.2f}", f"{base_rate:,.0f}", "1.00x"]]
    if code == 0:
        rows += stage_rows("clinflow", count, stage_seconds, overhead, base_rate, timings)
        if workers > 1:
            multi = ("--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing")
            seconds, multi_code, multi_tail, _, multi_timings = run_stage(source, work / "clinflow-workers", multi)
            if multi_code == 0:
                rows += stage_rows(f"clinflow {workers} workers", count, seconds, overhead, base_rate, multi_timings)
            else:
                print("clinflow stage with workers failed:\n  " + "\n  ".join(multi_tail))
    else:
        rows.append(["clinflow deidentify (FAILED)", f"{stage_seconds:.2f}", f"exit {code}", "-"])
        print("clinflow stage failed:\n  " + "\n  ".join(tail))
    print_table("Throughput", rows, ["tool", "seconds", "resources/s", "vs baseline"])

    key = BENCH_KEY.encode("utf-8")
    tools = {"baseline": (work / "baseline", {baseline.pseudonymize(SALT, p): p for p in patient_ids})}
    if code == 0:
        tools["clinflow"] = (stage_out, {pseudonym(key, "Patient", p): p for p in patient_ids})
    results = {}
    for tool, (directory, mapping) in tools.items():
        started = time.perf_counter()
        results[tool] = scan_output(directory, global_index, per_patient, mapping)
        _, _, _, linked, resources, _ = results[tool]
        seconds = time.perf_counter() - started
        print(f"scanned {tool}: {resources:,} resources ({linked:,} linked to a patient) in {seconds:.1f} s")
    sizes = global_index.size + sum((index.size for index in per_patient.values()), Counter())
    rows = [
        [category, f"{sizes[category]:,}", *[f"{results[t][0][category]:,}" for t in results]]
        for category in CATEGORIES
    ]
    rows.append(["TOTAL", f"{sum(sizes.values()):,}", *[f"{sum(results[t][0].values()):,}" for t in results]])
    print_table("Leak analysis: hits of input PHI values in the output", rows, ["category", "values", *results])
    coded = {tool: sum(result[5].values()) for tool, result in results.items()}
    print("values equal to a whole terminology code (the code itself, not counted above): " + str(coded))
    for tool, (_, by_type, values, _, _, _) in results.items():
        if by_type:
            print(f"\n{tool} leaks by resource type (top 15):")
            for (resource_type, category), hits in by_type.most_common(15):
                print(f"  {resource_type:<22} {category:<16} {hits:,}")
        if tool != "baseline" and values:  # synthetic test values: shows what a clinflow hit is
            print(f"\n{tool} matched values (top 10, as tokens):")
            for (resource_type, category, value), hits in values.most_common(10):
                print(f"  {resource_type:<22} {category:<16} {value!r:<40} {hits:,}")
    return results


def measure_overhead(work):
    tiny = work / "tiny"
    generate_fhir_bulk(tiny, patients=1, seed=1)
    seconds, code, tail, _, _ = run_stage(tiny, work / "tiny-clinflow")
    if code != 0:
        print("clinflow stage failed on the one-patient export:\n  " + "\n  ".join(tail))
        return 0.0
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=2000, help="generated patients (0: none)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--input", action="append", default=[], help="extra NDJSON export directory (repeatable)")
    parser.add_argument("--no-shared", action="store_true", help=f"skip {SHARED_EXPORT}")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a new temp dir, removed)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also run the stage with this many DirectRunner worker processes (multi_processing); 0: skip",
    )
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="deid-fhir-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        overhead = measure_overhead(work)
        print(f"clinflow stage start-up overhead (one-patient export, wall): {overhead:.2f} s")
        datasets = []
        if args.patients > 0:
            generated = work / f"generated-{args.patients}"
            started = time.perf_counter()
            generate_fhir_bulk(generated, patients=args.patients, seed=args.seed)
            print(f"generated {args.patients} patients in {time.perf_counter() - started:.1f} s")
            datasets.append((f"generated {args.patients} patients (seed {args.seed})", generated))
        if not args.no_shared and SHARED_EXPORT.is_dir():
            datasets.append(("shared Synthea export", SHARED_EXPORT))
        datasets += [(f"input {path}", Path(path)) for path in args.input]
        for number, (label, source) in enumerate(datasets):
            bench_dataset(label, source, work / f"run-{number}", overhead, args.workers)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
