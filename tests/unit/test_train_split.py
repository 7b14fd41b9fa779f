"""Unit tests of the temporal, patient-grouped split (run in both environments)."""

from __future__ import annotations

import pandas as pd
import pytest

from clinflow.errors import UserError
from clinflow.prediction_task import ENTITY_KEY, HORIZON_DAYS, LABEL_COLUMN, TIMESTAMP_COLUMN
from components.train.dataset import check_examples
from components.train.split import cutoff_time, is_eval_patient, temporal_patient_split
from components.train.synthetic import synthetic_training_set


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return check_examples(synthetic_training_set(patients=300, seed=3), "synthetic")


def test_no_patient_in_both_splits(frame: pd.DataFrame) -> None:
    split = temporal_patient_split(frame, seed=11)
    assert set(split.train[ENTITY_KEY]).isdisjoint(split.eval[ENTITY_KEY])


def test_label_windows_close_before_cutoff_and_eval_after(frame: pd.DataFrame) -> None:
    split = temporal_patient_split(frame, seed=11)
    horizon = pd.Timedelta(days=HORIZON_DAYS)
    assert (split.train[TIMESTAMP_COLUMN] + horizon).max() <= split.cutoff
    assert split.eval[TIMESTAMP_COLUMN].min() >= split.cutoff
    assert split.train[TIMESTAMP_COLUMN].max() < split.eval[TIMESTAMP_COLUMN].min()


def test_cutoff_is_an_observed_time_at_the_quantile(frame: pd.DataFrame) -> None:
    cutoff = cutoff_time(frame[TIMESTAMP_COLUMN], 0.75)
    assert cutoff in set(frame[TIMESTAMP_COLUMN])
    share_before = (frame[TIMESTAMP_COLUMN] < cutoff).mean()
    assert 0.65 < share_before <= 0.75


def test_split_is_deterministic_and_seed_dependent(frame: pd.DataFrame) -> None:
    first, second = temporal_patient_split(frame, seed=11), temporal_patient_split(frame, seed=11)
    pd.testing.assert_frame_equal(first.train, second.train)
    pd.testing.assert_frame_equal(first.eval, second.eval)
    other = temporal_patient_split(frame, seed=12)
    assert set(other.eval[ENTITY_KEY]) != set(first.eval[ENTITY_KEY])


def test_split_ignores_input_row_order(frame: pd.DataFrame) -> None:
    shuffled = frame.sample(frac=1.0, random_state=0)
    a, b = temporal_patient_split(frame, seed=5), temporal_patient_split(shuffled, seed=5)
    pd.testing.assert_frame_equal(a.eval, b.eval)
    pd.testing.assert_frame_equal(a.train, b.train)


def test_about_a_quarter_of_patients_are_held_out() -> None:
    chosen = sum(is_eval_patient(f"p{i}", seed=1, fraction=0.25) for i in range(4000))
    assert 900 < chosen < 1100


def test_summary_counts_match_the_frames(frame: pd.DataFrame) -> None:
    split = temporal_patient_split(frame, seed=11)
    for name, part in (("train", split.train), ("eval", split.eval)):
        assert split.summary[name]["rows"] == len(part)
        assert split.summary[name]["positives"] == int(part[LABEL_COLUMN].sum())
        assert split.summary[name]["patients"] == part[ENTITY_KEY].nunique()
    total = split.summary["train"]["rows"] + split.summary["eval"]["rows"] + split.summary["set_aside_rows"]
    assert total == len(frame)


def test_single_class_split_is_a_user_error(frame: pd.DataFrame) -> None:
    negative = frame.assign(**{LABEL_COLUMN: 0})
    with pytest.raises(UserError, match=r"train split has only negative labels.*more patients"):
        temporal_patient_split(negative, seed=11, source="training_set.parquet")


def test_empty_eval_split_is_a_user_error(frame: pd.DataFrame) -> None:
    one_patient = frame[frame[ENTITY_KEY] == frame[ENTITY_KEY].iloc[0]]
    with pytest.raises(UserError, match="split is empty; provide more patients"):
        temporal_patient_split(one_patient, seed=11)


def test_check_examples_rejects_missing_columns_and_bad_labels(frame: pd.DataFrame) -> None:
    with pytest.raises(UserError, match=r"t\.parquet: missing column.*hba1c_last"):
        check_examples(frame.drop(columns=["hba1c_last"]), "t.parquet")
    with pytest.raises(UserError, match="must be 0/1, found 2"):
        check_examples(frame.assign(**{LABEL_COLUMN: 2}), "t.parquet")
    with pytest.raises(UserError, match=r"null values in column.*bmi_last"):
        check_examples(frame.assign(bmi_last=None), "t.parquet")
