"""The TFX pipeline run inside the train step, and reading its results back from ML Metadata.

CsvExampleGen (two input splits, ``train/*`` and ``eval/*``) -> StatisticsGen ->
SchemaGen -> Trainer (``components.train.trainer_module.run_fn``) -> Pusher
(filesystem destination). Runs with TFX's ``LocalDagRunner`` in this process; the
pipeline root and the ML-metadata SQLite file live in a work directory.
TFX is imported inside functions so that importing this package never needs it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from components.train.trainer_module import HISTORY_FILE

PIPELINE_NAME = "clinflow-train"
RUN_FN = "components.train.trainer_module.run_fn"
COMPONENT_ORDER = ("CsvExampleGen", "StatisticsGen", "SchemaGen", "Trainer", "Pusher")


@dataclass(frozen=True)
class TrainingRun:
    """What the TFX pipeline produced.

    Attributes:
        version: The pushed model version (directory name under the push destination).
        serving_dir: ``<push destination>/<version>``.
        history: ``training_history.json`` written by ``run_fn``.
    """

    version: str
    serving_dir: str
    history: dict[str, Any]


class _ComponentProgress(logging.Filter):
    """Turns TFX's "Component X is running/finished." log records into progress lines on stderr."""

    def __init__(self) -> None:
        super().__init__()
        self._started = time.monotonic()

    def filter(self, record: logging.LogRecord) -> bool:
        """Prints a progress line for component start/finish records; keeps every record."""
        message = record.getMessage()
        for state in ("running", "finished"):
            if message.startswith("Component ") and message.endswith(f" is {state}."):
                name = message[len("Component ") : -len(f" is {state}.")]
                step = COMPONENT_ORDER.index(name) + 1 if name in COMPONENT_ORDER else "?"
                elapsed = time.monotonic() - self._started
                print(
                    f"[train] TFX {step}/{len(COMPONENT_ORDER)} {name} {state} ({elapsed:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
        return True


def build_pipeline(
    data_root: str,
    work_dir: str,
    push_dir: str,
    custom_config: dict[str, Any],
) -> Any:
    """Builds the TFX pipeline.

    Args:
        data_root: Directory holding ``train/train.csv`` and ``eval/eval.csv``.
        work_dir: Directory for the pipeline root and ``metadata.sqlite``.
        push_dir: Pusher filesystem destination (the ``--model`` directory).
        custom_config: Passed to ``run_fn`` (features, label, seed, epochs, ...).

    Returns:
        A ``tfx.dsl.Pipeline``.
    """
    # Module-level imports, not ``tfx.v1``: that one also imports the Google Cloud AI Platform
    # extensions, which adds about half a minute to the step.
    from tfx.components import CsvExampleGen, Pusher, SchemaGen, StatisticsGen, Trainer
    from tfx.orchestration import metadata, pipeline
    from tfx.proto import example_gen_pb2, pusher_pb2

    input_config = example_gen_pb2.Input(
        splits=[
            example_gen_pb2.Input.Split(name="train", pattern="train/*"),
            example_gen_pb2.Input.Split(name="eval", pattern="eval/*"),
        ]
    )
    example_gen = CsvExampleGen(input_base=data_root, input_config=input_config)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    trainer = Trainer(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        custom_config=custom_config,
    )
    pusher = Pusher(
        model=trainer.outputs["model"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=push_dir)
        ),
    )
    return pipeline.Pipeline(
        pipeline_name=PIPELINE_NAME,
        pipeline_root=os.path.join(work_dir, "pipeline_root"),
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            os.path.join(work_dir, "metadata.sqlite")
        ),
        components=[example_gen, statistics_gen, schema_gen, trainer, pusher],
        enable_cache=False,
        beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    )


def _custom_properties(store: Any, type_name: str) -> list[tuple[Any, dict[str, Any]]]:
    """Artifacts of one type with their string/int custom properties."""
    found = []
    for artifact in store.get_artifacts_by_type(type_name):
        props = {}
        for key, value in artifact.custom_properties.items():
            props[key] = value.string_value if value.HasField("string_value") else value.int_value
        found.append((artifact, props))
    return found


def read_results(work_dir: str) -> TrainingRun:
    """Finds the pushed model and the training history in the run's ML Metadata.

    Args:
        work_dir: The work directory passed to ``build_pipeline``.

    Returns:
        The pushed version, its serving directory and the training history.

    Raises:
        RuntimeError: When ML Metadata holds no pushed model (a pipeline bug, not a user error).
    """
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    config = metadata.sqlite_metadata_connection_config(os.path.join(work_dir, "metadata.sqlite"))
    store = metadata_store.MetadataStore(config)
    pushed = [props for _, props in _custom_properties(store, "PushedModel") if props.get("pushed") == 1]
    runs = store.get_artifacts_by_type("ModelRun")
    if len(pushed) != 1 or len(runs) != 1:
        raise RuntimeError(f"expected one pushed model and one model run in {work_dir}, got {len(pushed)}/{len(runs)}")
    with open(os.path.join(runs[0].uri, HISTORY_FILE), encoding="utf-8") as handle:
        history = json.load(handle)
    return TrainingRun(
        version=str(pushed[0]["pushed_version"]),
        serving_dir=str(pushed[0]["pushed_destination"]),
        history=history,
    )


def run_pipeline(data_root: str, work_dir: str, push_dir: str, custom_config: dict[str, Any]) -> TrainingRun:
    """Runs the pipeline with ``LocalDagRunner`` and returns what it pushed.

    Args:
        data_root: Directory holding ``train/`` and ``eval/`` CSV files.
        work_dir: Directory for the pipeline root and ML Metadata.
        push_dir: Pusher destination.
        custom_config: Passed to ``run_fn``.

    Returns:
        The pushed model version, directory and training history.
    """
    from absl import logging as absl_logging
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    absl_logging.set_verbosity(absl_logging.INFO)
    logger = logging.getLogger("absl")
    quiet = _QuietHandlers(logger)
    progress = _ComponentProgress()
    logger.addFilter(progress)
    try:
        LocalDagRunner().run(build_pipeline(data_root, work_dir, push_dir, custom_config))
        return read_results(work_dir)
    finally:
        logger.removeFilter(progress)
        quiet.restore()


class _QuietHandlers:
    """Raises absl's handlers to WARNING while the pipeline runs, so INFO records feed progress only."""

    def __init__(self, logger: logging.Logger) -> None:
        self._saved: list[tuple[logging.Handler, int]] = []
        for handler in [*logger.handlers, *logging.getLogger().handlers]:
            self._saved.append((handler, handler.level))
            handler.setLevel(max(handler.level, logging.WARNING))

    def restore(self) -> None:
        """Puts the handlers' levels back."""
        for handler, level in self._saved:
            handler.setLevel(level)


def pipeline_versions() -> dict[str, str]:
    """Versions of the libraries that trained the model.

    Returns:
        ``tfx``, ``tensorflow``, ``tf_keras`` and ``python`` versions.
    """
    import tensorflow as tf
    import tf_keras
    import tfx

    return {
        "tfx": tfx.__version__,
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "python": sys.version.split()[0],
    }
