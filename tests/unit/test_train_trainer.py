"""Runs the real TFX pipeline (CsvExampleGen -> ... -> Pusher) on a small synthetic set (tfx env)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinflow.prediction_task import FEATURE_NAMES, LABEL_COLUMN
from components.train.dataset import check_examples
from components.train.main import write_split_csvs
from components.train.split import temporal_patient_split
from components.train.synthetic import synthetic_training_set
from components.train.trainer_module import auroc, log_loss

pytestmark = pytest.mark.tfx_env

EPOCHS = 4


def test_auroc_and_log_loss_on_known_values() -> None:
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auroc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert auroc(np.array([1, 1]), np.array([0.2, 0.3])) is None
    assert log_loss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))


def _train(tmp_path: Path, name: str, split, seed: int) -> tuple[Path, dict]:
    pytest.importorskip("tfx")
    from components.train.tfx_pipeline import run_pipeline

    work = tmp_path / name
    write_split_csvs(split, str(work / "data"))
    config = {
        "features": list(FEATURE_NAMES),
        "label": LABEL_COLUMN,
        "seed": seed,
        "epochs": EPOCHS,
        "batch_size": 128,
        "learning_rate": 0.01,
    }
    run = run_pipeline(str(work / "data"), str(work), str(work / "model"), config)
    return Path(run.serving_dir), run.history


def _predict(saved_model: Path, frame: pd.DataFrame) -> np.ndarray:
    import tensorflow as tf

    signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    inputs = {name: tf.constant(frame[name].to_numpy(np.float32)) for name in FEATURE_NAMES}
    return signature(**inputs)["probability"].numpy()


@pytest.fixture(scope="module")
def split():
    frame = check_examples(synthetic_training_set(patients=240, seed=21, signal=1.5), "synthetic")
    return temporal_patient_split(frame, seed=3)


def test_pipeline_learns_and_is_reproducible(tmp_path: Path, split) -> None:
    first_dir, history = _train(tmp_path, "a", split, seed=7)
    assert (first_dir / "saved_model.pb").is_file()
    assert first_dir.parent == tmp_path / "a" / "model" and first_dir.name.isdigit()
    assert len(history["history"]["loss"]) == EPOCHS
    assert history["train_rows"] == len(split.train) and history["eval_rows"] == len(split.eval)

    import tensorflow as tf

    signature = tf.saved_model.load(str(first_dir)).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert sorted(inputs) == sorted(FEATURE_NAMES)
    assert all(spec.dtype == tf.float32 and spec.shape.as_list() == [None] for spec in inputs.values())
    outputs = signature.structured_outputs
    assert list(outputs) == ["probability"] and outputs["probability"].shape.as_list() == [None]

    first = _predict(first_dir, split.eval)
    held_out_auroc = auroc(split.eval[LABEL_COLUMN].to_numpy(), first)
    assert held_out_auroc > 0.65, held_out_auroc
    assert held_out_auroc == pytest.approx(history["history"]["val_auroc"][-1], abs=1e-6)

    second_dir, _ = _train(tmp_path, "b", split, seed=7)
    np.testing.assert_array_equal(first, _predict(second_dir, split.eval))
