"""Train stage: split the training set, run the TFX pipeline, export the model and the held-out rows.

``python -m components.train.main --training-set DIR --model DIR --eval-examples DIR
--metrics FILE --executor-output FILE --seed INT --epochs INT`` (see docs/stages.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from clinflow.errors import UserError, run_cli
from clinflow.kfp_outputs import scalar_metrics, write_executor_output
from clinflow.prediction_task import FEATURE_NAMES, FEATURES, LABEL_COLUMN, TARGET_DESCRIPTION
from components.train.dataset import EVAL_EXAMPLES_FILE, TRAINING_SET_FILE, file_sha256, parquet_in, read_examples
from components.train.split import Split, temporal_patient_split

MODEL_METADATA_FILE = "clinflow_model.json"
BATCH_SIZE = 256
LEARNING_RATE = 0.01


def build_parser() -> argparse.ArgumentParser:
    """Builds the command-line parser.

    Returns:
        The parser for the train stage's flags.
    """
    parser = argparse.ArgumentParser(prog="python -m components.train.main", description=__doc__)
    parser.add_argument("--training-set", required=True, help=f"Dataset directory holding {TRAINING_SET_FILE}")
    parser.add_argument("--model", required=True, help="Model output directory (<dir>/<version>/saved_model.pb)")
    parser.add_argument("--eval-examples", required=True, help=f"Dataset output directory for {EVAL_EXAMPLES_FILE}")
    parser.add_argument("--metrics", required=True, help="Metrics output file (JSON)")
    parser.add_argument("--executor-output", default=None, help="KFP executor output file ({{$.outputs.output_file}})")
    parser.add_argument("--seed", type=int, default=42, help="Seed for the split and for training")
    parser.add_argument("--epochs", type=int, default=10, help="Training epochs")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Rejects unusable flag values.

    Args:
        args: Parsed flags.

    Raises:
        UserError: On a negative seed, fewer than one epoch, or a model directory that already holds a model.
    """
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    if os.path.isdir(args.model) and any(
        os.path.isfile(os.path.join(args.model, entry, "saved_model.pb")) for entry in os.listdir(args.model)
    ):
        raise UserError(f"{args.model}: already holds a SavedModel version; pass an empty model directory")


def write_split_csvs(split: Split, data_root: str) -> None:
    """Writes ``train/train.csv`` and ``eval/eval.csv`` (features and label only) for CsvExampleGen.

    Args:
        split: The train/eval split.
        data_root: Directory to write into.
    """
    columns = [*FEATURE_NAMES, LABEL_COLUMN]
    for name, frame in (("train", split.train), ("eval", split.eval)):
        os.makedirs(os.path.join(data_root, name), exist_ok=True)
        frame[columns].to_csv(os.path.join(data_root, name, f"{name}.csv"), index=False)


def training_metrics(split: Split, history: dict[str, Any], seconds: float) -> dict[str, float]:
    """Collects the numbers shown for this step.

    Args:
        split: The split (row and positive counts).
        history: ``training_history.json`` from the Trainer.
        seconds: Wall time of the TFX pipeline run (including importing TFX).

    Returns:
        Metric name to value.
    """
    epochs = history["history"]
    values: dict[str, float] = {"train_seconds": round(seconds, 2)}
    for name in ("train", "eval"):
        counts = split.summary[name]
        values[f"{name}_rows"] = counts["rows"]
        values[f"{name}_positives"] = counts["positives"]
        values[f"{name}_patients"] = counts["patients"]
    values["final_train_loss"] = epochs["loss"][-1]
    values["final_train_auroc"] = epochs["auroc"][-1]
    values["eval_loss"] = epochs["val_loss"][-1]
    values["eval_auroc"] = epochs["val_auroc"][-1]
    return scalar_metrics(values)


def model_metadata(
    args: argparse.Namespace, split: Split, version: str, training_set_sha256: str, versions: dict[str, str]
) -> dict[str, Any]:
    """Builds ``clinflow_model.json``: what the model expects and how it was made.

    Args:
        args: Parsed flags (seed, epochs).
        split: The split used.
        version: The pushed model version.
        training_set_sha256: Digest of the input parquet file.
        versions: Library versions that trained the model.

    Returns:
        The JSON document.
    """
    return {
        "model_version": version,
        "features": [
            {"name": f.name, "dtype": f.dtype, "default": f.default, "description": f.description} for f in FEATURES
        ],
        "label": LABEL_COLUMN,
        "target": TARGET_DESCRIPTION,
        "signature": {
            "name": "serving_default",
            "inputs": {name: {"dtype": "float32", "shape": [None]} for name in FEATURE_NAMES},
            "outputs": {"probability": {"dtype": "float32", "shape": [None]}},
        },
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "split": split.summary,
        "training_set_sha256": training_set_sha256,
        "versions": versions,
    }


def _write_json(path: str, document: dict[str, Any]) -> None:
    """Writes a JSON file, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)


def _log(message: str) -> None:
    """Prints one progress line on stderr."""
    print(f"[train] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the train stage.

    Args:
        argv: Flags without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        The exit status (0).
    """
    args = build_parser().parse_args(argv)
    check_arguments(args)
    source = parquet_in(args.training_set, TRAINING_SET_FILE)
    frame = read_examples(source)
    split = temporal_patient_split(frame, args.seed, source=TRAINING_SET_FILE)
    counts = {
        name: f"{split.summary[name]['rows']} rows ({split.summary[name]['positives']} positive)"
        for name in ("train", "eval")
    }
    _log(
        f"split at {split.summary['cutoff']}: train {counts['train']}, eval {counts['eval']}, "
        f"{split.summary['set_aside_rows']} set aside (label window open at the cutoff or other split)"
    )
    from components.train.tfx_pipeline import pipeline_versions, run_pipeline

    os.makedirs(args.model, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix="clinflow-train-")
    started = time.monotonic()
    try:
        write_split_csvs(split, os.path.join(work_dir, "data"))
        config = {
            "features": list(FEATURE_NAMES),
            "label": LABEL_COLUMN,
            "seed": args.seed,
            "epochs": args.epochs,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
        }
        run = run_pipeline(os.path.join(work_dir, "data"), work_dir, os.path.abspath(args.model), config)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    seconds = time.monotonic() - started
    metadata = model_metadata(args, split, run.version, file_sha256(source), pipeline_versions())
    _write_json(os.path.join(args.model, MODEL_METADATA_FILE), metadata)
    os.makedirs(args.eval_examples, exist_ok=True)
    eval_path = os.path.join(args.eval_examples, EVAL_EXAMPLES_FILE)
    split.eval.to_parquet(eval_path, index=False)
    metrics = training_metrics(split, run.history, seconds)
    _write_json(args.metrics, metrics)
    write_executor_output(args.executor_output, {"metrics": metrics})
    _log(
        f"done in {seconds:.0f}s: {len(frame)} rows in, model {run.version} at {run.serving_dir}, "
        f"eval AUROC {metrics['eval_auroc']:.3f} (Keras, {args.epochs} epochs), "
        f"{len(split.eval)} held-out rows in {eval_path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
