"""Request parsing and response building for the V1 and V2 (Open Inference Protocol) APIs.

Parsing turns a request into one float32 column per feature, in the model's
feature order, or raises ``kserve.errors.InvalidInput`` (KServe answers 400).
Error messages name the instance/input and the feature, never a value: inputs
are PHI-adjacent and KServe logs the message of every ``InvalidInput``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

V2_INPUT_DATATYPE = "FP32"
OUTPUT_PROBABILITY = "probability"
OUTPUT_ALERT = "alert"
OUTPUT_PREDICTION_ID = "prediction_id"


@dataclass(frozen=True)
class FeatureBatch:
    """Parsed model inputs.

    Attributes:
        columns: Feature name to a float32 vector of length ``size``.
        size: Number of rows (instances).
    """

    columns: dict[str, np.ndarray]
    size: int


@dataclass(frozen=True)
class Scores:
    """Model outputs for one batch, with the serving decision.

    Attributes:
        probability: float32 vector of predicted risks.
        alert: bool vector, ``probability >= threshold``.
        threshold: The decision threshold used.
        model_version: The version that scored the batch.
        prediction_ids: One fresh UUID per row.
    """

    probability: np.ndarray
    alert: np.ndarray
    threshold: float
    model_version: str
    prediction_ids: list[str]


def is_number(value: Any) -> bool:
    """Tells whether a JSON value is a finite number (booleans are not numbers here).

    Args:
        value: A decoded JSON value.

    Returns:
        True for finite ints and floats.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_feature_names(present: Sequence[str], features: Sequence[str], where: str) -> None:
    """Rejects missing and unknown feature names.

    Args:
        present: Names found in the request.
        features: Names the model requires.
        where: What is being checked, e.g. ``"instance 3"``, for the message.

    Raises:
        InvalidInput: A required feature is absent or an unknown one is present.
    """
    missing = [name for name in features if name not in present]
    if missing:
        raise InvalidInput(f"{where}: missing feature(s): {', '.join(missing)}")
    known = set(features)
    unknown = sorted(name for name in present if name not in known)
    if unknown:
        raise InvalidInput(
            f"{where}: unknown feature(s): {', '.join(unknown)}; expected exactly: {', '.join(features)}"
        )


def parse_v1_instances(body: Any, features: Sequence[str]) -> FeatureBatch:
    """Parses a V1 ``{"instances": [{feature: number, ...}, ...]}`` body.

    Args:
        body: The decoded JSON body.
        features: Feature names the model requires, in model order.

    Returns:
        One float32 column per feature.

    Raises:
        InvalidInput: The body is not a non-empty list of objects holding exactly the
            model's features with finite numeric values.
    """
    if not isinstance(body, Mapping) or "instances" not in body:
        raise InvalidInput('request body must be a JSON object with an "instances" list')
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidInput('"instances" must be a list of objects, one per patient')
    if not instances:
        raise InvalidInput('"instances" is empty; send at least one instance')
    rows = np.empty((len(instances), len(features)), dtype=np.float32)
    for index, instance in enumerate(instances):
        where = f"instance {index}"
        if not isinstance(instance, Mapping):
            raise InvalidInput(f"{where}: must be an object of feature name to number")
        check_feature_names(list(instance), features, where)
        for column, name in enumerate(features):
            if not is_number(instance[name]):
                raise InvalidInput(f"{where}: feature '{name}' must be a finite number")
            rows[index, column] = instance[name]
    return FeatureBatch({name: rows[:, column] for column, name in enumerate(features)}, len(instances))


def flatten(data: Any) -> Iterator[Any]:
    """Yields the leaves of a (possibly nested) JSON list, in row-major order.

    Args:
        data: A tensor's ``data`` field: a flat or nested list.

    Yields:
        Each non-list element.
    """
    if isinstance(data, (list, tuple)):
        for item in data:
            yield from flatten(item)
    elif isinstance(data, np.ndarray):
        yield from data.ravel().tolist()
    else:
        yield data


def batch_size_of(infer_input: InferInput) -> int:
    """Returns N for an input of shape ``[N]`` or ``[N, 1]``.

    Args:
        infer_input: One request tensor.

    Returns:
        The number of rows.

    Raises:
        InvalidInput: Any other shape, or N < 1.
    """
    shape = list(infer_input.shape)
    valid = len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)
    if not valid or shape[0] < 1:
        raise InvalidInput(f"input '{infer_input.name}': shape {shape} not accepted; use [N] or [N, 1] with N >= 1")
    return int(shape[0])


def raw_values(infer_input: InferInput) -> list[Any]:
    """Decodes a tensor sent as raw bytes (gRPC ``raw_input_contents``).

    Args:
        infer_input: A request tensor whose ``data`` is empty.

    Returns:
        Its values, flattened (empty when there are no raw bytes either).

    Raises:
        InvalidInput: The byte count does not match the declared shape.
    """
    try:
        return np.asarray(infer_input.as_numpy()).reshape(-1).tolist()
    except ValueError as error:
        raise InvalidInput(
            f"input '{infer_input.name}': data does not match shape {list(infer_input.shape)}"
        ) from error


def v2_column(infer_input: InferInput, size: int) -> np.ndarray:
    """Converts one V2 input tensor to a float32 vector.

    Args:
        infer_input: The request tensor (JSON data, or binary data already decoded by KServe).
        size: The expected number of rows.

    Returns:
        A float32 vector of length ``size``.

    Raises:
        InvalidInput: Wrong datatype, element count or non-numeric / non-finite values.
    """
    name = infer_input.name
    if infer_input.datatype != V2_INPUT_DATATYPE:
        raise InvalidInput(f"input '{name}': datatype {infer_input.datatype}; expected {V2_INPUT_DATATYPE}")
    values = list(flatten(infer_input.data))
    if not values and size:
        values = raw_values(infer_input)
    if len(values) != size:
        raise InvalidInput(f"input '{name}': {len(values)} values for shape {list(infer_input.shape)}")
    if not all(is_number(value) for value in values):
        raise InvalidInput(f"input '{name}': every value must be a finite number")
    return np.asarray(values, dtype=np.float32)


def parse_v2_request(request: InferRequest, features: Sequence[str]) -> FeatureBatch:
    """Parses an Open Inference Protocol request: one FP32 tensor per feature.

    Args:
        request: The request as decoded by KServe.
        features: Feature names the model requires, in model order.

    Returns:
        One float32 column per feature.

    Raises:
        InvalidInput: Missing, unknown or duplicated inputs, bad shapes or datatypes,
            inconsistent batch sizes, non-numeric values.
    """
    inputs = list(request.inputs or [])
    if not inputs:
        raise InvalidInput('"inputs" is empty; send one FP32 tensor per feature')
    names = [infer_input.name for infer_input in inputs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidInput(f"input(s) sent more than once: {', '.join(duplicates)}")
    check_feature_names(names, features, "inputs")
    sizes = {infer_input.name: batch_size_of(infer_input) for infer_input in inputs}
    if len(set(sizes.values())) != 1:
        raise InvalidInput(
            "inputs disagree on the batch size N: "
            + ", ".join(f"{name}={size}" for name, size in sorted(sizes.items()))
        )
    size = next(iter(sizes.values()))
    by_name = {infer_input.name: infer_input for infer_input in inputs}
    return FeatureBatch({name: v2_column(by_name[name], size) for name in features}, size)


def score(probability: np.ndarray, threshold: float, model_version: str) -> Scores:
    """Applies the decision threshold and assigns prediction ids.

    Args:
        probability: Model output, one value per row.
        threshold: Alert when ``probability >= threshold``.
        model_version: The model version that produced the output.

    Returns:
        The batch scores.
    """
    probability = np.asarray(probability, dtype=np.float32).reshape(-1)
    return Scores(
        probability=probability,
        alert=probability >= np.float32(threshold),
        threshold=threshold,
        model_version=model_version,
        prediction_ids=[str(uuid.uuid4()) for _ in range(probability.shape[0])],
    )


def v1_response(scores: Scores) -> dict[str, list[dict[str, Any]]]:
    """Builds the V1 ``{"predictions": [...]}`` body.

    Args:
        scores: The batch scores.

    Returns:
        One prediction object per instance, in request order.
    """
    return {
        "predictions": [
            {
                "probability": float(probability),
                "alert": bool(alert),
                "threshold": scores.threshold,
                "model_version": scores.model_version,
                "prediction_id": prediction_id,
            }
            for probability, alert, prediction_id in zip(
                scores.probability, scores.alert, scores.prediction_ids, strict=True
            )
        ]
    }


def v2_response(scores: Scores, request: InferRequest, model_name: str) -> InferResponse:
    """Builds the Open Inference Protocol response.

    Outputs: ``probability`` FP32 [N], ``alert`` BOOL [N], ``prediction_id`` BYTES [N];
    response parameters carry ``threshold``; ``model_version`` is the response field.

    Args:
        scores: The batch scores.
        request: The request (its id, binary-output preference and requested outputs are honoured).
        model_name: The served model name.

    Returns:
        The response object KServe encodes.
    """
    size = int(scores.probability.shape[0])
    outputs = [
        InferOutput(OUTPUT_PROBABILITY, [size], "FP32", data=scores.probability),
        InferOutput(OUTPUT_ALERT, [size], "BOOL", data=scores.alert),
        InferOutput(
            OUTPUT_PREDICTION_ID,
            [size],
            "BYTES",
            data=np.array([pid.encode() for pid in scores.prediction_ids], dtype=np.object_),
        ),
    ]
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()),
        model_name=model_name,
        model_version=scores.model_version,
        infer_outputs=outputs,
        parameters={"threshold": scores.threshold},
        use_binary_outputs=request.use_binary_outputs,
        requested_outputs=request.request_outputs,
    )
