"""TFX Trainer module: ``run_fn`` trains a small Keras (tf_keras, Keras 2) risk model.

The Trainer calls ``run_fn`` with ``custom_config`` = ``{"features", "label", "seed",
"epochs", "batch_size", "learning_rate"}``. Examples are read from the ExampleGen
TFRecords with ``tfxio`` using the SchemaGen schema. The exported SavedModel has a
``serving_default`` signature with one float32 ``[None]`` input per feature name and
one float32 ``[None]`` output, ``probability``. ``training_history.json`` (per-epoch
loss and eval AUROC) goes into the Trainer's ``model_run`` directory.

TensorFlow is imported inside functions so that importing this package never needs it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

HISTORY_FILE = "training_history.json"
_READ_BATCH = 4096


def _read_split(fn_args: Any, files: list[str], features: Sequence[str], label: str) -> tuple[dict, np.ndarray]:
    """Reads one split's examples into memory, in a canonical row order.

    Beam may write TFRecord shards in any order; sorting the rows by their values
    makes the training input, and so the seeded model, independent of that order.

    Args:
        fn_args: The Trainer's ``FnArgs``.
        files: File patterns of the split.
        features: Feature names.
        label: Label name.

    Returns:
        Feature name to float32 vector, and the float32 label vector.
    """
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.utils import io_utils
    from tfx_bsl.public import tfxio

    schema = io_utils.parse_pbtxt_file(fn_args.schema_path, schema_pb2.Schema())
    options = tfxio.TensorFlowDatasetOptions(batch_size=_READ_BATCH, num_epochs=1, shuffle=False, label_key=label)
    dataset = fn_args.data_accessor.tf_dataset_factory(files, options, schema)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in features}
    labels: list[np.ndarray] = []
    for batch, batch_labels in dataset:
        for name in features:
            columns[name].append(np.reshape(batch[name].numpy(), [-1]).astype(np.float32))
        labels.append(np.reshape(batch_labels.numpy(), [-1]).astype(np.float32))
    matrix = np.column_stack([np.concatenate(columns[name]) for name in features] + [np.concatenate(labels)])
    matrix = matrix[np.lexsort(matrix.T[::-1])]
    return {name: matrix[:, i] for i, name in enumerate(features)}, matrix[:, -1]


def build_model(train_x: Mapping[str, np.ndarray], features: Sequence[str]) -> Any:
    """Builds the network: per-feature normalisation, one hidden layer, a sigmoid output.

    Args:
        train_x: Training feature vectors (normalisation statistics come from them).
        features: Feature names, one model input each.

    Returns:
        A tf_keras model taking a dict of ``[batch, 1]`` float32 inputs, returning ``[batch, 1]`` probabilities.
    """
    import tf_keras as keras

    inputs, normalised = {}, []
    for name in features:
        values = train_x[name]
        inputs[name] = keras.Input(shape=(1,), name=name, dtype="float32")
        layer = keras.layers.Normalization(
            mean=float(values.mean()), variance=float(max(values.var(), 1e-6)), name=f"norm_{name}"
        )
        normalised.append(layer(inputs[name]))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(keras.layers.Concatenate()(normalised))
    output = keras.layers.Dense(1, activation="sigmoid", name="risk")(hidden)
    return keras.Model(inputs=inputs, outputs=output)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, tied scores get averaged ranks).

    Args:
        labels: 0/1 outcomes.
        scores: Predicted probabilities.

    Returns:
        The AUROC, or None when only one class is present.
    """
    positive = np.asarray(labels).reshape(-1) > 0.5
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy.

    Args:
        labels: 0/1 outcomes.
        probabilities: Predicted probabilities.

    Returns:
        The mean log loss (probabilities clipped to [1e-7, 1 - 1e-7]).
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _columns(x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feature vectors as ``[rows, 1]`` arrays (the model's input shape)."""
    return {name: np.reshape(values, [-1, 1]) for name, values in x.items()}


Data = tuple[Mapping[str, np.ndarray], np.ndarray, Mapping[str, np.ndarray], np.ndarray]


def train_model(model: Any, data: Data, config: Mapping[str, Any]) -> dict[str, list[float]]:
    """Trains with minibatch Adam; reports loss and AUROC on both splits after each epoch.

    A plain ``tf.function(autograph=False)`` step replaces ``Model.fit``: Keras' autograph
    conversion of its train step costs tens of seconds on a 2-core machine, the step milliseconds.

    Args:
        model: Model from ``build_model``.
        data: Train features, train labels, eval features, eval labels.
        config: ``seed``, ``epochs``, ``batch_size`` and ``learning_rate``.

    Returns:
        Per-epoch ``loss``, ``auroc``, ``val_loss`` and ``val_auroc`` (NaN AUROC for a one-class split).
    """
    import tensorflow as tf
    import tf_keras as keras

    train_x, train_y, eval_x, eval_y = data
    epochs, seed = int(config["epochs"]), int(config["seed"])
    optimizer = keras.optimizers.Adam(learning_rate=float(config.get("learning_rate", 0.01)))
    loss_fn = keras.losses.BinaryCrossentropy()
    spec = ({name: tf.TensorSpec([None, 1], tf.float32) for name in train_x}, tf.TensorSpec([None, 1], tf.float32))

    @tf.function(autograph=False, input_signature=spec)
    def step(x: dict[str, tf.Tensor], y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    predict = tf.function(lambda x: model(x, training=False), autograph=False, input_signature=spec[:1])
    batches = (
        tf.data.Dataset.from_tensor_slices((_columns(train_x), np.reshape(train_y, [-1, 1])))
        .shuffle(len(train_y), seed=seed, reshuffle_each_iteration=True)
        .batch(int(config.get("batch_size", 256)))
    )
    history: dict[str, list[float]] = {"loss": [], "auroc": [], "val_loss": [], "val_auroc": []}
    for epoch in range(epochs):
        for x, y in batches:
            step(x, y)
        train_p, eval_p = predict(_columns(train_x)).numpy(), predict(_columns(eval_x)).numpy()
        for prefix, labels, scores in (("", train_y, train_p), ("val_", eval_y, eval_p)):
            history[f"{prefix}loss"].append(log_loss(labels, scores))
            score = auroc(labels, scores)
            history[f"{prefix}auroc"].append(float("nan") if score is None else score)
        _log(
            f"Trainer epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}, "
            f"auroc {history['auroc'][-1]:.3f}, eval loss {history['val_loss'][-1]:.4f}, "
            f"eval auroc {history['val_auroc'][-1]:.3f}"
        )
    return history


def export_serving_model(model: Any, features: Sequence[str], directory: str) -> None:
    """Saves the model with the serving signature the rest of clinflow relies on.

    Args:
        model: The trained Keras model.
        features: Feature names (signature inputs).
        directory: SavedModel directory to create.
    """
    import tensorflow as tf

    spec = {name: tf.TensorSpec(shape=[None], dtype=tf.float32, name=name) for name in features}

    @tf.function(input_signature=[spec], autograph=False)
    def serve(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        batch = {name: tf.expand_dims(inputs[name], -1) for name in features}
        return {"probability": tf.reshape(model(batch, training=False), [-1])}

    module = tf.Module()
    module.model = model
    module.serve = serve
    tf.saved_model.save(module, directory, signatures={"serving_default": serve.get_concrete_function()})


def _log(message: str) -> None:
    """Prints one progress line on stderr."""
    print(f"[train] {message}", file=sys.stderr, flush=True)


def run_fn(fn_args: Any) -> None:
    """Trains the model and exports it to ``fn_args.serving_model_dir`` (TFX GenericExecutor entry point).

    Args:
        fn_args: The Trainer's ``FnArgs``; ``custom_config`` carries features, label, seed, epochs,
            batch size and learning rate.
    """
    import tensorflow as tf
    import tf_keras as keras

    config = fn_args.custom_config
    features, label = list(config["features"]), str(config["label"])
    started = time.monotonic()
    keras.utils.set_random_seed(int(config["seed"]))
    tf.config.experimental.enable_op_determinism()
    train_x, train_y = _read_split(fn_args, fn_args.train_files, features, label)
    eval_x, eval_y = _read_split(fn_args, fn_args.eval_files, features, label)
    _log(f"Trainer read {len(train_y)} train and {len(eval_y)} eval examples ({time.monotonic() - started:.0f}s)")
    model = build_model(train_x, features)
    history = train_model(model, (train_x, train_y, eval_x, eval_y), config)
    export_serving_model(model, features, fn_args.serving_model_dir)
    _log(f"Trainer exported the SavedModel ({time.monotonic() - started:.0f}s)")
    record = {"train_rows": len(train_y), "eval_rows": len(eval_y), "epochs": len(history["loss"]), "history": history}
    os.makedirs(fn_args.model_run_dir, exist_ok=True)
    with open(os.path.join(fn_args.model_run_dir, HISTORY_FILE), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
