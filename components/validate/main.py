"""Validate stage: build the analytic tables, then check them with TFDV against the curated schema.

``python -m components.validate.main --input-data DIR --tables DIR --statistics DIR --report FILE
--metrics FILE --executor-output FILE`` (runs in the ``tfx`` environment). Every output is written
before the stage fails on anomalies, so the KFP UI shows the report of a failed run too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from clinflow.errors import UserError, run_cli
from clinflow.kfp_outputs import scalar_metrics, write_executor_output
from clinflow.tables import Tables, build_tables, write_tables
from components.validate import checks
from components.validate.report import ReportInputs, render


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the stage flags."""
    parser = argparse.ArgumentParser(
        prog="python -m components.validate.main",
        description="Build patient_features/prediction_events and validate them with TFDV.",
    )
    parser.add_argument("--input-data", required=True, help="De-identified FHIR NDJSON directory.")
    parser.add_argument("--tables", required=True, help="Output Dataset directory for the two parquet tables.")
    parser.add_argument(
        "--statistics",
        required=True,
        help="Output Artifact directory: TFDV stats.pb, the schema used and the anomalies.",
    )
    parser.add_argument("--report", required=True, help="Output HTML report file.")
    parser.add_argument("--metrics", required=True, help="Output Metrics file (JSON).")
    parser.add_argument(
        "--executor-output",
        default=None,
        help="KFP executor output file ({{$.outputs.output_file}}); optional when run by hand.",
    )
    return parser.parse_args(argv)


def stage_metrics(tables: Tables, labels: checks.LabelCheck, anomalies: int) -> dict[str, float]:
    """Builds the scalar metrics shown in the KFP UI.

    Args:
        tables: The built tables.
        labels: The prediction-event checks.
        anomalies: Number of schema anomalies.

    Returns:
        Metric name to value.
    """
    return scalar_metrics(
        {
            "feature_rows": len(tables.patient_features),
            "patients": tables.patients,
            "prediction_events": labels.events,
            "positives": labels.positives,
            "positive_rate": labels.positive_rate,
            "anomalies": anomalies,
            "skipped_records": sum(tables.skipped.values()),
        }
    )


def _write_text(path: str, text: str) -> None:
    """Writes a text file, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _labels_or_empty(tables: Tables, source: str) -> tuple[checks.LabelCheck, UserError | None]:
    """Runs the prediction-event checks, keeping a fatal error for after the outputs are written."""
    try:
        return checks.check_prediction_events(tables.prediction_events, source), None
    except UserError as error:
        return checks.LabelCheck(0, 0, 0.0, (str(error),)), error


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the validate stage.

    Args:
        argv: Flags without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success.

    Raises:
        UserError: Bad input, no prediction events, or data anomalies (after writing all outputs).
    """
    args = parse_args(argv)
    started = time.monotonic()
    tables = build_tables(args.input_data)
    paths = write_tables(tables, args.tables)
    schema = checks.load_schema(checks.SCHEMA_PATH)
    statistics = checks.compute_statistics(tables.patient_features)
    result = checks.validate(statistics, schema)
    anomalies = checks.anomaly_list(result)
    checks.write_statistics(statistics, checks.SCHEMA_PATH, result, args.statistics)
    labels, events_error = _labels_or_empty(tables, args.input_data)
    inputs = ReportInputs(
        input_dir=args.input_data,
        tables=tables,
        summaries=checks.feature_summaries(statistics),
        anomalies=anomalies,
        labels=labels,
        schema_path=str(checks.SCHEMA_PATH),
    )
    _write_text(args.report, render(inputs))
    metrics = stage_metrics(tables, labels, len(anomalies))
    _write_text(args.metrics, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_executor_output(args.executor_output, {"metrics": metrics})
    _print_summary(tables, labels, anomalies, paths, args, time.monotonic() - started)
    if events_error is not None:
        raise events_error
    if anomalies:
        raise UserError(checks.anomaly_message(anomalies, args.report))
    return 0


def _print_summary(
    tables: Tables,
    labels: checks.LabelCheck,
    anomalies: list[checks.Anomaly],
    paths: dict[str, str],
    args: argparse.Namespace,
    seconds: float,
) -> None:
    """Prints what came in, what went out, what was set aside and where the outputs are."""
    read = sum(tables.resources_read.values())
    print(
        f"validate: read {read:,} resources ({len(tables.resources_read)} types) for {tables.patients:,} "
        f"patients; set aside {sum(tables.skipped.values()):,} records; took {seconds:.1f}s\n"
        f"  patient_features: {len(tables.patient_features):,} rows -> {paths['patient_features']}\n"
        f"  prediction_events: {labels.events:,} rows, {labels.positives:,} positive "
        f"({labels.positive_rate:.1%}) -> {paths['prediction_events']}\n"
        f"  anomalies: {len(anomalies)}; statistics -> {args.statistics}; report -> {args.report}",
        file=sys.stdout,
        flush=True,
    )
    for warning in labels.warnings:
        print(f"  warning: {warning}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
