"""Feast feature repo and features-stage logic, on real Feast with a SQLite online store."""

from __future__ import annotations

import shutil
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureService, FeatureStore, FeatureView, FileSource
from feast.types import Float64, Int64, String

from clinflow.errors import UserError
from clinflow.prediction_task import ENTITY_KEY, FEATURE_NAMES, FEATURES, GROUP_COLUMN, LABEL_COLUMN
from components.features import online
from components.features.inputs import load_patient_features, load_prediction_events
from components.features.store import (
    DEFAULT_FEATURE_REPO,
    FEATURE_SERVICE,
    build_feature_store,
    copy_feature_repo,
    load_definitions,
)
from components.features.training_set import (
    OUTPUT_COLUMNS,
    REASON_BEFORE_FIRST_SNAPSHOT,
    REASON_OUTSIDE_TTL,
    REASON_UNKNOWN_PATIENT,
    TrainingSet,
    build_training_set,
)

TTL = timedelta(days=400)


def feature_value(version: int, index: int, dtype: str) -> float | int:
    """A value unique to (snapshot version, feature), so a wrong snapshot is visible."""
    return version * 100 + index if dtype == "int" else version + index / 8


def snapshot(patient: str, when: str, version: int, sex: str) -> dict[str, object]:
    row: dict[str, object] = {"patient_id": patient, "event_timestamp": pd.Timestamp(when, tz="UTC")}
    for index, feature in enumerate(FEATURES):
        row[feature.name] = feature_value(version, index, feature.dtype)
    row["sex"] = sex
    return row


def snapshots_frame() -> pd.DataFrame:
    rows = [
        snapshot("p1", "2021-01-01", 1, "female"),
        snapshot("p1", "2021-02-01", 2, "female"),
        snapshot("p1", "2021-03-01", 3, "female"),
        snapshot("p2", "2020-01-01", 5, "male"),
        snapshot("p3", "2021-03-01", 7, "other"),
    ]
    frame = pd.DataFrame(rows)
    return frame.astype({f.name: "int64" if f.dtype == "int" else "float64" for f in FEATURES})


# (patient, prediction time, label, expected snapshot version or quarantine reason)
EVENTS: list[tuple[str, str, int, int | str]] = [
    ("p1", "2021-01-20 08:00", 1, 1),  # between the Jan and Feb snapshots: January's values
    ("p1", "2021-02-15 12:30", 0, 2),
    ("p1", "2020-12-15 09:00", 0, REASON_BEFORE_FIRST_SNAPSHOT),
    ("p2", "2021-03-10 10:00", 1, REASON_OUTSIDE_TTL),  # 434 days after its only snapshot
    ("p2", "2020-06-01 10:00", 0, 5),  # 152 days after it: inside the TTL
    ("p4", "2021-02-10 10:00", 1, REASON_UNKNOWN_PATIENT),
    ("p3", "2021-06-01 10:00", 1, 7),
]


def events_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": [e[0] for e in EVENTS],
            "event_timestamp": pd.to_datetime([e[1] for e in EVENTS], utc=True),
            "acute_encounter_90d": pd.Series([e[2] for e in EVENTS], dtype="int64"),
        }
    )


def write_tables(directory: Path, snapshots: pd.DataFrame, events: pd.DataFrame) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    snapshots.to_parquet(directory / "patient_features.parquet", index=False)
    events.to_parquet(directory / "prediction_events.parquet", index=False)
    return directory


@pytest.fixture(scope="module")
def tables_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tables(tmp_path_factory.mktemp("tables"), snapshots_frame(), events_frame())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tables_dir: Path) -> FeatureStore:
    store_dir = tmp_path_factory.mktemp("store")
    return build_feature_store(DEFAULT_FEATURE_REPO, store_dir, tables_dir / "patient_features.parquet")


@pytest.fixture(scope="module")
def training_set(store: FeatureStore, tables_dir: Path) -> TrainingSet:
    return build_training_set(
        store,
        store.get_feature_service(FEATURE_SERVICE),
        load_prediction_events(tables_dir / "prediction_events.parquet"),
        load_patient_features(tables_dir / "patient_features.parquet"),
        TTL,
    )


def test_feast_apply_cli_in_temp_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs the real ``feast apply`` command (in-process: a second Feast import costs 10-25 s)."""
    from click.testing import CliRunner
    from feast.cli.cli import cli

    repo = tmp_path / "feature_repo"
    shutil.copytree(DEFAULT_FEATURE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__", "data"))
    write_tables(repo / "data", snapshots_frame(), events_frame())
    # `feast apply` chdirs into the repo, appends it to sys.path and imports its files as top-level modules.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    try:
        result = CliRunner().invoke(cli, ["--chdir", str(repo), "apply"])
    finally:
        sys.modules.pop("patient_risk", None)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Created feature service patient_risk_v1" in result.output
    applied = FeatureStore(repo_path=str(repo))
    assert applied.project == "clinflow"
    view = applied.get_feature_view("patient_history")
    assert [f.name for f in view.features] == [*FEATURE_NAMES, GROUP_COLUMN]
    assert view.ttl == TTL
    assert view.entities == ["patient"]
    assert applied.get_entity("patient").join_key == ENTITY_KEY
    service = applied.get_feature_service("patient_risk_v1")
    assert [p.name for p in service.feature_view_projections] == ["patient_history"]
    assert (repo / "data" / "registry.db").is_file()
    assert (repo / "data" / "online_store.db").is_file()


def test_definitions_are_built_from_prediction_task() -> None:
    objects = load_definitions(DEFAULT_FEATURE_REPO)
    views = [o for o in objects if isinstance(o, FeatureView)]
    assert len(views) == 1
    types = {field.name: field.dtype for field in views[0].schema}
    for feature in FEATURES:
        assert types[feature.name] == (Int64 if feature.dtype == "int" else Float64), feature.name
    assert types[GROUP_COLUMN] == String
    sources = [o for o in objects if isinstance(o, FileSource)]
    assert [s.path for s in sources] == ["data/patient_features.parquet"]
    assert sources[0].timestamp_field == "event_timestamp"
    services = [o.name for o in objects if isinstance(o, FeatureService)]
    assert services == ["patient_risk_v1"]


def test_point_in_time_values_are_from_the_latest_earlier_snapshot(training_set: TrainingSet) -> None:
    rows = training_set.rows
    assert list(rows.columns) == OUTPUT_COLUMNS
    expected = sorted(
        (pd.Timestamp(when, tz="UTC"), patient, label, version)
        for patient, when, label, version in EVENTS
        if isinstance(version, int)
    )
    assert len(rows) == len(expected) == 4
    for (_, row), (when, patient, label, version) in zip(rows.iterrows(), expected, strict=True):
        assert (row[ENTITY_KEY], row["event_timestamp"], row[LABEL_COLUMN]) == (patient, when, label)
        for index, feature in enumerate(FEATURES):
            assert row[feature.name] == feature_value(version, index, feature.dtype), (patient, feature.name)


def test_group_column_and_dtypes_follow_the_contract(training_set: TrainingSet) -> None:
    rows = training_set.rows.sort_values("event_timestamp")
    assert list(rows[GROUP_COLUMN]) == ["male", "female", "female", "other"]
    for feature in FEATURES:
        assert str(rows[feature.name].dtype) == ("int64" if feature.dtype == "int" else "float64")
    assert str(rows["event_timestamp"].dtype) == "datetime64[ns, UTC]"


def test_events_without_features_are_quarantined_with_reasons(training_set: TrainingSet) -> None:
    quarantined = {(row.patient_id, row.event_timestamp): row.reason for row in training_set.quarantined.itertuples()}
    expected = {
        (patient, pd.Timestamp(when, tz="UTC")): reason
        for patient, when, _, reason in EVENTS
        if isinstance(reason, str)
    }
    assert quarantined == expected
    assert training_set.reason_counts() == {
        REASON_UNKNOWN_PATIENT: 1,
        REASON_BEFORE_FIRST_SNAPSHOT: 1,
        REASON_OUTSIDE_TTL: 1,
    }
    assert len(training_set.rows) + len(training_set.quarantined) == len(EVENTS)


def test_materialized_online_store_serves_the_latest_snapshot(store: FeatureStore) -> None:
    snapshots = load_patient_features(Path(store.repo_path) / "data" / "patient_features.parquet")
    window = online.materialization_window(snapshots, TTL)
    assert window.end == pd.Timestamp("2021-03-01", tz="UTC")
    online.materialize(store, window)
    expected = online.expected_online_rows(snapshots, window)
    assert list(expected.index) == ["p1", "p3"]  # p2's only snapshot is older than the TTL window
    service = store.get_feature_service(FEATURE_SERVICE)
    assert online.verify_online(store, service, expected) == 2
    read = online.read_online(store, service, ["p1", "p2", "p3"])
    for index, feature in enumerate(FEATURES):
        assert read.loc["p1", feature.name] == feature_value(3, index, feature.dtype)
        assert read.loc["p3", feature.name] == feature_value(7, index, feature.dtype)
    assert read.loc["p2"].isna().all()

    tampered = expected.copy()
    tampered.loc["p3", "bmi_last"] = -1.0
    with pytest.raises(UserError, match="p3 bmi_last"):
        online.verify_online(store, service, tampered)
    absent = pd.concat([expected, expected.loc[["p1"]].rename(index={"p1": "p2"})])
    with pytest.raises(UserError, match="1 of 3 materialized patients absent, first p2"):
        online.verify_online(store, service, absent)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["hba1c_last"]), "missing column.*hba1c_last"),
        (lambda f: f.iloc[0:0], "no rows"),
        (lambda f: f.assign(bmi_last=f["bmi_last"].where(f.index != 2)), "row 2: column bmi_last is null"),
        (lambda f: f.astype({"encounters_365d": "float64"}), "encounters_365d has type float64"),
        (lambda f: pd.concat([f, f.iloc[[1]]]), "duplicate"),
    ],
)
def test_bad_patient_features_are_user_errors(tmp_path: Path, change, message: str) -> None:
    path = tmp_path / "patient_features.parquet"
    change(snapshots_frame()).to_parquet(path, index=False)
    with pytest.raises(UserError, match=message):
        load_patient_features(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.drop(columns=["acute_encounter_90d"]), "missing column.*acute_encounter_90d"),
        (lambda e: e.iloc[0:0], "no rows"),
        (lambda e: e.assign(acute_encounter_90d=[0, 1, 2, 0, 1, 0, 1]), "row 2: acute_encounter_90d is 2"),
        (lambda e: e.assign(event_timestamp=e["event_timestamp"].astype(str)), "expected a UTC timestamp"),
        (lambda e: e.assign(patient_id=range(len(e))), "patient_id has type int64"),
    ],
)
def test_bad_prediction_events_are_user_errors(tmp_path: Path, change, message: str) -> None:
    path = tmp_path / "prediction_events.parquet"
    change(events_frame()).to_parquet(path, index=False)
    with pytest.raises(UserError, match=message):
        load_prediction_events(path)


def test_missing_table_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"prediction_events\.parquet: not found"):
        load_prediction_events(tmp_path / "prediction_events.parquet")


def test_feature_repo_copy_rules(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no feature_store\.yaml"):
        copy_feature_repo(tmp_path, tmp_path / "store")
    with pytest.raises(UserError, match="must differ"):
        copy_feature_repo(DEFAULT_FEATURE_REPO, DEFAULT_FEATURE_REPO)
    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_FEATURE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "data").mkdir(exist_ok=True)
    (repo / "data" / "registry.db").write_bytes(b"stale")
    store_dir = tmp_path / "store"
    (store_dir / "data").mkdir(parents=True)
    (store_dir / "data" / "online_store.db").write_bytes(b"stale")
    copy_feature_repo(repo, store_dir)
    assert sorted(p.name for p in store_dir.iterdir()) == ["feature_store.yaml", "patient_risk.py"]
