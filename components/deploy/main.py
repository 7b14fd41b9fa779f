"""Deploy stage: render the canary InferenceService and the serving config for a model.

``python -m components.deploy.main --model DIR --evaluation DIR --model-name NAME
--namespace NS --storage-uri URI --canary-traffic-percent N --inference-service DIR
--metrics FILE [--executor-output FILE] [--crd FILE] [--service-account NAME]``

Writes ``inferenceservice.yaml`` (built with the kserve SDK) and ``serving_config.json``
(decision threshold and model version, read by ``python -m serving.predictor
--serving_config``) into ``--inference-service``. When the evaluation gates failed the
manifest is still rendered, held at 0 percent canary traffic. Nothing is applied to a
cluster here; the manifest is the artifact (and the GitOps change).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinflow.errors import UserError, run_cli
from clinflow.kfp_outputs import scalar_metrics, write_executor_output
from components.deploy.crd import validate_against_crd
from components.deploy.evidence import Evaluation, ModelInfo, read_evaluation, read_model_info
from components.deploy.inference_service import (
    PROMOTION_CANARY,
    PROMOTION_HELD,
    DeploymentRequest,
    build_inference_service,
    to_manifest,
    to_yaml,
)
from serving.model_artifact import SERVING_CONFIG_FILE

MANIFEST_FILE = "inferenceservice.yaml"
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
KSERVE_STORAGE_SCHEMES = (
    "gs://",
    "s3://",
    "pvc://",
    "https://",
    "http://",
    "hdfs://",
    "webhdfs://",
    "oci://",
    "hf://",
)


def build_parser() -> argparse.ArgumentParser:
    """Builds the flag parser (every flag documented).

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="python -m components.deploy.main",
        description="Render the canary InferenceService and serving config for a model.",
    )
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="Model artifact directory (<version>/saved_model.pb and clinflow_model.json).",
    )
    parser.add_argument(
        "--evaluation",
        required=True,
        type=Path,
        help="Evaluation artifact directory holding evaluation.json.",
    )
    parser.add_argument(
        "--model-name",
        required=True,
        help="InferenceService name, also the model name on /v1 and /v2 endpoints.",
    )
    parser.add_argument("--namespace", required=True, help="Kubernetes namespace of the InferenceService.")
    parser.add_argument(
        "--storage-uri",
        required=True,
        help="Where KServe's storage initializer fetches the model (e.g. gs://bucket/model).",
    )
    parser.add_argument(
        "--canary-traffic-percent",
        required=True,
        type=int,
        help="Share of traffic (0-100) for the new revision; 0 is forced when gates failed.",
    )
    parser.add_argument(
        "--inference-service",
        required=True,
        type=Path,
        help="Output directory: inferenceservice.yaml and serving_config.json.",
    )
    parser.add_argument("--metrics", required=True, type=Path, help="Output Metrics file (JSON).")
    parser.add_argument(
        "--executor-output",
        default=None,
        help="KFP executor output file ({{$.outputs.output_file}}); optional locally.",
    )
    parser.add_argument(
        "--crd",
        type=Path,
        default=None,
        help="InferenceService CRD YAML; when given the manifest must validate against it.",
    )
    parser.add_argument(
        "--service-account",
        default="clinflow-serving",
        help="Service account of the predictor pods (storage credentials); '' for none.",
    )
    return parser


def check_request(args: argparse.Namespace) -> DeploymentRequest:
    """Validates the flags and turns them into a deployment request.

    Args:
        args: Parsed flags.

    Returns:
        The request.

    Raises:
        UserError: A name is not a valid Kubernetes name or the percent is out of range.
    """
    if not DNS_1035_LABEL.match(args.model_name):
        raise UserError(
            f"--model-name {args.model_name!r}: use lowercase letters, digits and '-', "
            "starting with a letter (at most 63 characters)"
        )
    if not DNS_1123_LABEL.match(args.namespace):
        raise UserError(f"--namespace {args.namespace!r}: not a valid Kubernetes namespace name")
    if not 0 <= args.canary_traffic_percent <= 100:
        raise UserError(f"--canary-traffic-percent {args.canary_traffic_percent}: must be between 0 and 100")
    if not args.storage_uri.strip():
        raise UserError("--storage-uri is empty")
    if not args.storage_uri.startswith(KSERVE_STORAGE_SCHEMES):
        print(
            f"warning: --storage-uri {args.storage_uri} has no scheme KServe's storage initializer "
            f"fetches ({', '.join(KSERVE_STORAGE_SCHEMES)}); fine for local serving only",
            file=sys.stderr,
        )
    return DeploymentRequest(
        name=args.model_name,
        namespace=args.namespace,
        storage_uri=args.storage_uri,
        canary_traffic_percent=args.canary_traffic_percent,
        service_account=args.service_account or None,
    )


def serving_config(request: DeploymentRequest, model: ModelInfo, evaluation: Evaluation) -> dict[str, Any]:
    """Builds the ``serving_config.json`` the predictor reads.

    Args:
        request: The deployment request.
        model: Model facts.
        evaluation: Evaluation facts.

    Returns:
        The config document.
    """
    return {
        "model_name": request.name,
        "model_version": model.model_version,
        "threshold": evaluation.threshold,
        "storage_uri": request.storage_uri,
        "promotion": PROMOTION_CANARY if evaluation.passed else PROMOTION_HELD,
    }


def deploy_metrics(evaluation: Evaluation, traffic_percent: int) -> dict[str, float]:
    """Builds the scalar metrics of the stage.

    Args:
        evaluation: Evaluation facts.
        traffic_percent: The rendered ``canaryTrafficPercent``.

    Returns:
        Metric name to value.
    """
    values: dict[str, float] = {
        "promoted": int(evaluation.passed),
        "canary_traffic_percent": traffic_percent,
        "failed_gates": len(evaluation.failed_gates),
        "threshold": evaluation.threshold,
    }
    if evaluation.auroc is not None:
        values["auroc"] = evaluation.auroc
    if evaluation.brier is not None:
        values["brier"] = evaluation.brier
    return scalar_metrics(values)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Writes a JSON document, creating parent directories.

    Args:
        path: Output file.
        document: The content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the deploy stage.

    Args:
        argv: Flags without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        0 on success.
    """
    args = build_parser().parse_args(argv)
    request = check_request(args)
    model = read_model_info(args.model)
    evaluation = read_evaluation(args.evaluation)
    manifest = to_manifest(build_inference_service(request, model, evaluation))
    if args.crd is not None:
        validate_against_crd(manifest, args.crd)
    os.makedirs(args.inference_service, exist_ok=True)
    manifest_path = args.inference_service / MANIFEST_FILE
    manifest_path.write_text(to_yaml(manifest), encoding="utf-8")
    write_json(args.inference_service / SERVING_CONFIG_FILE, serving_config(request, model, evaluation))
    traffic = int(manifest["spec"]["predictor"]["canaryTrafficPercent"])
    metrics = deploy_metrics(evaluation, traffic)
    write_json(args.metrics, metrics)
    write_executor_output(
        args.executor_output,
        artifact_metadata={
            "metrics": metrics,
            "inference_service": {
                "model_version": model.model_version,
                "promotion": PROMOTION_CANARY if evaluation.passed else PROMOTION_HELD,
                "canary_traffic_percent": traffic,
                "crd_validated": args.crd is not None,
            },
        },
    )
    status = (
        "promoted as canary"
        if evaluation.passed
        else f"HELD (failed gates: {', '.join(evaluation.failed_gates) or 'passed=false'})"
    )
    print(
        f"deploy: model {args.model} version {model.model_version} -> InferenceService "
        f"{request.namespace}/{request.name}, {status}, canaryTrafficPercent {traffic}; "
        f"CRD validation {'passed' if args.crd else 'skipped (no --crd)'}; wrote {manifest_path} and "
        f"{args.inference_service / SERVING_CONFIG_FILE}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
