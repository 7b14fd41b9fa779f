"""Features stage: apply the Feast repo, build the training set, materialize the online store.

``python -m components.features.main --tables DIR --training-set DIR --feature-store DIR
--metrics FILE [--feature-repo DIR] [--executor-output FILE]`` (contract: docs/stages.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from feast import FeatureService, FeatureStore

from clinflow.errors import UserError, run_cli
from clinflow.kfp_outputs import scalar_metrics, write_executor_output
from clinflow.prediction_task import LABEL_COLUMN
from components.features import online
from components.features.inputs import Tables, load_tables
from components.features.store import DEFAULT_FEATURE_REPO, FEATURE_SERVICE, build_feature_store
from components.features.training_set import (
    TrainingSet,
    build_training_set,
    write_training_set,
)

METRICS_ARTIFACT = "metrics"
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True)
class Outputs:
    """Where the stage wrote its results.

    Attributes:
        training_set: The training set parquet file.
        quarantine: The parquet file of events set aside without features.
        feature_store: The applied Feast repo copy.
        online_window: The materialized interval.
        online_type: The online store type (``sqlite``, ``redis``, ...).
    """

    training_set: Path
    quarantine: Path
    feature_store: Path
    online_window: online.OnlineWindow
    online_type: str


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the stage flags.

    Args:
        argv: Arguments without the program name.

    Returns:
        The parsed flags.
    """
    parser = argparse.ArgumentParser(prog="python -m components.features.main", description=__doc__)
    parser.add_argument("--tables", type=Path, required=True, help="Tables Dataset directory (validate stage)")
    parser.add_argument(
        "--feature-repo",
        type=Path,
        default=DEFAULT_FEATURE_REPO,
        help="Feast definitions to apply (default: the repo's feature_repo/)",
    )
    parser.add_argument(
        "--training-set", type=Path, required=True, help="Output Dataset directory for training_set.parquet"
    )
    parser.add_argument(
        "--feature-store",
        type=Path,
        required=True,
        help="Output Artifact directory: the applied Feast repo with registry and online store",
    )
    parser.add_argument("--metrics", type=Path, required=True, help="Output Metrics file (JSON)")
    parser.add_argument("--executor-output", default=None, help="KFP executor output file ({{$.outputs.output_file}})")
    return parser.parse_args(argv)


def progress(message: str, started: float) -> None:
    """Prints one progress line on stderr.

    Args:
        message: What is happening.
        started: ``time.monotonic()`` at the start of the stage.
    """
    print(f"features [{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def feast_output_to_stderr() -> Iterator[None]:
    """Sends what Feast prints to stdout to stderr, keeping stdout for the summary.

    Yields:
        Nothing; the redirection lasts for the ``with`` block.
    """
    with contextlib.redirect_stdout(sys.stderr):
        yield


def service_ttl(store: FeatureStore, service: FeatureService) -> timedelta:
    """Finds the TTL of the feature service's single feature view.

    Args:
        store: The applied feature store.
        service: The feature service.

    Returns:
        The feature view's TTL.

    Raises:
        UserError: The service does not read exactly one feature view with a TTL.
    """
    projections = service.feature_view_projections
    if len(projections) != 1:
        raise UserError(f"{store.repo_path}: {service.name} must read exactly one feature view")
    ttl = store.get_feature_view(projections[0].name).ttl
    if not ttl:
        raise UserError(f"{store.repo_path}: feature view {projections[0].name} needs a TTL")
    return ttl


def stage_metrics(tables: Tables, training_set: TrainingSet, online_rows: int) -> dict[str, int]:
    """Collects the stage's counts.

    Args:
        tables: The inputs.
        training_set: The joined rows and the quarantined events.
        online_rows: Patients read back from the online store.

    Returns:
        Metric name to count.
    """
    reasons = training_set.reason_counts()
    return {
        "entity_rows_in": len(tables.prediction_events),
        "feature_snapshots_in": len(tables.patient_features),
        "training_rows_out": len(training_set.rows),
        "rows_without_features": len(training_set.quarantined),
        **{f"rows_without_features_{reason}": count for reason, count in reasons.items()},
        "online_rows_materialized": online_rows,
        "positives": int(training_set.rows[LABEL_COLUMN].sum()),
    }


def write_metrics(metrics: dict[str, int], path: Path, executor_output: str | None) -> None:
    """Writes the metrics JSON file and the KFP executor output.

    Args:
        metrics: Metric name to count.
        path: The ``--metrics`` file.
        executor_output: The ``--executor-output`` file, or None.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_executor_output(executor_output, {METRICS_ARTIFACT: scalar_metrics(metrics)})


def print_summary(metrics: dict[str, int], training_set: TrainingSet, outputs: Outputs) -> None:
    """Prints what came in, what went out, what was set aside and where.

    Args:
        metrics: The stage's counts.
        training_set: The joined rows and the quarantined events.
        outputs: Output locations.
    """
    reasons = ", ".join(f"{reason}: {count}" for reason, count in training_set.reason_counts().items())
    window = outputs.online_window
    lines = [
        f"features: {metrics['entity_rows_in']} prediction events, "
        f"{metrics['feature_snapshots_in']} feature snapshots in",
        f"  training set: {metrics['training_rows_out']} rows ({metrics['positives']} positive) "
        f"-> {outputs.training_set}",
        f"  set aside without features: {metrics['rows_without_features']} ({reasons}) -> {outputs.quarantine}",
        f"  online store ({outputs.online_type}): {metrics['online_rows_materialized']} patients "
        f"materialized and verified, snapshots {window.start:%Y-%m-%d} .. {window.end:%Y-%m-%d}",
        f"  feature store: {outputs.feature_store}",
    ]
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the features stage.

    Args:
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        The exit status (0).
    """
    args = parse_args(argv)
    started = time.monotonic()
    progress(f"reading tables from {args.tables}", started)
    tables = load_tables(args.tables)
    progress(f"applying {args.feature_repo} in {args.feature_store}", started)
    with feast_output_to_stderr():
        store = build_feature_store(args.feature_repo, args.feature_store, tables.patient_features_path)
    service = store.get_feature_service(FEATURE_SERVICE)
    ttl = service_ttl(store, service)
    progress(f"point-in-time join of {len(tables.prediction_events)} events with {service.name}", started)
    with feast_output_to_stderr():
        training_set = build_training_set(store, service, tables.prediction_events, tables.patient_features, ttl)
    training_path, quarantine_path = write_training_set(
        training_set, args.training_set, args.feature_store / QUARANTINE_DIR
    )
    window = online.materialization_window(tables.patient_features, ttl)
    progress(f"materializing {window.start:%Y-%m-%d} .. {window.end:%Y-%m-%d} to the online store", started)
    with feast_output_to_stderr():
        online.materialize(store, window)
        expected = online.expected_online_rows(tables.patient_features, window)
        progress(f"reading {len(expected)} patients back from the online store", started)
        online_rows = online.verify_online(store, service, expected)
    metrics = stage_metrics(tables, training_set, online_rows)
    write_metrics(metrics, args.metrics, args.executor_output)
    outputs = Outputs(
        training_set=training_path,
        quarantine=quarantine_path,
        feature_store=args.feature_store,
        online_window=window,
        online_type=str(store.config.online_store.type),
    )
    progress("done", started)
    print_summary(metrics, training_set, outputs)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
