"""KServe predictor for the clinflow risk model (a TF SavedModel).

Run locally::

    python -m serving.predictor --model_dir MODEL_DIR --model_name clinflow-risk
        [--serving_config DEPLOY_OUT/serving_config.json] [--http_port 8080]

Endpoints (KServe's own server): V1 ``POST /v1/models/<name>:predict``, V2 (Open
Inference Protocol) ``POST /v2/models/<name>/infer``, ``GET /v2/models/<name>/ready``,
``GET /v2/models/<name>`` (metadata). Bad input answers 400 (``InvalidInput``).
Input values are never logged; request and instance counts are.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve import model_server
from kserve.protocol.infer_type import InferRequest, InferResponse

from clinflow.errors import UserError, run_cli
from serving.model_artifact import ModelArtifact, locate_model
from serving.payloads import (
    OUTPUT_ALERT,
    OUTPUT_PREDICTION_ID,
    OUTPUT_PROBABILITY,
    V2_INPUT_DATATYPE,
    FeatureBatch,
    Scores,
    parse_v1_instances,
    parse_v2_request,
    score,
    v1_response,
    v2_response,
)

logger = logging.getLogger("kserve.clinflow")  # a child of KServe's configured logger
SIGNATURE_KEY = "serving_default"
PROBABILITY_OUTPUT = "probability"


@dataclass(frozen=True)
class ParsedRequest:
    """What ``preprocess`` hands to ``predict``.

    Attributes:
        batch: The feature columns.
        v2_request: The original OIP request, or None for V1.
    """

    batch: FeatureBatch
    v2_request: InferRequest | None


@dataclass(frozen=True)
class ScoredRequest:
    """What ``predict`` hands to ``postprocess``.

    Attributes:
        scores: Probabilities, alerts and prediction ids.
        v2_request: The original OIP request, or None for V1.
    """

    scores: Scores
    v2_request: InferRequest | None


class RequestCounter:
    """Thread-safe request/instance counters, logged without any input values."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.instances = 0

    def record(self, protocol: str, instances: int) -> None:
        """Counts one scored request and logs the running totals.

        Args:
            protocol: ``"v1"`` or ``"v2"``.
            instances: Rows scored in this request.
        """
        with self._lock:
            self.requests += 1
            self.instances += instances
            requests, total = self.requests, self.instances
        logger.info(
            "scored %s request: %d instance(s); totals %d request(s), %d instance(s)",
            protocol,
            instances,
            requests,
            total,
        )


def signature_feature_names(signature: Any) -> list[str]:
    """Returns the input names of a ``serving_default`` signature, checking the contract.

    Args:
        signature: The concrete function ``loaded.signatures["serving_default"]``.

    Returns:
        The input names, in the order of ``clinflow_model.json`` when it lists them, else sorted.

    Raises:
        UserError: Inputs are not float32 ``[None]`` vectors or the output is missing.
    """
    import tensorflow as tf

    _, specs = signature.structured_input_signature
    for name, spec in specs.items():
        if spec.dtype != tf.float32 or spec.shape.rank != 1:
            raise UserError(f"signature input '{name}' is {spec.dtype.name}{spec.shape}; expected float32 [None]")
    if PROBABILITY_OUTPUT not in signature.structured_outputs:
        raise UserError(f"signature '{SIGNATURE_KEY}' has no '{PROBABILITY_OUTPUT}' output")
    return sorted(specs)


def ordered_features(signature_names: Sequence[str], metadata: dict[str, Any]) -> list[str]:
    """Orders the signature's inputs as ``clinflow_model.json`` lists them, when it does.

    Args:
        signature_names: Input names from the SavedModel signature.
        metadata: Parsed ``clinflow_model.json``.

    Returns:
        The feature names (always exactly the signature's inputs).

    Raises:
        UserError: The metadata lists features that differ from the signature's.
    """
    listed = metadata.get("feature_names")
    if listed is None and isinstance(metadata.get("features"), list):
        listed = [item.get("name") if isinstance(item, dict) else item for item in metadata["features"]]
    if listed is None:
        return list(signature_names)
    if sorted(map(str, listed)) != sorted(signature_names):
        raise UserError(
            "clinflow_model.json lists features that differ from the SavedModel signature inputs: "
            f"{sorted(map(str, listed))} vs {sorted(signature_names)}"
        )
    return [str(name) for name in listed]


class RiskModel(kserve.Model):
    """The clinflow risk predictor following KServe's ``Model`` contract."""

    def __init__(self, name: str, model_dir: Path, serving_config: Path | None = None) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.serving_config = serving_config
        self.artifact: ModelArtifact | None = None
        self.features: list[str] = []
        self._loaded: Any = None
        self._signature: Any = None
        self.counter = RequestCounter()

    def load(self) -> bool:
        """Loads the highest SavedModel version and its serving configuration.

        Returns:
            True once ready.

        Raises:
            UserError: The artifact layout, sidecar JSON or signature is wrong.
        """
        import tensorflow as tf

        artifact = locate_model(self.model_dir, self.serving_config)
        self._loaded = tf.saved_model.load(str(artifact.version_dir))
        if SIGNATURE_KEY not in self._loaded.signatures:
            raise UserError(f"{artifact.version_dir}: no '{SIGNATURE_KEY}' signature")
        self._signature = self._loaded.signatures[SIGNATURE_KEY]
        self.features = ordered_features(signature_feature_names(self._signature), artifact.metadata)
        self.artifact = artifact
        logger.info(
            "loaded model %s version %s (%d features), threshold %.4f from %s",
            self.name,
            artifact.model_version,
            len(self.features),
            artifact.threshold,
            artifact.threshold_source,
        )
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        """Describes the V2 inputs: one FP32 ``[-1]`` tensor per feature."""
        return [{"name": name, "datatype": V2_INPUT_DATATYPE, "shape": [-1]} for name in self.features]

    def get_output_types(self) -> list[dict[str, Any]]:
        """Describes the V2 outputs."""
        return [
            {"name": OUTPUT_PROBABILITY, "datatype": "FP32", "shape": [-1]},
            {"name": OUTPUT_ALERT, "datatype": "BOOL", "shape": [-1]},
            {"name": OUTPUT_PREDICTION_ID, "datatype": "BYTES", "shape": [-1]},
        ]

    def preprocess(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> ParsedRequest:
        """Parses a V1 body or a V2 request into feature columns.

        Args:
            payload: The decoded V1 JSON body or the V2 ``InferRequest``.
            headers: Request headers (unused).

        Returns:
            The parsed request.

        Raises:
            InvalidInput: The request does not match the model's inputs (KServe answers 400).
        """
        if isinstance(payload, InferRequest):
            return ParsedRequest(parse_v2_request(payload, self.features), payload)
        return ParsedRequest(parse_v1_instances(payload, self.features), None)

    def predict(self, payload: ParsedRequest, headers: dict[str, str] | None = None) -> ScoredRequest:
        """Scores the batch with the SavedModel and applies the decision threshold.

        Args:
            payload: The output of ``preprocess``.
            headers: Request headers (unused).

        Returns:
            The scores.
        """
        if self.artifact is None or self._signature is None:
            raise RuntimeError("predict called before load")
        import tensorflow as tf

        inputs = {name: tf.constant(column) for name, column in payload.batch.columns.items()}
        probability = np.asarray(self._signature(**inputs)[PROBABILITY_OUTPUT])
        scores = score(probability, self.artifact.threshold, self.artifact.model_version)
        self.counter.record("v1" if payload.v2_request is None else "v2", payload.batch.size)
        return ScoredRequest(scores, payload.v2_request)

    def postprocess(
        self,
        result: ScoredRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """Builds the V1 JSON body or the V2 ``InferResponse``.

        Args:
            result: The output of ``predict``.
            headers: Request headers (unused).
            response_headers: Response headers (unused).

        Returns:
            The response for the protocol the request came in.
        """
        if result.v2_request is None:
            return v1_response(result.scores)
        return v2_response(result.scores, result.v2_request, self.name)


def build_parser() -> argparse.ArgumentParser:
    """Builds the command-line parser on top of KServe's model-server parser.

    Returns:
        The parser (KServe's flags such as ``--http_port`` and ``--model_name`` included).
    """
    parser = argparse.ArgumentParser(
        prog="python -m serving.predictor",
        description="Serve a clinflow model (TF-Serving layout) with the KServe model server.",
        parents=[model_server.parser],
    )
    parser.add_argument(
        "--model_dir",
        required=True,
        type=Path,
        help="Model directory: <version>/saved_model.pb plus clinflow_model.json.",
    )
    parser.add_argument(
        "--serving_config",
        type=Path,
        default=None,
        help="serving_config.json written by the deploy stage (decision threshold); "
        "default: <model_dir>/serving_config.json if present, else the model's own "
        "threshold or 0.5.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Loads the model and runs the KServe model server until it is stopped.

    Args:
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        0 after the server stops.
    """
    args = build_parser().parse_args(argv)
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
    )  # configures KServe's logging, so construct it before loading
    model = RiskModel(args.model_name, args.model_dir, args.serving_config)
    model.load()
    server.start([model])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
