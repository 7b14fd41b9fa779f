"""DICOM header de-identification: clinflow vs dicognito vs deid (pydicom/deid), one corpus, one run.

Corpus: synthetic DICOM (BurnedInAnnotation YES files excluded: clinflow quarantines them) + pydicom
test files + ../shared/data/dicom-deid-samples when present. OCR is OFF for clinflow here (header
path only; OCR cost is measured separately at the end on a few images). Each tool reads the bytes,
de-identifies and writes bytes. Residual PHI: clinflow's own identifying-value list of each input,
searched in each tool's output (elements incl. private/file meta, then raw bytes), counted by
category:attribute (no values printed).

Timing: wall files/s (time.perf_counter) and CPU ms/file (time.process_time, less sensitive to other load on
a shared machine) per tool, each tool over the whole corpus --repeat times, the tools one after another in
--rounds rounds; ratios are clinflow / peer per round, then the median. ``clinflow+check`` is what the
deidentify stage's DICOM lane does per file: de-identify, then the residual self-check
(``components.deidentify.lanes.DicomFileFn._residual``, i.e. ``components.deidentify.dicom.residual.
residual_hits``: identifying values of the input searched in the output, both files parsed by pydicom).
``clinflow+oldcheck`` is the same with the check as it was before 2026-12-06 (pydicom parses the input
again and the whole output, every output element decoded, per-value regexes); that original is kept
below as a frozen copy (``legacy_*``), also used by the differential test
``tests/dicom/test_residual_differential.py``. The run ends with the check's own cost (``+check`` minus
``clinflow``, CPU ms per file).

Usage: .venvs/platform/bin/python bench/deid_dicom.py [--synthetic 60] [--repeat 2] [--rounds 3] [--no-oldcheck]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinflow.synthetic.dicom import generate_dicom
from components.deidentify.dicom.deidentify import (
    _is_standard_uid,
    _keyword,
    _make_plan,
    _plans_for,
    deidentify_dicom,
    dicom_identifying_values,
    scan_dicom_output,
)
from components.deidentify.dicom.policy import DicomPolicy, parse_dicom_policy
from components.deidentify.dicom.residual import residual_hits
from components.deidentify.dicom.table import ProfileTable, load_table

# ============================================================================ frozen old residual check
# The lane's residual self-check as it was before 2026-12-06: pydicom parses the
# input again (``stop_before_pixels``) for its identifying values and the whole output for its element
# strings; each value is then searched with per-value regexes in the strings and, failing that, in the
# lowercased output bytes. Kept verbatim (renamed) for the side-by-side timing here and for the
# differential test ``tests/dicom/test_residual_differential.py``; only the policy-table helpers
# (``_plans_for``, ``_make_plan``, ``_keyword``, ``_is_standard_uid``) are imported from the product.

_LEGACY_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_LEGACY_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
_LEGACY_BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
_LEGACY_RAW_VRS = _LEGACY_STRING_VRS | _LEGACY_NUMERIC_VRS | (_LEGACY_BINARY_VRS - {"UN"}) | {"AT"}
_LEGACY_ASCII_DECODED_VRS = frozenset({"AS", "CS", "DA", "DT", "TM", "UI"})
_LEGACY_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_LEGACY_NUMERIC_TEXT = re.compile(r"^[\s0-9.+\-eE\\]*$")
_LEGACY_WORD_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")
_LEGACY_PATIENT_ID = 0x00100020
_LEGACY_PATIENT_NAME = 0x00100010
_LEGACY_DUMMY_TEXT = "ANONYMIZED"


def _legacy_raw_vr(elem: RawDataElement) -> str | None:
    vr = elem.VR
    if vr is None:
        entry = DicomDictionary.get(elem.tag)
        vr = entry[0] if entry is not None else None
    return vr if vr in _LEGACY_RAW_VRS else None


def _legacy_raw_strings(elem: RawDataElement) -> list[str]:
    text = (elem.value or b"").decode("latin-1").rstrip(" \x00")
    return text.split("\\") if text else []


def _legacy_values(elem: DataElement) -> list[Any]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _legacy_category(vr: str, keyword: str) -> str:
    if vr == "PN":
        return "name"
    if vr in ("DA", "DT"):
        return "date"
    if vr == "UI":
        return "uid"
    if "ID" in keyword or "Number" in keyword:
        return "identifier"
    return "text"


def _legacy_value_strings(elem: DataElement) -> list[str]:
    out = []
    for value in _legacy_values(elem):
        if isinstance(value, bytes):
            try:
                text = value.decode("utf-8").strip("\x00 ")
            except UnicodeDecodeError:
                continue
            if text.isprintable():
                out.append(text)
        elif not isinstance(value, Dataset):
            out.append(str(value).strip())
    return out


def _legacy_fast_strings(raw: RawDataElement) -> list[str] | None:
    vr = _legacy_raw_vr(raw)
    if vr not in _LEGACY_ASCII_DECODED_VRS or pydicom.config.datetime_conversion:
        return None
    return [value.strip() for value in _legacy_raw_strings(raw)]


def _legacy_worth_scanning(value: str, category: str) -> bool:
    if category == "uid":
        return bool(value) and not _is_standard_uid(value)
    return len(value) >= 4 and value.strip("0 .-^") != "" and value.upper() != _LEGACY_DUMMY_TEXT


def _legacy_contains_whole_word(text: str, needle: str) -> bool:
    if not needle:
        return False
    start = text.find(needle)
    while start != -1:
        end = start + len(needle)
        if (start == 0 or text[start - 1] not in _LEGACY_WORD_CHARS) and (
            end == len(text) or text[end] not in _LEGACY_WORD_CHARS
        ):
            return True
        start = text.find(needle, start + 1)
    return False


def legacy_dicom_identifying_values(
    ds: Dataset, policy: DicomPolicy | None = None, table: ProfileTable | None = None
) -> list[tuple[str, str]]:
    """The old ``dicom_identifying_values`` (frozen)."""
    policy = policy or DicomPolicy()
    table = table or load_table()
    found: dict[tuple[str, str], None] = {}
    kept_values: set[str] = set()

    def add(category: str, value: str) -> None:
        if _legacy_worth_scanning(value, category):
            found[(category, value)] = None
        if category == "name":
            for part in re.split(r"[\^=]", value):
                if len(part.strip()) >= 4 and part.strip().upper() != _LEGACY_DUMMY_TEXT:
                    found[("name_part", part.strip())] = None

    plans = _plans_for(policy, table)

    def walk(dataset: Dataset) -> None:
        elements = dataset._dict
        for tag in sorted(elements, key=int):
            raw = elements[tag]
            tag_int = int(tag)
            private = tag_int >> 16 & 1
            if private and 0x0010 <= tag_int & 0xFFFF <= 0x00FF:
                continue  # private creator
            strings: list[str] | None = None
            if isinstance(raw, RawDataElement):
                vr = _legacy_raw_vr(raw)
                if vr is not None and not private and (vr in ("TM", "AS") or vr not in _LEGACY_STRING_VRS):
                    continue  # not a string: no need to decode it
                strings = _legacy_fast_strings(raw)
            if strings is None:
                elem = dataset[tag]
                if elem.VR == "SQ":
                    for item in elem.value or []:
                        walk(item)
                    continue
                vr, keyword, strings = elem.VR, elem.keyword, _legacy_value_strings(elem)
            else:
                keyword = _keyword(tag_int)
            if private:
                for value in strings:
                    if not _LEGACY_NUMERIC_TEXT.match(value):
                        add("private", value)
                continue
            if vr in ("TM", "AS") or vr not in _LEGACY_STRING_VRS:
                continue
            plan = plans.get((tag_int, vr)) or plans.setdefault(
                (tag_int, vr), _make_plan(table, policy.options, tag_int, vr)
            )
            action = "D" if tag_int in (_LEGACY_PATIENT_ID, _LEGACY_PATIENT_NAME) else plan.action
            if action == "K" or (action == "C" and vr not in ("DA", "DT", "UI")):
                kept_values.update(value.casefold() for value in strings)
                continue
            category = _legacy_category(vr, keyword)
            for value in strings:
                add(category, value)

    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for elem in meta:
            if elem.tag == 0x00020012:
                continue  # Implementation Class UID names the writing software, not the patient
            if elem.VR == "UI":
                add("uid", str(elem.value))
            elif elem.VR == "AE":
                add("text", str(elem.value).strip())
    walk(ds)
    kept_text = "\n".join(kept_values)
    kept_folded = kept_text.casefold()
    return [
        (category, value) for category, value in found if not _legacy_contains_whole_word(kept_folded, value.casefold())
    ]


def _legacy_dataset_strings(dataset: Dataset) -> Iterable[tuple[str, str]]:
    elements = dataset._dict
    for tag in sorted(elements, key=int):
        if int(tag) in _LEGACY_PIXEL_DATA_TAGS:
            continue
        raw = elements[tag]
        strings = _legacy_fast_strings(raw) if isinstance(raw, RawDataElement) else None
        if strings is not None:
            where = _keyword(int(tag)) or f"private{raw.tag}"
            for value in strings:
                yield where, value
            continue
        elem = dataset[tag]
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _legacy_dataset_strings(item)
            continue
        for value in _legacy_value_strings(elem):
            yield elem.keyword or f"private{elem.tag}", value


def legacy_output_strings(ds: Dataset) -> Iterable[tuple[str, str]]:
    """The old ``_output_strings`` (frozen): ``(where, value)`` of every element of a parsed output."""
    meta = getattr(ds, "file_meta", None)
    elements = list(meta) if meta is not None else []
    for elem in elements:
        for value in _legacy_value_strings(elem):
            yield elem.keyword or str(elem.tag), value
    yield from _legacy_dataset_strings(ds)


def legacy_scan_dicom_output(data: bytes, values: Iterable[tuple[str, str]]) -> Counter[str]:
    """The old ``scan_dicom_output`` (frozen)."""
    hits: Counter[str] = Counter()
    pairs = list(values)
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
        strings = [(where, text.casefold()) for where, text in legacy_output_strings(ds)]
    except Exception:
        strings = []
    all_text = "\n".join(text for _, text in strings)
    data_lower = data.lower()
    for category, value in pairs:
        folded = value.casefold()
        edge = "0-9a-z." if category == "uid" else "0-9a-z"
        if folded in all_text:
            needle = re.compile(f"(?<![{edge}])" + re.escape(folded) + f"(?![{edge}])")
            matched = False
            for where, text in strings:
                if folded in text and needle.search(text):
                    hits[f"{category}:{where}"] += 1
                    matched = True
            if matched:
                continue
        encodings = {value.encode("utf-8")}
        with contextlib.suppress(UnicodeEncodeError):
            encodings.add(value.encode("latin-1"))
        encodings = {encoded for encoded in encodings if encoded.lower() in data_lower}
        if not encodings:
            continue
        raw_edge = edge.replace("a-z", "A-Za-z").encode()
        patterns = [
            re.compile(b"(?<![" + raw_edge + b"])" + re.escape(enc) + b"(?![" + raw_edge + b"])", re.I)
            for enc in encodings
        ]
        if any(pattern.search(data) for pattern in patterns):
            hits[f"{category}:raw_bytes"] += 1
    return hits


def legacy_input_values(original: bytes, policy: DicomPolicy) -> list[tuple[str, str]]:
    """The old lane's identifying values of an input file (frozen: pydicom reads it again)."""
    dataset = pydicom.dcmread(BytesIO(original), stop_before_pixels=True, force=True)
    return legacy_dicom_identifying_values(dataset, policy)


def legacy_residual(original: bytes, output: bytes, policy: DicomPolicy) -> Counter[str]:
    """The old lane's residual self-check (frozen ``DicomFileFn._residual`` before 2026-12-06), as hits."""
    return legacy_scan_dicom_output(output, legacy_input_values(original, policy))


# ============================================================================ benchmark

KEY = b"bench-only-key-0123456789abcdef0123456789abcdef"
PYDICOM = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "examples_overlay.dcm",
    "waveform_ecg.dcm",
    "priv_SQ.dcm",
    "JPEG2000.dcm",
    "SC_rgb.dcm",
    "US1_J2KR.dcm",
]
CHARSETS = ["chrJapMulti.dcm", "chrKoreanMulti.dcm", "chrArab.dcm", "chrRuss.dcm", "chrGerm.dcm", "chrFren.dcm"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom-deid-samples"


def corpus(tmp: Path, synthetic: int) -> list[Path]:
    patients = [
        (f"{10_000_000 + i}", f"FAMILY{i}^GIVEN{i}", f"19{50 + i % 40}-0{1 + i % 9}-1{i % 9}")
        for i in range(synthetic // 2)
    ]
    files = generate_dicom(
        tmp / "syn", patients, seed=11, studies_per_patient=1, instances_per_study=2, burned_in_fraction=0.0
    )
    files += [Path(get_testdata_file(n)) for n in PYDICOM if get_testdata_file(n)]
    files += [Path(get_charset_files(n)[0]) for n in CHARSETS if get_charset_files(n)]
    if SHARED.is_dir():
        files += [p for p in sorted(SHARED.rglob("*.dcm"))]
    keep = []
    for path in files:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        if str(ds.get("BurnedInAnnotation", "")).upper() != "YES":
            keep.append(path)
    return keep


HEADER_POLICY = parse_dicom_policy({"ocr": False})


def run_clinflow(data: bytes) -> bytes | None:
    return deidentify_dicom(data, KEY, HEADER_POLICY, {}).output


def run_clinflow_checked(data: bytes) -> bytes | None:
    """De-identify plus the lane's residual self-check (components/deidentify/lanes.py DicomFileFn._residual)."""
    output = deidentify_dicom(data, KEY, HEADER_POLICY, {}).output
    if output is None:
        return None
    if sum(residual_hits(data, output, HEADER_POLICY).values()):
        return None  # the lane sends it to the dead letter
    return output


def run_clinflow_legacy_checked(data: bytes) -> bytes | None:
    """De-identify plus the lane's residual self-check as it was before 2026-12-06 (frozen copy above)."""
    output = deidentify_dicom(data, KEY, HEADER_POLICY, {}).output
    if output is None:
        return None
    if sum(legacy_residual(data, output, HEADER_POLICY).values()):
        return None
    return output


def make_dicognito():
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()

    def run(data: bytes) -> bytes | None:
        ds = pydicom.dcmread(BytesIO(data), force=True)
        anonymizer.anonymize(ds)
        buffer = BytesIO()
        ds.save_as(buffer)
        return buffer.getvalue()

    return run


def make_deid(tmp: Path):
    from deid.dicom import get_identifiers, replace_identifiers

    def run(data: bytes) -> bytes | None:
        path = tmp / "deid_in.dcm"
        path.write_bytes(data)
        items = get_identifiers([str(path)])
        cleaned = replace_identifiers(dicom_files=[str(path)], ids=items, save=False)
        buffer = BytesIO()
        cleaned[0].save_as(buffer)
        return buffer.getvalue()

    return run


def print_check_cost(cpu_ms: dict[str, list[float]]) -> None:
    """The residual check's own CPU ms per file: ``+check`` minus ``clinflow`` per round, then the median."""
    for name in ("clinflow+check", "clinflow+oldcheck"):
        if name in cpu_ms:
            extra = [a - b for a, b in zip(cpu_ms[name], cpu_ms["clinflow"], strict=True)]
            print(f"{name[len('clinflow+') :]} alone: {statistics.median(extra):.2f} CPU ms/file (median of rounds)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-oldcheck", action="store_true", help="skip the frozen original check")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        files = corpus(tmp, args.synthetic)
        inputs = [(path, path.read_bytes()) for path in files]
        values = {path: dicom_identifying_values(pydicom.dcmread(BytesIO(data), force=True)) for path, data in inputs}
        tools = {
            "clinflow": run_clinflow,
            "clinflow+check": run_clinflow_checked,
            **({} if args.no_oldcheck else {"clinflow+oldcheck": run_clinflow_legacy_checked}),
            "dicognito": make_dicognito(),
            "deid": make_deid(tmp),
        }
        rates: dict[str, list[float]] = {name: [] for name in tools}
        cpu_ms: dict[str, list[float]] = {name: [] for name in tools}
        residual: dict[str, Counter[str]] = {}
        failures: Counter[str] = Counter()
        count = len(inputs) * args.repeat
        for round_no in range(1, args.rounds + 1):
            for name, tool in tools.items():
                outputs: dict[Path, bytes | None] = {}
                start, cpu_start = time.perf_counter(), time.process_time()
                for _ in range(args.repeat):
                    for path, data in inputs:
                        try:
                            outputs[path] = tool(data)
                        except Exception:
                            outputs[path] = None
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                rates[name].append(count / elapsed)
                cpu_ms[name].append(cpu / count * 1000)
                print(
                    f"round {round_no} {name:17s} {rates[name][-1]:8.1f} files/s {cpu_ms[name][-1]:7.2f} CPU ms/file"
                    f"  ({len(inputs)} files x {args.repeat}, {elapsed:.2f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                if round_no > 1:
                    continue
                hits: Counter[str] = Counter()
                for path, output in outputs.items():
                    if output is None:
                        failures[name] += 1
                        continue
                    hits.update(scan_dicom_output(output, values[path]))
                residual[name] = hits
        print(f"\ncorpus: {len(inputs)} files (BurnedInAnnotation=YES excluded); clinflow OCR off")
        print(f"{args.rounds} rounds; x = clinflow speed / tool speed: wall (files/s) and CPU (CPU ms/file)")
        print(
            f"{'tool':17s} {'files/s':>8s} {'CPU ms':>7s} {'wall x per round':>18s} {'CPU x per round':>18s}"
            f" {'wall x':>7s} {'CPU x':>6s} {'+check wall x':>13s} {'+check CPU x':>12s}"
            f" {'failed':>6s} {'residual':>8s}"
        )

        def ratios(mine: str, name: str) -> tuple[list[float], list[float]]:
            wall = [a / b for a, b in zip(rates[mine], rates[name], strict=True)]
            cpu_x = [b / a for a, b in zip(cpu_ms[mine], cpu_ms[name], strict=True)]
            return wall, cpu_x

        for name in tools:
            wall, cpu_x = ratios("clinflow", name)
            checked_wall, checked_cpu = ratios("clinflow+check", name)
            print(
                f"{name:17s} {statistics.median(rates[name]):8.1f} {statistics.median(cpu_ms[name]):7.2f}"
                f" {' '.join(f'{x:5.2f}' for x in wall):>18s} {' '.join(f'{x:5.2f}' for x in cpu_x):>18s}"
                f" {statistics.median(wall):7.2f} {statistics.median(cpu_x):6.2f}"
                f" {statistics.median(checked_wall):13.2f} {statistics.median(checked_cpu):12.2f}"
                f" {failures[name]:6d} {sum(residual[name].values()):8d}"
            )
        print_check_cost(cpu_ms)
        for name in tools:
            print(f"\nresidual identifying values in {name} output (category:attribute -> count):")
            for where, hits_count in sorted(residual[name].items(), key=lambda item: (-item[1], item[0])):
                print(f"  {where:55s} {hits_count}")
            if not residual[name]:
                print("  none")
        ocr_files = [p for p in files if p.name in ("RGB_IMAGE.dcm", "ctbrain1.dcm", "CT_small.dcm")]
        if ocr_files:
            policy = parse_dicom_policy({})
            start = time.perf_counter()
            outcomes = Counter(deidentify_dicom(p.read_bytes(), KEY, policy, {}).outcome for p in ocr_files)
            per_file = (time.perf_counter() - start) / len(ocr_files)
            print(f"\nclinflow with OCR on {len(ocr_files)} images: {per_file:.2f} s/file, outcomes {dict(outcomes)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
