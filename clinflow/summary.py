"""Readable end-of-run summaries for local pipeline runs."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

KEY_METRICS = {
    "ingest": ("files", "resources"),
    "deidentify": ("resources_in", "resources_out", "dead_letter", "residual_phi_hits"),
    "validate": ("feature_rows", "prediction_events", "positive_rate", "anomalies"),
    "features": ("entity_rows_in", "training_rows_out", "rows_without_features", "online_rows_materialized"),
    "train": ("train_rows", "eval_rows", "eval_auroc"),
    "evaluate": ("auroc", "brier", "calibration_slope"),
    "deploy": ("promoted", "canary_traffic_percent"),
}


def _format_number(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3f}"
    if isinstance(value, (int, float)):
        return f"{int(value):,}"
    return str(value)


def key_outputs(task_name: str, outputs: dict[str, dict[str, Any]]) -> str:
    """Summarises a task's outputs: its headline metrics, else its artifact names.

    Args:
        task_name: The DAG task name.
        outputs: Output name to ``{"uri", "type", "metadata"}``.

    Returns:
        A short one-line description.
    """
    metadata: dict[str, Any] = {}
    for output in outputs.values():
        if output.get("type") == "system.Metrics":
            metadata.update(output.get("metadata", {}))
    wanted = KEY_METRICS.get(task_name, ())
    shown = [f"{name}={_format_number(metadata[name])}" for name in wanted if name in metadata]
    if not shown:
        shown = [f"{name}={_format_number(value)}" for name, value in list(metadata.items())[:3]]
    return ", ".join(shown) or ", ".join(sorted(outputs))


def print_run_summary(run: Any, console: Console | None = None) -> None:
    """Prints a table of steps: status, duration and key outputs.

    Args:
        run: A ``pipelines.local_runner.RunResult``.
        console: Where to print; stdout by default.
    """
    console = console or Console()
    table = Table(title=f"run {run.run_id}: {'succeeded' if run.succeeded else 'FAILED'}", show_lines=False)
    for column in ("step", "status", "duration", "key outputs"):
        table.add_column(column)
    for record in run.tasks:
        duration = f"{record.duration_s:.1f}s" if record.duration_s else "-"
        if record.status == "failed":
            detail = record.error if len(record.error) <= 90 else record.error[:87] + "..."
        else:
            detail = key_outputs(record.name, record.outputs)
        table.add_row(record.name, record.status, duration, detail)
    console.print(table)
    console.print(f"outputs: {run.run_dir}  (run record: {run.run_dir / 'run.json'})")
