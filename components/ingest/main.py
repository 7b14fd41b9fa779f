"""Ingest stage: verify a FHIR Bulk Data export and stage verified copies into the clean zone.

``python -m components.ingest.main --source DIR --output-data DIR --manifest DIR --metrics FILE
[--executor-output FILE]`` (contract: docs/stages.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from clinflow.errors import run_cli
from clinflow.kfp_outputs import scalar_metrics, write_executor_output
from components.ingest.ingest import (
    Progress,
    Verification,
    copy_verified,
    stage_metrics,
    verify_source,
    write_manifest,
)

METRICS_ARTIFACT = "metrics"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the stage flags.

    Args:
        argv: Arguments without the program name.

    Returns:
        The parsed flags.
    """
    parser = argparse.ArgumentParser(prog="python -m components.ingest.main", description=__doc__)
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        help="FHIR Bulk Data export directory (<ResourceType>*.ndjson or .ndjson.gz; log.ndjson and "
        "manifest.json are recorded and skipped)",
    )
    parser.add_argument(
        "--output-data", type=Path, required=True, help="Output Dataset directory: verified copies, same file names"
    )
    parser.add_argument(
        "--manifest", type=Path, required=True, help="Output Artifact directory for ingest_manifest.json"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="Output Metrics file (JSON)")
    parser.add_argument("--executor-output", default=None, help="KFP executor output file ({{$.outputs.output_file}})")
    return parser.parse_args(argv)


def _progress_printer(started: float) -> Progress:
    """Returns a callback that prints one timestamped progress line on stderr."""

    def progress(message: str) -> None:
        print(f"ingest [{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return progress


def print_summary(verification: Verification, output_data: Path, manifest: Path, seconds: float) -> None:
    """Prints the end-of-stage table: what came in, what was set aside, where outputs are.

    Args:
        verification: The verified files and skipped side files.
        output_data: The Dataset directory holding the copies.
        manifest: The manifest file.
        seconds: Wall time of the stage.
    """
    table = Table(title=f"ingest: {verification.source}")
    for column, justify in (
        ("file", "left"),
        ("type", "left"),
        ("resources", "right"),
        ("bytes", "right"),
        ("state", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for record in verification.files:
        table.add_row(record.file, record.resource_type, f"{record.resources:,}", f"{record.bytes:,}", record.state)
    for skipped in verification.skipped:
        table.add_row(skipped.file, "-", "-", f"{skipped.bytes:,}", "skipped")
    totals = verification.totals()
    table.add_row(
        "total", f"{len(totals['resources_by_type'])} types", f"{totals['resources']:,}", f"{totals['bytes']:,}", ""
    )
    console = Console(width=120)
    console.print(table)
    console.print(
        f"{totals['files']} files verified and copied to {output_data}; {totals['skipped_files']} side files "
        f"skipped; manifest {manifest}; {seconds:.1f}s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Verifies every file first, then copies them and writes the manifest and metrics.

    Args:
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        The exit status (0); bad input raises ``UserError``.
    """
    args = parse_args(argv)
    started = time.monotonic()
    progress = _progress_printer(started)
    verification = verify_source(args.source, progress=progress)
    copy_verified(verification, args.output_data)
    manifest_path = write_manifest(verification, args.manifest)
    metrics = stage_metrics(verification)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_executor_output(args.executor_output, {METRICS_ARTIFACT: scalar_metrics(metrics)})
    print_summary(verification, args.output_data, manifest_path, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
