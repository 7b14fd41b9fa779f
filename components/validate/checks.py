"""TFDV statistics and schema validation of ``patient_features``, plus label sanity checks.

TFDV is imported inside the functions that need it, so this module can be imported (for
example by the pipeline compiler or the report renderer) without the TFX environment.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clinflow.errors import UserError
from clinflow.prediction_task import FEATURE_NAMES, GROUP_COLUMN, LABEL_COLUMN

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "patient_features.pbtxt"
STATS_FILE = "stats.pb"
SCHEMA_FILE = "schema.pbtxt"
ANOMALIES_FILE = "anomalies.pbtxt"
VALIDATED_COLUMNS: tuple[str, ...] = (*FEATURE_NAMES, GROUP_COLUMN)


@dataclass(frozen=True)
class Anomaly:
    """One TFDV anomaly.

    Attributes:
        feature: Feature name (``"(dataset)"`` for dataset-level anomalies).
        severity: ``ERROR``/``WARNING``/``UNKNOWN``.
        short_description: TFDV's short text, e.g. ``Out-of-range values``.
        description: TFDV's full text.
    """

    feature: str
    severity: str
    short_description: str
    description: str


@dataclass(frozen=True)
class FeatureSummary:
    """Per-feature numbers shown in the report.

    Attributes:
        name: Feature name.
        kind: ``INT``, ``FLOAT`` or ``STRING``.
        count: Examples with a value.
        missing: Examples without a value.
        mean: Mean (numeric features; None otherwise).
        std_dev: Standard deviation (numeric; None otherwise).
        min: Minimum (numeric; None otherwise).
        max: Maximum (numeric; None otherwise).
        zeros: Examples equal to zero (numeric; None otherwise).
        top_values: Most frequent values with counts (strings only).
    """

    name: str
    kind: str
    count: int
    missing: int
    mean: float | None = None
    std_dev: float | None = None
    min: float | None = None
    max: float | None = None
    zeros: int | None = None
    top_values: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class LabelCheck:
    """Sanity of ``prediction_events``.

    Attributes:
        events: Rows.
        positives: Rows with label 1.
        positive_rate: ``positives / events`` (0 when empty).
        warnings: Problems that do not stop the run.
    """

    events: int
    positives: int
    positive_rate: float
    warnings: tuple[str, ...]


def load_schema(path: str | os.PathLike[str] = SCHEMA_PATH) -> Any:
    """Loads the curated TFDV schema.

    Args:
        path: A ``schema.pbtxt`` text proto.

    Returns:
        A ``tensorflow_metadata`` Schema proto.

    Raises:
        UserError: The file is missing or not a valid schema.
    """
    import tensorflow_data_validation as tfdv
    from google.protobuf import text_format

    if not os.path.isfile(path):
        raise UserError(f"{path}: schema file not found; restore components/validate/schema/")
    try:
        return tfdv.load_schema_text(str(path))
    except text_format.ParseError as error:
        raise UserError(f"{path}: not a valid TFDV schema ({error})") from error


def compute_statistics(frame: pd.DataFrame) -> Any:
    """Computes TFDV statistics on the feature columns and ``sex`` of ``patient_features``.

    Args:
        frame: The ``patient_features`` table.

    Returns:
        A ``DatasetFeatureStatisticsList`` proto.

    Raises:
        UserError: The table has no rows or lacks a feature column.
    """
    import tensorflow_data_validation as tfdv

    missing = [c for c in VALIDATED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"patient_features: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise UserError(
            "patient_features: no rows (no patient is born and alive at any snapshot); "
            "check the input covers the prediction window"
        )
    return tfdv.generate_statistics_from_dataframe(frame[list(VALIDATED_COLUMNS)].reset_index(drop=True))


def validate(statistics: Any, schema: Any) -> Any:
    """Validates statistics against the schema with ``tfdv.validate_statistics``.

    Args:
        statistics: A ``DatasetFeatureStatisticsList``.
        schema: The curated Schema.

    Returns:
        The ``Anomalies`` proto.
    """
    import tensorflow_data_validation as tfdv

    return tfdv.validate_statistics(statistics, schema)


def anomaly_list(result: Any) -> list[Anomaly]:
    """Lists the feature- and dataset-level anomalies of an ``Anomalies`` proto, by feature name."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    severity = anomalies_pb2.AnomalyInfo.Severity.Name
    anomalies = [
        Anomaly(name, severity(info.severity), info.short_description, info.description)
        for name, info in result.anomaly_info.items()
    ]
    if result.HasField("dataset_anomaly_info"):
        info = result.dataset_anomaly_info
        anomalies.append(Anomaly("(dataset)", severity(info.severity), info.short_description, info.description))
    return sorted(anomalies, key=lambda a: a.feature)


def _summary_of(feature: Any, num_examples: int) -> FeatureSummary:
    """Converts one ``FeatureNameStatistics`` into a FeatureSummary."""
    name = feature.path.step[-1] if feature.path.step else feature.name
    if feature.HasField("num_stats"):
        stats = feature.num_stats
        present = int(stats.common_stats.num_non_missing)
        return FeatureSummary(
            name=name,
            kind="INT" if feature.type == feature.INT else "FLOAT",
            count=present,
            missing=num_examples - present,
            mean=float(stats.mean),
            std_dev=float(stats.std_dev),
            min=float(stats.min),
            max=float(stats.max),
            zeros=int(stats.num_zeros),
        )
    stats = feature.string_stats
    present = int(stats.common_stats.num_non_missing)
    top = tuple((value.value, int(value.frequency)) for value in stats.top_values[:5])
    return FeatureSummary(name, "STRING", present, num_examples - present, top_values=top)


def feature_summaries(statistics: Any) -> list[FeatureSummary]:
    """Extracts per-feature numbers from TFDV statistics, in table column order."""
    dataset = statistics.datasets[0]
    summaries = {s.name: s for s in (_summary_of(f, int(dataset.num_examples)) for f in dataset.features)}
    return [summaries[name] for name in VALIDATED_COLUMNS if name in summaries]


def check_prediction_events(events: pd.DataFrame, source: str) -> LabelCheck:
    """Checks that there are prediction events and that both label classes occur.

    Args:
        events: The ``prediction_events`` table.
        source: The input directory, named in the error.

    Returns:
        Counts and warnings (a single label class is a warning, not a failure).

    Raises:
        UserError: There are no prediction events.
    """
    if events.empty:
        raise UserError(
            f"{source}: no prediction events (no patient is alive with a complete {LABEL_COLUMN} window "
            "in the prediction window); the export needs several years of Encounters"
        )
    positives = int(events[LABEL_COLUMN].sum())
    warnings = []
    if positives == 0:
        warnings.append(f"no positive {LABEL_COLUMN} labels: the model cannot learn the target")
    elif positives == len(events):
        warnings.append(f"every {LABEL_COLUMN} label is positive: the model cannot learn the target")
    return LabelCheck(len(events), positives, positives / len(events), tuple(warnings))


def write_statistics(statistics: Any, schema_path: str | os.PathLike[str], anomalies: Any, out_dir: str) -> None:
    """Writes ``stats.pb`` (binary proto), the schema used and the anomalies text proto.

    Args:
        statistics: A ``DatasetFeatureStatisticsList``.
        schema_path: The schema file that was used (copied verbatim).
        anomalies: The ``Anomalies`` proto from validation.
        out_dir: The statistics Artifact directory; created when missing.
    """
    from google.protobuf import text_format

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, STATS_FILE), "wb") as handle:
        handle.write(statistics.SerializeToString())
    shutil.copyfile(schema_path, os.path.join(out_dir, SCHEMA_FILE))
    with open(os.path.join(out_dir, ANOMALIES_FILE), "w", encoding="utf-8") as handle:
        handle.write(text_format.MessageToString(anomalies))


def anomaly_message(anomalies: list[Anomaly], report_path: str) -> str:
    """Formats the one-line failure message naming the anomalous features."""
    listed = ", ".join(f"{a.feature}: {a.short_description}" for a in anomalies)
    return f"{len(anomalies)} data anomalies in patient_features: {listed}; see {report_path}"
