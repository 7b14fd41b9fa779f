"""Peak memory of clinflow's deidentify stage for growing inputs: does it stay flat?

For each size, generates a synthetic export (``clinflow.synthetic.generate_fhir_bulk``) in a
scratch directory, runs the stage CLI (``python -m components.deidentify.main``, default local
Beam runner) in a subprocess, and samples the resident memory of the whole subprocess tree with
psutil every ``--interval`` seconds (sum of RSS over the process and all its descendants; the
largest single process is printed too). Prints peak MB per size and the ratio to the smallest
size, for the whole run and for each of the stage's two pipelines (de-identify, then the residual
scan, told apart by the stage's "residual-PHI scan" progress line). Inputs and outputs are removed
after each size unless ``--inputs-dir`` keeps the generated inputs for the next run.

Generating 10k patients takes about 75 s and 1.2 GB of disk (30k: ~4 min, ~3.6 GB; the stage's
output needs about as much again), so:

    .venvs/platform/bin/python bench/deid_memory.py                          # 10k and 30k patients
    .venvs/platform/bin/python bench/deid_memory.py --sizes 1000 3000        # quick check
    .venvs/platform/bin/python bench/deid_memory.py --sizes 10000 100000 --workers 2 --workdir /big/disk
    .venvs/platform/bin/python bench/deid_memory.py --sizes 10000 100000 --inputs-dir /big/disk/inputs
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinflow.synthetic import generate_fhir_bulk

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_KEY = "bench-only-hmac-key-0123456789abcdef0123456789"
MB = 1024 * 1024
SCAN_MARKER = b"residual-PHI scan"  # the stage's progress line when its second pipeline starts


def tree_rss(process):
    """Returns (sum of RSS over the process tree, largest single RSS) in bytes."""
    total = largest = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for member in members:
        try:
            rss = member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def run_stage_measured(source, work, interval):
    """Runs the stage; returns (seconds, exit code, peak tree RSS, peak single RSS, phase peaks, stderr tail).

    Phase peaks: ``{"deidentify": bytes, "scan": bytes}`` (tree RSS before/after the scan's progress line).
    """
    args = [
        sys.executable,
        "-m",
        "components.deidentify.main",
        "--input-data", str(source),
        "--output-data", str(work / "out"),
        "--dead-letter", str(work / "dead"),
        "--report", str(work / "report.html"),
        "--report-json", str(work / "report-json"),
        "--metrics", str(work / "metrics.json"),
    ]  # fmt: skip
    env = {**os.environ, "CLINFLOW_HMAC_KEY": BENCH_KEY, "PYTHONPATH": str(REPO_ROOT)}
    log = work / "stage.log"
    peak_tree = peak_single = 0
    phases = {"deidentify": 0, "scan": 0}
    phase, seen = "deidentify", b""
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as stderr, open(log, "rb") as progress:
        child = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        process = psutil.Process(child.pid)
        while child.poll() is None:
            if phase == "deidentify":
                seen = seen[-64:] + progress.read()
                phase = "scan" if SCAN_MARKER in seen else phase
            total, largest = tree_rss(process)
            peak_tree, peak_single = max(peak_tree, total), max(peak_single, largest)
            phases[phase] = max(phases[phase], total)
            time.sleep(interval)
    seconds = time.perf_counter() - started
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-4:]
    return seconds, child.returncode, peak_tree, peak_single, phases, tail


def directory_bytes(directory):
    return sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())


def generated_input(size, args, work):
    """The generated export for ``size`` patients: (directory, resources); kept in ``--inputs-dir`` if given."""
    source = Path(args.inputs_dir) / f"p{size}" if args.inputs_dir else work / "input"
    done = source / "generated.txt"
    if done.exists():
        resources = int(done.read_text(encoding="utf-8"))
        print(f"reusing {size:,} generated patients ({resources:,} resources) in {source}", flush=True)
        return source, resources
    shutil.rmtree(source, ignore_errors=True)
    started = time.perf_counter()
    counts = generate_fhir_bulk(source, patients=size, seed=args.seed, workers=args.workers)
    resources = sum(counts.values())
    print(
        f"generated {size:,} patients ({resources:,} resources, {directory_bytes(source) / MB:,.0f} MB) "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    if args.inputs_dir:
        done.write_text(str(resources), encoding="utf-8")
    return source, resources


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000], help="patients per run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1, help="generator processes")
    parser.add_argument("--interval", type=float, default=0.2, help="RSS sampling interval, seconds")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir under /tmp)")
    parser.add_argument(
        "--inputs-dir",
        default=None,
        help="keep generated inputs in <dir>/p<size> and reuse them next time (default: generate, then delete)",
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="deid-memory-", dir=args.workdir))
    rows = []
    try:
        for size in args.sizes:
            work = root / f"p{size}"
            work.mkdir(parents=True)
            source, resources = generated_input(size, args, work)
            input_mb = directory_bytes(source) / MB
            seconds, code, peak_tree, peak_single, phases, tail = run_stage_measured(source, work, args.interval)
            state = "ok" if code == 0 else f"exit {code}"
            print(
                f"stage on {size:,} patients: {seconds:.0f} s, {state}, peak RSS {peak_tree / MB:,.0f} MB "
                f"(de-identify {phases['deidentify'] / MB:,.0f} MB, scan {phases['scan'] / MB:,.0f} MB)",
                flush=True,
            )
            if code != 0:
                print("  " + "\n  ".join(tail))
            peaks = (peak_tree / MB, peak_single / MB, phases["deidentify"] / MB, phases["scan"] / MB)
            rows.append((size, resources, input_mb, seconds, state, *peaks))
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = rows[0][5] if rows else 1.0
    print("\npatients  resources  input MB  stage s  state   peak tree MB  peak 1-proc MB  de-id MB  scan MB  vs first")
    for size, resources, input_mb, seconds, state, tree, single, deid, scan in rows:
        print(
            f"{size:>8,}  {resources:>9,}  {input_mb:>8,.0f}  {seconds:>7.0f}  {state:<6}  {tree:>12,.0f}  "
            f"{single:>14,.0f}  {deid:>8,.0f}  {scan:>7,.0f}  {tree / base:>10.2f}x"
        )
    if len(rows) >= 2:
        growth = rows[-1][5] / base
        inputs = rows[-1][0] / rows[0][0]
        verdict = "flat (within 25%)" if growth <= 1.25 else "grows"
        print(f"\ninput grew {inputs:.1f}x, peak memory {growth:.2f}x: {verdict}")


if __name__ == "__main__":
    main()
