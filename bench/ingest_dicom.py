"""DICOM lane throughput vs the plain header-read limit, side by side in one run.

The peer is the least work a DICOM header check can do: ``pydicom.dcmread(path,
stop_before_pixels=True)`` on every file. clinflow's lane does that (with ``defer_size`` instead,
so pixel data is skipped but its length is still checked) plus content sniffing, size limits,
required attributes, the transfer-syntax allow-list and truncation checks, through ``route``.

Corpus: pydicom's bundled test files, the shared ``dicom-deid-samples`` (when present) and
``--generated`` small instances written with pydicom.

    .venvs/platform/bin/python bench/ingest_dicom.py --generated 2000 --repeat 3
"""

import argparse
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import pydicom
import pydicom.data

from components.ingest import sniff
from components.ingest.lanes import dicom, route

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from ingest_corpus.builder import build_valid_dicom  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "dicom-deid-samples"


def corpus(workdir: Path, generated: int) -> list[Path]:
    test_dir = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    files = sorted(p for p in test_dir.rglob("*.dcm") if p.is_file())
    files += sorted(SHARED.rglob("*.dcm")) if SHARED.is_dir() else []
    for index in range(generated):
        files.append(build_valid_dicom(workdir / f"gen{index:05d}.dcm", index, rows=64, columns=64))
    return files


def peer(files: list[Path]) -> int:
    ok = 0
    for path in files:
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
            ok += 1
        except Exception:
            pass
    return ok


def lane_route(files: list[Path]) -> Counter[str]:
    return Counter(route(path).outcome for path in files)


def lane_only(files: list[Path]) -> Counter[str]:
    return Counter(dicom.validate(path, sniff.sniff_file(path)).outcome for path in files)


def interleaved(candidates: dict[str, object], files: list[Path], repeat: int) -> dict[str, float]:
    """Best files/s of each candidate, alternating candidates every round so load noise hits all alike."""
    best = dict.fromkeys(candidates, float("inf"))
    results: dict[str, object] = {}
    for _ in range(repeat):
        for label, function in candidates.items():
            start = time.perf_counter()
            results[label] = function(files)
            best[label] = min(best[label], time.perf_counter() - start)
    rates = {}
    for label, seconds in best.items():
        rates[label] = len(files) / seconds
        print(f"{label:<44} {rates[label]:>8,.0f} files/s  ({seconds:.3f} s best of {repeat})  -> {results[label]}")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generated", type=int, default=1000, help="generated instances added to the corpus")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("pydicom").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        files = corpus(Path(tmp), args.generated)
        size = sum(p.stat().st_size for p in files)
        print(f"corpus: {len(files):,} files, {size / 1e6:.1f} MB (pydicom test files, shared samples, generated)")
        rates = interleaved(
            {
                "peer: dcmread(stop_before_pixels=True)": peer,
                "clinflow route() (sniff+limits+dicom lane)": lane_route,
                "clinflow dicom.validate() only": lane_only,
            },
            files,
            args.repeat,
        )
        plain, routed, lane = rates.values()
        print(f"ratio route/peer: {routed / plain:.2f}x   lane/peer: {lane / plain:.2f}x")


if __name__ == "__main__":
    main()
