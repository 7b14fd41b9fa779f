"""``python -m clinflow.synthetic --patients N --seed S --output DIR [--gzip]``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from clinflow.errors import run_cli
from clinflow.synthetic.generator import file_name, generate_fhir_bulk


def _positive(text: str) -> int:
    """Parses a positive integer flag value."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command-line flags.

    Args:
        argv: Arguments without the program name.

    Returns:
        The parsed flags.
    """
    parser = argparse.ArgumentParser(
        prog="python -m clinflow.synthetic",
        description="Write a deterministic synthetic FHIR R4 Bulk Data export (NDJSON) with realistic "
        "fake PHI and a learnable 90-day acute-encounter signal. Same seed, same bytes.",
    )
    parser.add_argument("--patients", type=_positive, default=1000, help="number of patients (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    parser.add_argument("--output", type=Path, required=True, help="output directory (created if missing)")
    parser.add_argument("--gzip", action="store_true", help="write <Type>.000.ndjson.gz instead of plain NDJSON")
    parser.add_argument(
        "--workers",
        type=_positive,
        default=min(os.cpu_count() or 1, 4),
        help="processes simulating patients in parallel; output is identical for any value (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Generates the export and prints a summary table.

    Args:
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        The exit status.
    """
    args = parse_args(argv)
    started = time.monotonic()
    with tqdm(total=args.patients, unit="patient", file=sys.stderr, disable=args.quiet) as bar:
        counts = generate_fhir_bulk(
            args.output,
            args.patients,
            args.seed,
            compress=args.gzip,
            progress=lambda done: bar.update(done - bar.n),
            workers=args.workers,
        )
    elapsed = time.monotonic() - started
    table = Table(title=f"synthetic FHIR export: {args.patients:,} patients, seed {args.seed}")
    table.add_column("file")
    table.add_column("resources", justify="right")
    for resource_type, count in counts.items():
        table.add_row(file_name(resource_type, args.gzip), f"{count:,}")
    table.add_row("total", f"{sum(counts.values()):,}")
    console = Console()
    console.print(table)
    console.print(f"wrote {args.output} in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
