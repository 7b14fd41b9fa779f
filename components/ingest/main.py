"""Ingest stage: take clinical files through staging, validation and quarantine into the clean zone.

``python -m components.ingest.main (--source DIR | --bulk-url URL) --output-data DIR --manifest DIR
--metrics FILE [--report FILE] [--store URI] [--state-db PATH] [--executor-output FILE]``
(contract: docs/stages.md).

Inputs: a file drop directory (FHIR Bulk NDJSON, DICOM, device-log CSV/JSONL, PDFs, in any
folder structure; the content decides the lane, never the extension) and/or a FHIR Bulk Data
``$export`` from a server (SMART Backend Services auth: client id from ``--bulk-client-id`` or
``CLINFLOW_BULK_CLIENT_ID``, the private key from the file ``--bulk-private-key-file`` or the PEM in
``CLINFLOW_BULK_PRIVATE_KEY``; on a cluster both come from a Kubernetes Secret). Every file is staged
in the object store (``--store``: a local path or ``gs://bucket/prefix``), judged by its lane,
then promoted to ``clean`` or moved to ``quarantine`` with a reason; each step is an event in the
metadata store (``--state-db``, SQLite). Re-running with the same store and state DB carries on
where a killed run stopped and never stores the same bytes twice.

The stage fails only when no FHIR file was promoted; every other bad file is counted, set aside
with a reason in ``ingest_manifest.json``, and the run goes on.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from clinflow.errors import run_cli
from clinflow.kfp_outputs import scalar_metrics, write_executor_output
from components.ingest.ingest import MANIFEST_FILE
from components.ingest.intake import (
    InputFile,
    Intake,
    IntakeResult,
    bulk_inputs,
    bulk_missing_outcomes,
    list_drop,
    require_fhir,
)
from components.ingest.state import open_state_store
from components.ingest.storage import open_zone_store

METRICS_ARTIFACT = "metrics"
CLIENT_ID_ENV = "CLINFLOW_BULK_CLIENT_ID"
PRIVATE_KEY_ENV = "CLINFLOW_BULK_PRIVATE_KEY"
STATE_DB_NAME = "ingest_state.sqlite"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the stage flags.

    Args:
        argv: Arguments without the program name.

    Returns:
        The parsed flags.
    """
    parser = argparse.ArgumentParser(
        prog="python -m components.ingest.main",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("inputs (at least one)")
    source.add_argument(
        "--source",
        default="",
        help="file drop directory: FHIR NDJSON(.gz), DICOM, device-log CSV/JSONL and PDF files in any folders "
        "(a bulk export's log.ndjson/manifest.json and README files are recorded and skipped)",
    )
    source.add_argument("--bulk-url", default="", help="FHIR server base URL to run a Bulk Data $export against")
    bulk = parser.add_argument_group("FHIR Bulk Data $export (with --bulk-url)")
    bulk.add_argument("--bulk-level", choices=("system", "group", "patient"), default="system", help="export level")
    bulk.add_argument("--bulk-group-id", default=None, help="Group id for --bulk-level group")
    bulk.add_argument("--bulk-type", default="", help="comma-separated resource types (_type); empty = all")
    bulk.add_argument("--bulk-since", default=None, help="only resources changed since this FHIR instant (_since)")
    bulk.add_argument(
        "--bulk-client-id",
        default=None,
        help=f"SMART Backend Services client id (default: ${CLIENT_ID_ENV}; none = an open server)",
    )
    bulk.add_argument(
        "--bulk-private-key-file",
        default=None,
        help=f"PEM private key (RS384/ES384) for the JWT assertion; default: the PEM in ${PRIVATE_KEY_ENV}",
    )
    bulk.add_argument("--bulk-kid", default="default", help="key id (kid) the server registered for the key")
    bulk.add_argument("--bulk-token-url", default=None, help="token endpoint (default: from .well-known)")
    bulk.add_argument("--bulk-workers", type=int, default=4, help="parallel file downloads (default 4)")
    bulk.add_argument(
        "--bulk-work-dir",
        default=None,
        help="where downloads land and resume from after a killed run (default: <state-db dir>/bulk)",
    )
    parser.add_argument(
        "--output-data", type=Path, required=True, help="Output Dataset directory: the promoted files (see docs)"
    )
    parser.add_argument(
        "--manifest", type=Path, required=True, help="Output Artifact directory for ingest_manifest.json"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="Output Metrics file (JSON)")
    parser.add_argument("--report", type=Path, default=None, help="Output HTML report (counts and quarantine list)")
    parser.add_argument(
        "--store",
        default="",
        help="zone store URI: local path, file:///path or gs://bucket/prefix (default: <manifest>/store); "
        "use one persistent store so re-runs deduplicate and resume",
    )
    parser.add_argument(
        "--state-db",
        default="",
        help="metadata store: SQLite file path (default: <store>/ingest_state.sqlite for a local store, "
        "<manifest>/ingest_state.sqlite otherwise) or a postgresql:// DSN",
    )
    parser.add_argument("--executor-output", default=None, help="KFP executor output file ({{$.outputs.output_file}})")
    args = parser.parse_args(argv)
    if not args.source and not args.bulk_url:
        parser.error("give --source DIR, --bulk-url URL, or both")
    return args


def _progress_printer(started: float) -> Any:
    """Returns a callback that prints one timestamped progress line on stderr."""

    def progress(message: str) -> None:
        print(f"ingest [{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return progress


def _local_store_root(store: str) -> Path | None:
    """The directory of a local store URI, or ``None`` for object stores."""
    if store.startswith("gs://"):
        return None
    return Path(store.removeprefix("file://"))


def resolve_locations(args: argparse.Namespace) -> tuple[str, str, Path]:
    """Picks the store URI, the state DB and the bulk work directory from flags and defaults."""
    store = args.store or str(args.manifest / "store")
    root = _local_store_root(store)
    state_db = args.state_db or str((root if root is not None else args.manifest) / STATE_DB_NAME)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    if args.bulk_work_dir:
        work = Path(args.bulk_work_dir)
    elif state_db.startswith("postgresql://"):
        work = args.manifest / "bulk"
    else:
        work = Path(state_db).parent / "bulk"
    return store, state_db, work


def run_bulk(args: argparse.Namespace, work_dir: Path, progress: Any) -> Any:
    """Runs the ``$export`` into ``work_dir`` (resuming a killed run) and returns its result."""
    from components.ingest.bulk_client import BulkExportConfig, run_export

    client_id = args.bulk_client_id or os.environ.get(CLIENT_ID_ENV) or None
    key_file = args.bulk_private_key_file
    key_env = None if key_file or not client_id else PRIVATE_KEY_ENV
    types = tuple(t.strip() for t in args.bulk_type.split(",") if t.strip())
    config = BulkExportConfig(
        base_url=args.bulk_url,
        level=args.bulk_level,
        group_id=args.bulk_group_id,
        types=types,
        since=args.bulk_since,
        client_id=client_id,
        private_key_file=key_file,
        private_key_env=key_env,
        kid=args.bulk_kid,
        token_url=args.bulk_token_url,
        max_workers=args.bulk_workers,
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    return run_export(config, work_dir, progress=progress)


def manifest_document(result: IntakeResult, store: str, bulk: Any | None) -> dict[str, Any]:
    """Builds ``ingest_manifest.json``: every file with its state and reason, lane counts, totals."""
    document: dict[str, Any] = {
        "store": store.split("?", 1)[0],
        "files": [outcome.manifest_entry() for outcome in result.files],
        "lanes": result.lane_counts(),
        "totals": result.totals(),
    }
    if bulk is not None:
        summary = bulk.to_dict()
        summary.pop("output_dir", None)
        summary["files"] = len(bulk.files)
        document["bulk"] = summary
    return document


def stage_metrics(result: IntakeResult) -> dict[str, int]:
    """Scalar metrics: run totals and, per lane, received/promoted/quarantined/rejected."""
    metrics = {f"files_{key}": value for key, value in result.totals().items() if key not in ("bytes",)}
    metrics["bytes"] = result.totals()["bytes"]
    for lane, counts in result.lane_counts().items():
        for key, value in counts.items():
            metrics[f"{lane}_{key}"] = value
    resources = sum(int(o.details.get("resources", 0)) for o in result.files if o.state == "promoted")
    metrics["fhir_resources"] = resources
    return metrics


def render_report(document: dict[str, Any]) -> str:
    """An HTML page for the KFP UI: lane counts and every file that was set aside, with its reason."""
    rows = "".join(
        f"<tr><td>{html.escape(lane)}</td>"
        + "".join(f"<td>{counts[k]:,}</td>" for k in ("received", "promoted", "quarantined", "rejected"))
        + "</tr>"
        for lane, counts in document["lanes"].items()
    )
    set_aside = [f for f in document["files"] if f["state"] in ("quarantined", "rejected")]
    aside_rows = "".join(
        f"<tr><td>{html.escape(f['file'])}</td><td>{html.escape(f['lane'])}</td><td>{f['state']}</td>"
        f"<td><code>{html.escape(f['reason_code'])}</code></td><td>{html.escape(f['reason'])}</td></tr>"
        for f in set_aside
    )
    totals = document["totals"]
    total_line = ", ".join(f"{key} {totals[key]:,}" for key in totals if key != "promoted_bytes")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>clinflow ingest</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left}</style></head><body><h1>Ingest</h1>"
        f"<p>{html.escape(total_line)}</p><h2>Lanes</h2><table><tr><th>lane</th><th>received</th>"
        f"<th>promoted</th><th>quarantined</th><th>rejected</th></tr>{rows}</table>"
        f"<h2>Set aside ({len(set_aside)})</h2>"
        + (
            f"<table><tr><th>file</th><th>lane</th><th>state</th><th>reason code</th><th>what to do</th></tr>"
            f"{aside_rows}</table>"
            if set_aside
            else "<p>None.</p>"
        )
        + "</body></html>\n"
    )


def print_summary(document: dict[str, Any], output_data: Path, manifest: Path, seconds: float) -> None:
    """Prints the lane table and the files set aside."""
    table = Table(title="ingest")
    for column in ("lane", "received", "promoted", "quarantined", "rejected"):
        table.add_column(column, justify="left" if column == "lane" else "right")
    for lane, counts in document["lanes"].items():
        table.add_row(lane, *(f"{counts[k]:,}" for k in ("received", "promoted", "quarantined", "rejected")))
    console = Console(width=120, stderr=False)
    console.print(table)
    for entry in document["files"]:
        if entry["state"] in ("quarantined", "rejected"):
            console.print(f"  {entry['state']}: {entry['reason_code']}: {entry['reason']}", markup=False)
    totals = document["totals"]
    console.print(
        f"{totals['received']} files received: {totals['promoted']} promoted to {output_data}, "
        f"{totals['quarantined']} quarantined, {totals['rejected']} rejected, {totals['duplicate']} duplicates, "
        f"{totals['skipped']} side files skipped; manifest {manifest}; {seconds:.1f}s"
    )


def write_outputs(args: argparse.Namespace, document: dict[str, Any], metrics: dict[str, int]) -> Path:
    """Writes the manifest, metrics, executor output and the HTML report."""
    args.manifest.mkdir(parents=True, exist_ok=True)
    manifest_path = args.manifest / MANIFEST_FILE
    manifest_path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_executor_output(args.executor_output, {METRICS_ARTIFACT: scalar_metrics(metrics)})
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(render_report(document), encoding="utf-8")
    return manifest_path


def main(argv: Sequence[str] | None = None) -> int:
    """Collects the inputs, takes each file through the zones, writes the manifest, report and metrics.

    Args:
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        The exit status (0); bad input as a whole (nothing usable) raises ``UserError``.
    """
    args = parse_args(argv)
    started = time.monotonic()
    progress = _progress_printer(started)
    store_uri, state_db, work_dir = resolve_locations(args)
    inputs: list[InputFile] = list_drop(args.source) if args.source else []
    bulk = run_bulk(args, work_dir, progress) if args.bulk_url else None
    if bulk is not None:
        inputs.extend(bulk_inputs(bulk))
    progress(f"{len(inputs):,} files to take through staging into {store_uri.split('?', 1)[0]}")
    args.output_data.mkdir(parents=True, exist_ok=True)
    store = open_zone_store(store_uri)
    with open_state_store(state_db) as state:
        result = Intake(store, state, args.output_data, progress=progress).take_all(inputs)
    if bulk is not None:
        result.files.extend(bulk_missing_outcomes(bulk))
    result.check_counts()
    document = manifest_document(result, store_uri, bulk)
    manifest_path = write_outputs(args, document, stage_metrics(result))
    print_summary(document, args.output_data, manifest_path, time.monotonic() - started)
    require_fhir(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
