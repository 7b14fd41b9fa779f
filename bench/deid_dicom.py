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
deidentify stage's DICOM lane does per file: de-identify, then the residual self-check (identifying values
of the input searched in the output).

Usage: .venvs/platform/bin/python bench/deid_dicom.py [--synthetic 60] [--repeat 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
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


HEADER_POLICY = parse_dicom_policy({"ocr": False})


def run_clinflow(data: bytes) -> bytes | None:
    return deidentify_dicom(data, KEY, HEADER_POLICY, {}).output


def run_clinflow_checked(data: bytes) -> bytes | None:
    """De-identify plus the lane's residual self-check (components/deidentify/lanes.py DicomFileFn)."""
    output = deidentify_dicom(data, KEY, HEADER_POLICY, {}).output
    if output is None:
        return None
    source = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True)
    if sum(scan_dicom_output(output, dicom_identifying_values(source, HEADER_POLICY)).values()):
        return None  # the lane sends it to the dead letter
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
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
                    f"round {round_no} {name:15s} {rates[name][-1]:8.1f} files/s {cpu_ms[name][-1]:7.2f} CPU ms/file"
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
            f"{'tool':15s} {'files/s':>8s} {'CPU ms':>7s} {'wall x per round':>18s} {'CPU x per round':>18s}"
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
                f"{name:15s} {statistics.median(rates[name]):8.1f} {statistics.median(cpu_ms[name]):7.2f}"
                f" {' '.join(f'{x:5.2f}' for x in wall):>18s} {' '.join(f'{x:5.2f}' for x in cpu_x):>18s}"
                f" {statistics.median(wall):7.2f} {statistics.median(cpu_x):6.2f}"
                f" {statistics.median(checked_wall):13.2f} {statistics.median(checked_cpu):12.2f}"
                f" {failures[name]:6d} {sum(residual[name].values()):8d}"
            )
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
