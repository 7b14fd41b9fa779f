"""Contract test of ``components.train.main`` (tfx env): real TFX run on a small synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from clinflow.errors import run_cli
from clinflow.prediction_task import ENTITY_KEY, FEATURE_NAMES, LABEL_COLUMN, TIMESTAMP_COLUMN
from components.train import main as train_main
from components.train.synthetic import synthetic_training_set

pytestmark = pytest.mark.tfx_env


def _flags(tmp_path: Path, training_set: Path, epochs: int = 3) -> list[str]:
    return [
        "--training-set", str(training_set),
        "--model", str(tmp_path / "model"),
        "--eval-examples", str(tmp_path / "eval_examples"),
        "--metrics", str(tmp_path / "metrics.json"),
        "--executor-output", str(tmp_path / "executor_output.json"),
        "--seed", "5",
        "--epochs", str(epochs),
    ]  # fmt: skip


def _write_training_set(directory: Path, frame: pd.DataFrame) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(directory / "training_set.parquet", index=False)
    return directory


def test_main_produces_model_eval_examples_and_metrics(tmp_path: Path) -> None:
    pytest.importorskip("tfx")
    source = synthetic_training_set(patients=200, seed=8, signal=1.5)
    training_set = _write_training_set(tmp_path / "training_set", source)

    assert train_main.main(_flags(tmp_path, training_set)) == 0

    versions = [p for p in (tmp_path / "model").iterdir() if p.is_dir()]
    assert len(versions) == 1 and versions[0].name.isdigit()
    assert (versions[0] / "saved_model.pb").is_file()
    meta = json.loads((tmp_path / "model" / "clinflow_model.json").read_text())
    assert [f["name"] for f in meta["features"]] == list(FEATURE_NAMES)
    assert meta["label"] == LABEL_COLUMN and meta["seed"] == 5 and meta["epochs"] == 3
    assert meta["model_version"] == versions[0].name
    assert meta["versions"]["tfx"] == "1.16.0" and meta["versions"]["tensorflow"].startswith("2.16")
    assert len(meta["training_set_sha256"]) == 64

    held_out = pd.read_parquet(tmp_path / "eval_examples" / "eval.parquet")
    assert list(held_out.columns) == list(source.columns)
    assert len(held_out) == meta["split"]["eval"]["rows"]
    assert pd.Timestamp(meta["split"]["cutoff"]) <= held_out[TIMESTAMP_COLUMN].min()
    train_patients = meta["split"]["train"]["patients"] + meta["split"]["eval"]["patients"]
    assert train_patients <= source[ENTITY_KEY].nunique()

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["eval_rows"] == len(held_out)
    assert metrics["eval_positives"] == held_out[LABEL_COLUMN].sum()
    assert metrics["eval_auroc"] > 0.6 and metrics["final_train_loss"] > 0
    executor = json.loads((tmp_path / "executor_output.json").read_text())
    assert executor["artifacts"]["metrics"]["artifacts"][0]["metadata"] == metrics


def test_missing_training_set_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(train_main.main, _flags(tmp_path, tmp_path / "nowhere")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "training_set.parquet: not found" in err and "\n" not in err


def test_single_class_training_set_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = synthetic_training_set(patients=60, seed=1).assign(**{LABEL_COLUMN: 0})
    training_set = _write_training_set(tmp_path / "ts", frame)
    assert run_cli(train_main.main, _flags(tmp_path, training_set)) == 2
    err = capsys.readouterr().err.strip()
    assert "split has only negative labels" in err and "more patients" in err
    assert not (tmp_path / "model").exists()


def test_bad_epochs_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(train_main.main, _flags(tmp_path, tmp_path, epochs=0)) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
