"""Run a compiled KFP v2 pipeline spec on this machine, without Docker or Kubernetes.

The runner reads the IR YAML that ``clinflow compile`` writes (the same file a
Kubeflow Pipelines cluster runs), walks the root DAG in dependency order, builds
each task's ExecutorInput and resolves its placeholders with ``kfp.local``'s own
machinery, and runs the task's container command in the local environment built
from the same lock as the task's image (``.venvs/<env>``). Artifacts land under
``<runs>/<run id>/<task>/<output>``, the layout a cluster gives under its
pipeline root.

Supported: a flat DAG of container tasks; input parameters (defaults, constants,
pipeline inputs, upstream outputs); artifacts passed between tasks; artifact
metadata written to ``{{$.outputs.output_file}}``; retry policies; environment
variables; ``kfp-kubernetes`` ``secretAsEnv`` (taken from this process's
environment). Scheduling-only settings (resources, node selectors, tolerations,
pod labels/annotations) have no local meaning and are listed once. Everything
else -- conditions, loops, exit handlers, nested DAGs, importers, volume mounts,
secrets or config maps as volumes -- is refused before any task runs. Caching is
not implemented: every task runs every time, and the run says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from kfp.local import executor_input_utils, executor_output_utils, graph_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2

from clinflow.errors import UserError
from clinflow.images import REPO_ROOT, environment_for_image

ParameterType = pipeline_spec_pb2.ParameterType.ParameterTypeEnum
SCHEDULING_ONLY_KUBERNETES_KEYS = frozenset(
    {"nodeSelector", "tolerations", "podMetadata", "imagePullPolicy", "imagePullSecret", "nodeAffinity"}
)
SUPPORTED_KUBERNETES_KEYS = frozenset({"secretAsEnv"}) | SCHEDULING_ONLY_KUBERNETES_KEYS


class UnsupportedFeatureError(UserError):
    """The spec uses a KFP feature the local runner does not implement."""


@dataclass
class LoadedSpec:
    """A compiled pipeline: the IR and the optional Kubernetes platform config."""

    pipeline: pipeline_spec_pb2.PipelineSpec
    executors: dict[str, dict[str, Any]]
    kubernetes_executors: dict[str, dict[str, Any]]
    path: Path


@dataclass
class TaskRecord:
    """What happened to one task, persisted in ``run.json``."""

    name: str
    status: str = "pending"
    image: str = ""
    environment: str = ""
    attempts: int = 0
    started: str = ""
    duration_s: float = 0.0
    error: str = ""
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunResult:
    """The outcome of a local run."""

    run_id: str
    run_dir: Path
    succeeded: bool
    tasks: list[TaskRecord]
    notices: list[str]

    def output(self, task: str, name: str) -> dict[str, Any]:
        """Returns one output artifact record (``uri``, ``type``, ``metadata``) of a task."""
        for record in self.tasks:
            if record.name == task:
                return record.outputs[name]
        raise KeyError(f"no task {task!r} in run {self.run_id}")


def load_spec(path: Path) -> LoadedSpec:
    """Loads a compiled pipeline YAML (PipelineSpec plus optional PlatformSpec document).

    Args:
        path: The compiled spec.

    Returns:
        The parsed spec.

    Raises:
        UserError: The file is missing or is not a KFP v2 pipeline spec.
    """
    if not path.is_file():
        raise UserError(f"{path}: compiled pipeline spec not found; run `clinflow compile` first")
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    if not documents or "pipelineInfo" not in documents[0]:
        raise UserError(f"{path}: not a KFP v2 pipeline spec (no pipelineInfo)")
    pipeline = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=True)
    kubernetes_executors: dict[str, dict[str, Any]] = {}
    for platform_doc in documents[1:]:
        platform = platform_doc.get("platforms", {}).get("kubernetes", {})
        kubernetes_executors.update(platform.get("deploymentSpec", {}).get("executors", {}))
    executors = json_format.MessageToDict(pipeline.deployment_spec).get("executors", {})
    return LoadedSpec(pipeline=pipeline, executors=executors, kubernetes_executors=kubernetes_executors, path=path)


def unsupported_features(spec: LoadedSpec) -> list[str]:
    """Lists every feature in the spec that the local runner cannot honour.

    Args:
        spec: The loaded spec.

    Returns:
        One human-readable line per problem; empty when the spec can run locally.
    """
    problems = []
    executors = spec.executors
    for name, task in spec.pipeline.root.dag.tasks.items():
        if task.trigger_policy.condition:
            problems.append(f"task {name}: conditions (dsl.If/dsl.Condition)")
        if task.WhichOneof("iterator"):
            problems.append(f"task {name}: loops (dsl.ParallelFor)")
        if (
            task.trigger_policy.strategy
            == pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.ALL_UPSTREAM_TASKS_COMPLETED
        ):
            problems.append(f"task {name}: exit handlers / run-after-failure tasks")
        component = spec.pipeline.components[task.component_ref.name]
        if component.WhichOneof("implementation") == "dag":
            problems.append(f"task {name}: nested pipelines (sub-DAGs)")
            continue
        executor = executors[component.executor_label]
        if "container" not in executor:
            problems.append(f"task {name}: {', '.join(executor.keys())} executors (only containers run locally)")
        for key in spec.kubernetes_executors.get(component.executor_label, {}):
            if key not in SUPPORTED_KUBERNETES_KEYS:
                problems.append(f"task {name}: kfp-kubernetes {key}")
    return problems


def _coerce_parameter(name: str, value: Any, parameter_type: int) -> Any:
    """Converts a user-supplied parameter (often a string from the CLI) to its declared type."""
    try:
        if parameter_type == ParameterType.NUMBER_INTEGER:
            return int(value)
        if parameter_type == ParameterType.NUMBER_DOUBLE:
            return float(value)
        if parameter_type == ParameterType.BOOLEAN:
            if isinstance(value, bool):
                return value
            if str(value).lower() in {"true", "1", "yes"}:
                return True
            if str(value).lower() in {"false", "0", "no"}:
                return False
            raise ValueError(value)
        if parameter_type in (ParameterType.LIST, ParameterType.STRUCT):
            return json.loads(value) if isinstance(value, str) else value
    except (TypeError, ValueError) as error:
        type_name = ParameterType.Name(parameter_type)
        raise UserError(f"pipeline parameter {name}={value!r} is not a valid {type_name}") from error
    return str(value)


def resolve_pipeline_parameters(spec: LoadedSpec, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Merges user arguments with the spec's defaults, checking names and types.

    Args:
        spec: The loaded spec.
        arguments: Parameter name to value (strings are converted to the declared type).

    Returns:
        Every pipeline parameter with its value.

    Raises:
        UserError: An unknown parameter, a missing required one, or a value of the wrong type.
    """
    declared = spec.pipeline.root.input_definitions.parameters
    unknown = sorted(set(arguments) - set(declared))
    if unknown:
        raise UserError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(declared))}")
    values: dict[str, Any] = {}
    for name, parameter in declared.items():
        if name in arguments:
            values[name] = _coerce_parameter(name, arguments[name], parameter.parameter_type)
        elif parameter.HasField("default_value"):
            values[name] = json_format.MessageToDict(parameter.default_value)
            if parameter.parameter_type == ParameterType.NUMBER_INTEGER:
                values[name] = int(values[name])
        elif not parameter.is_optional:
            raise UserError(f"pipeline parameter {name} is required (pass --param {name}=...)")
    return values


def _task_arguments(
    task: pipeline_spec_pb2.PipelineTaskSpec,
    pipeline_parameters: Mapping[str, Any],
    task_outputs: Mapping[str, Mapping[str, pipeline_spec_pb2.RuntimeArtifact]],
) -> dict[str, Any]:
    """Resolves a task's inputs to parameter values and upstream dsl artifacts."""
    arguments: dict[str, Any] = {}
    for name, parameter in task.inputs.parameters.items():
        kind = parameter.WhichOneof("kind")
        if kind == "component_input_parameter":
            arguments[name] = pipeline_parameters[parameter.component_input_parameter]
        elif kind == "runtime_value":
            arguments[name] = json_format.MessageToDict(parameter.runtime_value.constant)
        else:
            raise UnsupportedFeatureError(f"input parameter {name}: {kind} inputs are not supported locally")
    for name, artifact in task.inputs.artifacts.items():
        if artifact.WhichOneof("kind") != "task_output_artifact":
            raise UnsupportedFeatureError(f"input artifact {name}: only upstream task outputs are supported locally")
        producer = artifact.task_output_artifact
        runtime = task_outputs[producer.producer_task][producer.output_artifact_key]
        arguments[name] = executor_output_utils.runtime_artifact_to_dsl_artifact(runtime)
    return arguments


def _merge_output_metadata(
    executor_input: pipeline_spec_pb2.ExecutorInput,
) -> dict[str, pipeline_spec_pb2.RuntimeArtifact]:
    """Returns the task's output artifacts with metadata from its executor output file merged in."""
    written = executor_output_utils.load_executor_output(executor_input.outputs.output_file)
    outputs = {}
    for name, artifact_list in executor_input.outputs.artifacts.items():
        runtime = pipeline_spec_pb2.RuntimeArtifact()
        runtime.CopyFrom(artifact_list.artifacts[0])
        if name in written.artifacts and written.artifacts[name].artifacts:
            runtime.metadata.update(json_format.MessageToDict(written.artifacts[name].artifacts[0].metadata))
        outputs[name] = runtime
    return outputs


def _artifact_record(runtime: pipeline_spec_pb2.RuntimeArtifact) -> dict[str, Any]:
    return {
        "uri": runtime.uri,
        "type": runtime.type.schema_title,
        "metadata": json_format.MessageToDict(runtime.metadata),
    }


def _task_environment(spec: LoadedSpec, executor_label: str, container: Mapping[str, Any]) -> dict[str, str]:
    """Builds the task's environment: ours, the container's ``env``, and secrets mapped to env vars."""
    environment = dict(os.environ)
    environment["PYTHONUNBUFFERED"] = "1"
    for variable in container.get("env", []):
        environment[variable["name"]] = variable.get("value", "")
    for secret in spec.kubernetes_executors.get(executor_label, {}).get("secretAsEnv", []):
        secret_name = secret.get("secretName") or secret.get("secretNameParameter", {}).get("runtimeValue", {}).get(
            "constant", "?"
        )
        for mapping in secret.get("keyToEnv", []):
            variable_name = mapping["envVar"]
            if not os.environ.get(variable_name) and not secret.get("optional", False):
                raise UserError(
                    f"step needs Kubernetes Secret {secret_name} (key {mapping['secretKey']}) as ${variable_name}; "
                    f"locally, export {variable_name} before running"
                )
    return environment


def _local_python(image: str) -> tuple[str, str]:
    """Maps a task image to the Python of the local environment built from the same lock.

    Returns:
        (environment name, path to its python).

    Raises:
        UserError: A foreign image, a stale spec, or a missing environment.
    """
    environment = environment_for_image(image)
    if environment is None:
        raise UnsupportedFeatureError(
            f"image {image} is not a clinflow image; it cannot run without a container engine"
        )
    expected_tag = environment.tag()
    if not image.endswith(f":{expected_tag}"):
        raise UserError(
            f"spec uses {image} but {environment.lock_file.name} now gives tag {expected_tag}; "
            "recompile with `clinflow compile`"
        )
    python = environment.local_env / "bin" / "python"
    if not python.exists():
        raise UserError(f"local environment {environment.local_env} is missing; run `make setup`")
    return environment.name, str(python)


def _tail_error(log_path: Path) -> str:
    """Finds the most useful line of a failed task's log: its ``error:`` line, else the last line."""
    lines = [
        line.rstrip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
    ]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:") :].strip()
    return lines[-1] if lines else "no output"


def _run_command(command: Sequence[str], environment: Mapping[str, str], log_path: Path, quiet: bool) -> int:
    """Runs one command, streaming its output to the console (indented) and to a log file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        log_path.open("w", encoding="utf-8") as log,
        subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env=dict(environment),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if not quiet:
                sys.stdout.write(f"    | {line}")
                sys.stdout.flush()
        return process.wait()


def _write_run_record(run_dir: Path, payload: dict[str, Any]) -> None:
    (run_dir / "run.json").write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")


def new_run_id(pipeline_name: str) -> str:
    """Returns ``<pipeline>-<UTC timestamp>``, unique per second."""
    return f"{pipeline_name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def run_pipeline(
    spec_path: Path,
    arguments: Mapping[str, Any],
    runs_root: Path,
    run_id: str | None = None,
    quiet: bool = False,
) -> RunResult:
    """Runs a compiled pipeline locally, step by step.

    Args:
        spec_path: Compiled IR YAML.
        arguments: Pipeline parameters (CLI strings are converted to the declared types).
        runs_root: Directory that receives ``<run id>/``.
        run_id: Run id; a timestamped one by default.
        quiet: Do not echo task output (it is still written to ``logs/<task>.log``).

    Returns:
        The run result; ``succeeded`` is False when a step failed (earlier outputs stay intact).

    Raises:
        UserError: The spec cannot run locally, or its parameters are invalid.
    """
    spec = load_spec(spec_path)
    problems = unsupported_features(spec)
    if problems:
        raise UnsupportedFeatureError("the local runner does not support: " + "; ".join(problems))
    parameters = resolve_pipeline_parameters(spec, arguments)
    pipeline_name = spec.pipeline.pipeline_info.name
    run_id = run_id or new_run_id(pipeline_name)
    run_dir = runs_root / run_id
    run_dir.mkdir(parents=True, exist_ok=True)

    dag_tasks = dict(spec.pipeline.root.dag.tasks)
    order = list(reversed(graph_utils.topological_sort_tasks(dag_tasks)))
    executors = spec.executors
    notices = _notices(spec)
    records = [TaskRecord(name=name) for name in order]
    record_by_name = {record.name: record for record in records}
    run_payload: dict[str, Any] = {
        "run_id": run_id,
        "pipeline": pipeline_name,
        "spec": str(spec.path),
        "parameters": parameters,
        "started": datetime.now(timezone.utc).isoformat(),
        "notices": notices,
        "tasks": [],
    }
    for notice in notices:
        print(f"note: {notice}", flush=True)
    task_outputs: dict[str, dict[str, pipeline_spec_pb2.RuntimeArtifact]] = {}
    succeeded = True
    for index, task_name in enumerate(order, start=1):
        record = record_by_name[task_name]
        task = dag_tasks[task_name]
        component = spec.pipeline.components[task.component_ref.name]
        container = executors[component.executor_label]["container"]
        record.image = container["image"]
        print(f"[{index}/{len(order)}] {task_name}: running in {record.image}", flush=True)
        try:
            record.environment, python = _local_python(record.image)
            environment = _task_environment(spec, component.executor_label, container)
            outputs = _execute_task(
                task_name,
                task,
                component,
                container,
                parameters,
                task_outputs,
                run_dir,
                python,
                environment,
                record,
                quiet,
            )
        except UserError as error:
            record.status, record.error = "failed", str(error)
            outputs = None
        if outputs is None:
            succeeded = False
            print(
                f"[{index}/{len(order)}] {task_name}: FAILED after {record.duration_s:.1f}s: {record.error}",
                flush=True,
            )
            _save(run_dir, run_payload, records)
            break
        task_outputs[task_name] = outputs
        record.outputs = {name: _artifact_record(runtime) for name, runtime in outputs.items()}
        print(f"[{index}/{len(order)}] {task_name}: done in {record.duration_s:.1f}s", flush=True)
        _save(run_dir, run_payload, records)
    for record in records:
        if record.status == "pending":
            record.status = "skipped"
    run_payload["finished"] = datetime.now(timezone.utc).isoformat()
    run_payload["succeeded"] = succeeded
    _save(run_dir, run_payload, records)
    return RunResult(run_id=run_id, run_dir=run_dir, succeeded=succeeded, tasks=records, notices=notices)


def _save(run_dir: Path, payload: dict[str, Any], records: list[TaskRecord]) -> None:
    payload["tasks"] = [record.__dict__ for record in records]
    _write_run_record(run_dir, payload)


def _notices(spec: LoadedSpec) -> list[str]:
    """Lists spec settings that have no local effect, so the user is told once."""
    notices = []
    tasks = spec.pipeline.root.dag.tasks.values()
    if any(task.caching_options.enable_cache for task in tasks):
        notices.append("caching is enabled in the spec but not implemented locally: every step runs")
    executors = spec.executors
    if any("resources" in executor.get("container", {}) for executor in executors.values()):
        notices.append("resource requests/limits are ignored locally")
    scheduling = sorted(
        {
            key
            for config in spec.kubernetes_executors.values()
            for key in config
            if key in SCHEDULING_ONLY_KUBERNETES_KEYS
        }
    )
    if scheduling:
        notices.append(f"Kubernetes scheduling settings ignored locally: {', '.join(scheduling)}")
    return notices


def _execute_task(
    task_name: str,
    task: pipeline_spec_pb2.PipelineTaskSpec,
    component: pipeline_spec_pb2.ComponentSpec,
    container: Mapping[str, Any],
    parameters: Mapping[str, Any],
    task_outputs: Mapping[str, Mapping[str, pipeline_spec_pb2.RuntimeArtifact]],
    run_dir: Path,
    python: str,
    environment: Mapping[str, str],
    record: TaskRecord,
    quiet: bool,
) -> dict[str, pipeline_spec_pb2.RuntimeArtifact] | None:
    """Runs one task with its retry policy; returns its outputs, or None when it failed."""
    task_root = run_dir / task_name
    arguments = _task_arguments(task, parameters, task_outputs)
    executor_input = executor_input_utils.construct_executor_input(
        component_spec=component, arguments=arguments, task_root=str(task_root), block_input_artifact=False
    )
    executor_input_dict = executor_input_utils.executor_input_to_dict(executor_input, component)
    command = placeholder_utils.replace_placeholders(
        full_command=list(container.get("command", [])) + list(container.get("args", [])),
        executor_input_dict=executor_input_dict,
        pipeline_resource_name=run_dir.name,
        task_resource_name=task_name,
        pipeline_root=str(run_dir.parent),
        unique_pipeline_id=run_dir.name,
    )
    if command and command[0] in {"python", "python3"}:
        command[0] = python
    max_attempts = 1 + max(0, task.retry_policy.max_retry_count)
    backoff = task.retry_policy.backoff_duration.seconds or 0
    record.started = datetime.now(timezone.utc).isoformat()
    started = time.monotonic()
    status = 1
    for attempt in range(1, max_attempts + 1):
        record.attempts = attempt
        task_root.mkdir(parents=True, exist_ok=True)
        status = _run_command(command, environment, run_dir / "logs" / f"{task_name}.log", quiet)
        if status == 0:
            break
        if attempt < max_attempts:
            print(
                f"    {task_name}: attempt {attempt} failed (exit {status}); retrying in {backoff}s",
                flush=True,
            )
            time.sleep(backoff)
    record.duration_s = round(time.monotonic() - started, 2)
    if status != 0:
        record.status = "failed"
        record.error = (
            f"{_tail_error(run_dir / 'logs' / f'{task_name}.log')} (exit {status}; log: logs/{task_name}.log)"
        )
        return None
    record.status = "succeeded"
    return _merge_output_metadata(executor_input)
