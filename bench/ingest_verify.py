"""Ingest NDJSON verification throughput vs the plain read + orjson-parse limit, side by side.

The peer is the simplest loop that still reads every byte and parses every line:
open each file (gunzip when needed), ``orjson.loads`` each line, count. clinflow's
``verify_file`` does that plus sha256, resourceType checks and line-numbered errors.

    .venvs/platform/bin/python bench/ingest_verify.py --patients 2000 --repeat 3
    .venvs/platform/bin/python bench/ingest_verify.py --source ../shared/data/fhir-bulk-100
"""

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import orjson

from clinflow.synthetic import generate_fhir_bulk
from components.ingest.ingest import list_source, verify_file
from components.ingest.lanes import route


def plain_read_parse(files: list[Path]) -> int:
    """The peer: read and parse every line, nothing else."""
    count = 0
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            for line in handle:
                if line.strip():
                    orjson.loads(line)
                    count += 1
    return count


def clinflow_verify(files: list[Path]) -> int:
    """clinflow: full verification (parse, resourceType, sha256, counts)."""
    return sum(verify_file(path).resources for path in files)


def clinflow_lane(files: list[Path]) -> int:
    """clinflow: what the ingest stage runs per file (sniffing, bomb/size limits, then the FHIR lane)."""
    verdicts = [route(path) for path in files]
    assert all(v.promoted for v in verdicts), [v.reason_code for v in verdicts if not v.promoted]
    return sum(int(v.details["resources"]) for v in verdicts)


def uncompressed_bytes(files: list[Path]) -> int:
    total = 0
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
    return total


def best_of(function, files: list[Path], repeat: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = function(files)
        times.append(time.perf_counter() - started)
    return min(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="an existing FHIR Bulk NDJSON directory (default: generate one)")
    parser.add_argument("--patients", type=int, default=2000, help="patients to generate when no --source")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; the best is reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(args.source) if args.source else Path(scratch)
        if not args.source:
            generate_fhir_bulk(source, patients=args.patients, seed=1)
        files, _ = list_source(source)
        size = uncompressed_bytes(files)
        # same files, same process, warm page cache for both; best of --repeat runs each
        peer_s, peer_n = best_of(plain_read_parse, files, args.repeat)
        ours_s, ours_n = best_of(clinflow_verify, files, args.repeat)
        lane_s, lane_n = best_of(clinflow_lane, files, args.repeat)
        assert peer_n == ours_n == lane_n, (peer_n, ours_n, lane_n)
    mb = size / 1e6
    label = source if args.source else f"{args.patients} generated patients"
    print(f"input: {len(files)} files, {ours_n:,} resources, {mb:,.1f} MB uncompressed ({label})")
    print(f"{'contender':<34}{'seconds':>9}{'MB/s':>9}{'resources/s':>14}")
    contenders = (
        ("plain read + orjson parse (peer)", peer_s),
        ("clinflow verify_file", ours_s),
        ("clinflow lane route()", lane_s),
    )
    for name, seconds in contenders:
        print(f"{name:<34}{seconds:>9.2f}{mb / seconds:>9.1f}{ours_n / seconds:>14,.0f}")
    print(f"ratio verify_file/peer throughput: {peer_s / ours_s:.2f} (target >= 0.60)")
    print(f"ratio lane route()/peer throughput: {peer_s / lane_s:.2f} (target >= 0.60)")


if __name__ == "__main__":
    main()
