"""DICOM header de-identification: clinflow vs dicognito vs deid (pydicom/deid), one corpus, one run.

Corpus: synthetic DICOM (BurnedInAnnotation YES files excluded: clinflow quarantines them) + pydicom
test files + ../shared/data/dicom-deid-samples when present. OCR is OFF for clinflow here (header
path only; OCR cost is measured separately at the end on a few images). Each tool reads the bytes,
de-identifies and writes bytes. Residual PHI: clinflow's own identifying-value list of each input,
searched in each tool's output (elements incl. private/file meta, then raw bytes), counted by
category:attribute (no values printed).

Usage: .venvs/platform/bin/python bench/deid_dicom.py [--synthetic 60]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections import Counter
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.data import get_charset_files, get_testdata_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinflow.synthetic.dicom import generate_dicom
from components.deidentify.dicom.deidentify import (
    deidentify_dicom,
    dicom_identifying_values,
    scan_dicom_output,
)
from components.deidentify.dicom.policy import parse_dicom_policy

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


def run_clinflow(data: bytes) -> bytes | None:
    return deidentify_dicom(data, KEY, parse_dicom_policy({"ocr": False}), {}).output


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        files = corpus(tmp, args.synthetic)
        inputs = [(path, path.read_bytes()) for path in files]
        values = {path: dicom_identifying_values(pydicom.dcmread(BytesIO(data), force=True)) for path, data in inputs}
        tools = {"clinflow": run_clinflow, "dicognito": make_dicognito(), "deid": make_deid(tmp)}
        rates: dict[str, float] = {}
        residual: dict[str, Counter[str]] = {}
        failures: Counter[str] = Counter()
        for name, tool in tools.items():
            outputs: dict[Path, bytes | None] = {}
            start = time.perf_counter()
            for _ in range(args.repeat):
                for path, data in inputs:
                    try:
                        outputs[path] = tool(data)
                    except Exception:
                        outputs[path] = None
            elapsed = time.perf_counter() - start
            rates[name] = len(inputs) * args.repeat / elapsed
            hits: Counter[str] = Counter()
            for path, output in outputs.items():
                if output is None:
                    failures[name] += 1
                    continue
                hits.update(scan_dicom_output(output, values[path]))
            residual[name] = hits
            print(
                f"{name:10s} {rates[name]:8.1f} files/s  ({len(inputs)} files x {args.repeat}, {elapsed:.2f} s)"
                f"  failed/not written: {failures[name]}",
                file=sys.stderr,
                flush=True,
            )
        print(f"\ncorpus: {len(inputs)} files (BurnedInAnnotation=YES excluded); clinflow OCR off")
        print(f"{'tool':10s} {'files/s':>9s} {'clinflow x':>11s} {'failed':>7s} {'residual hits':>14s}")
        for name in tools:
            ratio = rates["clinflow"] / rates[name]
            print(f"{name:10s} {rates[name]:9.1f} {ratio:11.2f} {failures[name]:7d} {sum(residual[name].values()):14d}")
        for name in tools:
            print(f"\nresidual identifying values in {name} output (category:attribute -> count):")
            for where, count in sorted(residual[name].items(), key=lambda item: (-item[1], item[0])):
                print(f"  {where:55s} {count}")
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
