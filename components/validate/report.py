"""The validate stage's HTML report for the KFP UI: plain, self-contained HTML (no scripts)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clinflow.prediction_task import ENTITY_KEY, GROUP_COLUMN, LABEL_COLUMN, TIMESTAMP_COLUMN
from clinflow.tables import Tables
from components.validate.checks import Anomaly, FeatureSummary, LabelCheck

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f2f2f2; }
.status-ok { color: #1a7f37; font-weight: bold; } .status-fail { color: #b42318; font-weight: bold; }
.warn { color: #9a6700; }
"""


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows.

    Attributes:
        input_dir: The de-identified NDJSON directory.
        tables: The built tables with their counts.
        summaries: Per-feature statistics.
        anomalies: Schema anomalies.
        labels: The prediction-event checks.
        schema_path: The curated schema used.
    """

    input_dir: str
    tables: Tables
    summaries: Sequence[FeatureSummary]
    anomalies: Sequence[Anomaly]
    labels: LabelCheck
    schema_path: str


def _cell(value: object) -> str:
    """Renders one table cell; numbers right-aligned with sensible precision."""
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:,.4g}</td>' if abs(value) < 1e5 else f'<td class="num">{value:,.0f}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Renders an HTML table with escaped headers and cells."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_section(inputs: ReportInputs) -> str:
    """The headline counts."""
    features, events = inputs.tables.patient_features, inputs.tables.prediction_events
    stamps = features[TIMESTAMP_COLUMN]
    rows: list[tuple[str, object]] = [
        ("input", inputs.input_dir),
        ("data end (latest Encounter start)", inputs.tables.data_end.isoformat()),
        ("patients", inputs.tables.patients),
        ("patients with snapshots", int(features[ENTITY_KEY].nunique())),
        ("patient_features rows", len(features)),
        (
            "snapshots",
            f"{stamps.min():%Y-%m-%d} .. {stamps.max():%Y-%m-%d} ({stamps.nunique()})" if len(features) else "none",
        ),
        ("prediction_events rows", len(events)),
        ("positive labels", inputs.labels.positives),
        ("positive rate", inputs.labels.positive_rate),
        ("anomalies", len(inputs.anomalies)),
        ("schema", inputs.schema_path),
    ]
    return "<h2>Summary</h2>" + table(["", "value"], rows)


def _anomaly_section(anomalies: Sequence[Anomaly]) -> str:
    """The anomalies table, or a clear 'none' line."""
    if not anomalies:
        return '<h2>Anomalies</h2><p class="status-ok">No anomalies: patient_features matches the schema.</p>'
    rows = [(a.feature, a.severity, a.short_description, a.description) for a in anomalies]
    return f'<h2>Anomalies</h2><p class="status-fail">{len(anomalies)} anomalies: the run fails.</p>' + table(
        ["feature", "severity", "anomaly", "detail"], rows
    )


def _feature_section(summaries: Sequence[FeatureSummary]) -> str:
    """The per-feature statistics table."""
    rows = [
        (
            s.name,
            s.kind,
            s.count,
            s.missing,
            s.mean,
            s.std_dev,
            s.min,
            s.max,
            s.zeros,
            ", ".join(f"{value} ({count:,})" for value, count in s.top_values) or None,
        )
        for s in summaries
    ]
    headers = ["feature", "type", "count", "missing", "mean", "std dev", "min", "max", "zeros", "top values"]
    return "<h2>Feature statistics (TFDV)</h2>" + table(headers, rows)


def _label_section(inputs: ReportInputs) -> str:
    """Label balance overall and by sex, plus warnings."""
    events = inputs.tables.prediction_events
    sexes = inputs.tables.patient_features.drop_duplicates(ENTITY_KEY).set_index(ENTITY_KEY)[GROUP_COLUMN]
    grouped = events.assign(**{GROUP_COLUMN: events[ENTITY_KEY].map(sexes).fillna("unknown")}).groupby(GROUP_COLUMN)
    rows = [
        (str(sex), len(group), int(group[LABEL_COLUMN].sum()), float(group[LABEL_COLUMN].mean()))
        for sex, group in grouped
    ]
    warnings = "".join(f'<p class="warn">warning: {html.escape(w)}</p>' for w in inputs.labels.warnings)
    return (
        f"<h2>Prediction events (label: {LABEL_COLUMN})</h2>"
        + warnings
        + table(["sex", "events", "positives", "positive rate"], rows)
    )


def _inputs_section(tables: Tables) -> str:
    """Resources read and records set aside."""
    read = table(["resource type", "resources"], sorted(tables.resources_read.items()))
    skipped_rows = sorted(tables.skipped.items(), key=lambda item: (-item[1], item[0]))
    skipped = table(["reason", "records"], skipped_rows) if skipped_rows else "<p>No records set aside.</p>"
    return "<h2>Input resources</h2>" + read + "<h2>Records set aside</h2>" + skipped


def render(inputs: ReportInputs) -> str:
    """Renders the complete HTML report.

    Args:
        inputs: The numbers to show.

    Returns:
        A standalone HTML document.
    """
    status = (
        '<p class="status-fail">FAILED: data anomalies</p>'
        if inputs.anomalies
        else '<p class="status-ok">PASSED: no data anomalies</p>'
    )
    body = (
        "<h1>clinflow validate: patient_features</h1>"
        + status
        + _summary_section(inputs)
        + _anomaly_section(inputs.anomalies)
        + _feature_section(inputs.summaries)
        + _label_section(inputs)
        + _inputs_section(inputs.tables)
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>clinflow validate report</title><style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )
