"""Contract test of ``components.features.main`` on small hand-built tables (real Feast, SQLite)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from feast import FeatureStore

from clinflow.errors import run_cli
from clinflow.prediction_task import FEATURE_NAMES, FEATURES
from components.features.main import main
from components.features.store import DEFAULT_FEATURE_REPO

SNAPSHOT_MONTHS = pd.date_range("2020-01-01", "2021-12-01", freq="MS", tz="UTC")
PATIENTS = [f"pt{index:02d}" for index in range(12)]
CONTRACT_COLUMNS = ["patient_id", "event_timestamp", "acute_encounter_90d", "sex", *FEATURE_NAMES]


def snapshot_table() -> pd.DataFrame:
    """Monthly snapshots; patient i starts i months in, and pt01 stops after 2020-06."""
    rows = []
    for index, patient in enumerate(PATIENTS):
        for month, when in enumerate(SNAPSHOT_MONTHS):
            if month < index or (patient == "pt01" and when > pd.Timestamp("2020-06-01", tz="UTC")):
                continue
            row: dict[str, object] = {"patient_id": patient, "event_timestamp": when}
            for position, feature in enumerate(FEATURES):
                value = index * 1000 + month * 10 + position
                row[feature.name] = int(value) if feature.dtype == "int" else value / 4
            row["sex"] = ("female", "male", "other")[index % 3]
            rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.astype({f.name: "int64" if f.dtype == "int" else "float64" for f in FEATURES})


def event_table() -> pd.DataFrame:
    """Quarterly predictions mid-month: some precede a patient's first snapshot."""
    times = pd.date_range("2020-02-15", "2021-11-15", freq="3MS", tz="UTC") + pd.Timedelta(days=14)
    rows = [
        {"patient_id": patient, "event_timestamp": when, "acute_encounter_90d": (index + i) % 4 == 0}
        for index, patient in enumerate(PATIENTS)
        for i, when in enumerate(times)
    ]
    frame = pd.DataFrame(rows)
    return frame.astype({"acute_encounter_90d": "int64"})


def expected_training_set(snapshots: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """The point-in-time join computed by brute force, independently of Feast and the stage."""
    rows = []
    for event in events.itertuples(index=False):
        mine = snapshots[snapshots.patient_id == event.patient_id]
        earlier = mine[mine.event_timestamp <= event.event_timestamp]
        if earlier.empty or earlier.event_timestamp.max() < event.event_timestamp - pd.Timedelta(days=400):
            continue
        latest = earlier.loc[earlier.event_timestamp.idxmax()]
        rows.append({**event._asdict(), "sex": latest["sex"], **{n: latest[n] for n in FEATURE_NAMES}})
    frame = pd.DataFrame(rows, columns=CONTRACT_COLUMNS)
    frame = frame.astype({f.name: "int64" if f.dtype == "int" else "float64" for f in FEATURES})
    return frame.sort_values(["event_timestamp", "patient_id"]).reset_index(drop=True)


@pytest.fixture()
def tables(tmp_path: Path) -> Path:
    directory = tmp_path / "tables"
    directory.mkdir()
    snapshot_table().to_parquet(directory / "patient_features.parquet", index=False)
    event_table().to_parquet(directory / "prediction_events.parquet", index=False)
    return directory


def run_stage(tmp_path: Path, tables: Path, *extra: str) -> int:
    return main(
        [
            "--tables",
            str(tables),
            "--training-set",
            str(tmp_path / "out" / "training_set"),
            "--feature-store",
            str(tmp_path / "out" / "feature_store"),
            "--metrics",
            str(tmp_path / "out" / "metrics.json"),
            "--executor-output",
            str(tmp_path / "out" / "executor_output.json"),
            *extra,
        ]
    )


def test_main_builds_training_set_and_online_store(
    tmp_path: Path, tables: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_stage(tmp_path, tables) == 0
    out = tmp_path / "out"
    training = pd.read_parquet(out / "training_set" / "training_set.parquet")
    assert list(training.columns) == CONTRACT_COLUMNS
    expected = expected_training_set(snapshot_table(), event_table())
    pd.testing.assert_frame_equal(training, expected)
    with_features = len(expected)
    without = len(event_table()) - with_features
    positives = int(expected["acute_encounter_90d"].sum())

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["entity_rows_in"] == len(event_table())
    assert metrics["training_rows_out"] == with_features
    assert metrics["rows_without_features"] == without > 0
    assert metrics["rows_without_features_latest_snapshot_older_than_ttl"] > 0  # pt01 in late 2021
    assert metrics["rows_without_features_before_first_snapshot"] > 0
    assert metrics["positives"] == positives
    assert metrics["online_rows_materialized"] == 11  # pt01 is stale at the latest snapshot

    executor = json.loads((out / "executor_output.json").read_text())
    assert executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]["training_rows_out"] == with_features
    quarantine = pd.read_parquet(out / "feature_store" / "quarantine" / "rows_without_features.parquet")
    assert len(quarantine) == without
    summary = capsys.readouterr().out
    assert f"training set: {with_features} rows" in summary
    assert f"set aside without features: {without}" in summary

    # The feature store artifact is self-contained: a copy elsewhere serves the same online values.
    moved = tmp_path / "moved_store"
    shutil.copytree(out / "feature_store", moved)
    store = FeatureStore(repo_path=str(moved))
    online = store.get_online_features(
        features=store.get_feature_service("patient_risk_v1"), entity_rows=[{"patient_id": "pt03"}]
    ).to_dict()
    assert online["encounters_365d"] == [3000 + 23 * 10 + 2]  # pt03's December 2021 snapshot
    assert online["sex"] == ["female"]


def test_rerun_into_the_same_directories_is_idempotent(tmp_path: Path, tables: Path) -> None:
    assert run_stage(tmp_path, tables) == 0
    first = (tmp_path / "out" / "metrics.json").read_text()
    assert run_stage(tmp_path, tables) == 0
    assert (tmp_path / "out" / "metrics.json").read_text() == first


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "prediction_events.parquet").unlink(), "prediction_events.parquet: not found"),
        (
            lambda d: event_table().drop(columns=["event_timestamp"]).to_parquet(d / "prediction_events.parquet"),
            "missing column(s) event_timestamp",
        ),
        (lambda d: event_table().iloc[0:0].to_parquet(d / "prediction_events.parquet"), "has no rows"),
        (lambda d: (d / "patient_features.parquet").write_text("not parquet"), "not a readable parquet"),
    ],
)
def test_bad_input_is_one_error_line(
    tmp_path: Path, tables: Path, capsys: pytest.CaptureFixture[str], damage, message: str
) -> None:
    damage(tables)
    argv = [
        "--tables",
        str(tables),
        "--training-set",
        str(tmp_path / "ts"),
        "--feature-store",
        str(tmp_path / "fs"),
        "--metrics",
        str(tmp_path / "metrics.json"),
    ]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "ts").exists()


def test_missing_tables_directory_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run_cli(
            main, ["--tables", str(tmp_path / "nope"), "--training-set", "a", "--feature-store", "b", "--metrics", "c"]
        )
        == 2
    )
    assert "tables directory not found" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def redis_url(tmp_path: Path):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis", reason="the redis Python client (feast[redis]) is not installed")
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not start")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_redis_online_store(tmp_path: Path, tables: Path, redis_url: str) -> None:
    repo = tmp_path / "redis_repo"
    shutil.copytree(DEFAULT_FEATURE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__", "data"))
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    config["online_store"] = {"type": "redis", "connection_string": redis_url}
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
    assert run_stage(tmp_path, tables, "--feature-repo", str(repo)) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["online_rows_materialized"] == 11
    assert not os.path.exists(tmp_path / "out" / "feature_store" / "data" / "online_store.db")
