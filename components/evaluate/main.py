"""Evaluate stage: score the held-out rows with the SavedModel; calibration, fairness, gates.

``python -m components.evaluate.main --model DIR --eval-examples DIR --metrics FILE
--classification-metrics FILE --report FILE --evaluation DIR --executor-output FILE``
(see docs/stages.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from clinflow.errors import UserError, run_cli
from clinflow.kfp_outputs import classification_metrics, scalar_metrics, write_executor_output
from components.evaluate.evaluation import evaluate_predictions
from components.evaluate.model_io import LoadedModel, load_model, predict
from components.evaluate.report import render_report
from components.train.dataset import EVAL_EXAMPLES_FILE, file_sha256, parquet_in, read_examples

EVALUATION_FILE = "evaluation.json"


def build_parser() -> argparse.ArgumentParser:
    """Builds the command-line parser.

    Returns:
        The parser for the evaluate stage's flags.
    """
    parser = argparse.ArgumentParser(prog="python -m components.evaluate.main", description=__doc__)
    parser.add_argument("--model", required=True, help="Model directory from the train stage (<dir>/<version>/)")
    parser.add_argument("--eval-examples", required=True, help=f"Dataset directory holding {EVAL_EXAMPLES_FILE}")
    parser.add_argument("--metrics", required=True, help="Metrics output file (JSON)")
    parser.add_argument("--classification-metrics", required=True, help="ClassificationMetrics output file (JSON)")
    parser.add_argument("--report", required=True, help="HTML report output file")
    parser.add_argument("--evaluation", required=True, help=f"Artifact output directory for {EVALUATION_FILE}")
    parser.add_argument("--executor-output", default=None, help="KFP executor output file ({{$.outputs.output_file}})")
    return parser


def model_summary(model: LoadedModel) -> dict[str, Any]:
    """What the evaluation records about the model.

    Args:
        model: The loaded model.

    Returns:
        Path, version, features, target, seed and the versions that trained it.
    """
    import tensorflow as tf

    meta = model.metadata
    return {
        "path": model.path,
        "version": model.version,
        "features": list(model.features),
        "target": meta.get("target"),
        "seed": meta.get("seed"),
        "trained_with": meta.get("versions"),
        "training_set_sha256": meta.get("training_set_sha256"),
        "evaluated_with_tensorflow": tf.__version__,
    }


def scalar_values(evaluation: dict[str, Any]) -> dict[str, float | None]:
    """The numbers for the Metrics artifact (None where not computable).

    Args:
        evaluation: The output of ``evaluate_predictions``.

    Returns:
        Metric name to number or None.
    """
    values: dict[str, float | None] = dict(evaluation["metrics"])
    values.update({f"{name}_at_threshold": value for name, value in evaluation["rates"].items()})
    values["gates_passed"] = sum(gate["passed"] for gate in evaluation["gates"])
    values["gates_total"] = len(evaluation["gates"])
    values["passed"] = int(evaluation["passed"])
    return values


def _write(path: str, text: str) -> None:
    """Writes a text file, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _nulls(value: Any) -> Any:
    """Replaces NaN/inf with None, recursively (they are not valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _nulls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulls(v) for v in value]
    return value


def _json(document: Any) -> str:
    """Serialises to JSON with NaN/inf as null."""
    return json.dumps(_nulls(document), indent=2, sort_keys=True)


def _log(message: str) -> None:
    """Prints one progress line on stderr."""
    print(f"[evaluate] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the evaluate stage.

    Args:
        argv: Flags without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        The exit status (0, also when gates fail: ``passed`` carries the decision).
    """
    args = build_parser().parse_args(argv)
    examples_path = parquet_in(args.eval_examples, EVAL_EXAMPLES_FILE)
    frame = read_examples(examples_path)
    model = load_model(args.model)
    _log(f"loaded {model.path} (version {model.version or '-'}); scoring {len(frame)} held-out rows")
    missing = [name for name in model.features if name not in frame.columns]
    if missing:
        raise UserError(f"{examples_path}: missing model input column(s) {', '.join(missing)}")
    scores = predict(model, frame)
    evaluation = evaluate_predictions(frame, scores)
    for warning in evaluation["warnings"]:
        _log(f"warning: {warning}")
    evaluation["model"] = model_summary(model)
    evaluation["eval_examples"] = {"path": examples_path, "sha256": file_sha256(examples_path)}
    values = scalar_values(evaluation)
    matrix = evaluation["confusion_matrix"]
    roc = [(p["threshold"], p["fpr"], p["tpr"]) for p in evaluation["roc_curve"]]
    classification = classification_metrics(roc, matrix["labels"], matrix["rows"])
    _write(args.metrics, _json(values))
    _write(args.classification_metrics, _json(classification))
    _write(args.report, render_report(evaluation, evaluation["model"]))
    os.makedirs(args.evaluation, exist_ok=True)
    _write(os.path.join(args.evaluation, "evaluation.json"), _json(evaluation))
    numeric = {name: value for name, value in values.items() if value is not None}
    write_executor_output(
        args.executor_output,
        {"metrics": scalar_metrics(numeric), "classification_metrics": classification},
    )
    m = evaluation["metrics"]
    failed = [gate["name"] for gate in evaluation["gates"] if not gate["passed"]]
    _log(
        f"done: {m['rows']} rows ({m['positives']} positive), AUROC {_num(m['auroc'])}, Brier {_num(m['brier'])}, "
        f"slope {_num(m['calibration_slope'])}, threshold {_num(m['threshold'])}; "
        f"gates {'passed' if evaluation['passed'] else 'FAILED: ' + ', '.join(failed)}; "
        f"report {args.report}, evaluation {os.path.join(args.evaluation, EVALUATION_FILE)}"
    )
    return 0


def _num(value: float | None) -> str:
    """Formats a metric for the summary line."""
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
