"""The local runner executes real compiled KFP specs: artifacts, metadata, failures, retries, refusals."""

import json
from pathlib import Path

import pytest
from kfp import compiler, dsl, kubernetes

from clinflow import images
from clinflow.errors import UserError
from pipelines import local_runner

WRITE_SCRIPT = """
import json, os, sys
out, text, executor_output = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "data.txt"), "w").write(text)
json.dump({"artifacts": {"metrics": {"artifacts": [{"metadata": {"chars": len(text)}}]}}}, open(executor_output, "w"))
open(sys.argv[4], "w").write("{}")
"""

UPPER_SCRIPT = """
import os, sys
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "data.txt"), "w").write(open(os.path.join(src, "data.txt")).read().upper())
"""

FAIL_ONCE_SCRIPT = """
import os, sys
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").write("x")
    print("error: first attempt fails on purpose")
    sys.exit(3)
os.makedirs(sys.argv[2], exist_ok=True)
"""


@dsl.container_component
def write_text(text: str, data: dsl.Output[dsl.Dataset], metrics: dsl.Output[dsl.Metrics]) -> dsl.ContainerSpec:
    return dsl.ContainerSpec(
        image=images.PLATFORM.reference(),
        command=["python", "-c", WRITE_SCRIPT],
        args=[data.path, text, dsl.PIPELINE_TASK_EXECUTOR_OUTPUT_PATH_PLACEHOLDER, metrics.path],
    )


@dsl.container_component
def upper(data: dsl.Input[dsl.Dataset], result: dsl.Output[dsl.Dataset]) -> dsl.ContainerSpec:
    return dsl.ContainerSpec(
        image=images.TFX.reference(), command=["python", "-c", UPPER_SCRIPT], args=[data.path, result.path]
    )


@dsl.container_component
def fail(message: str) -> dsl.ContainerSpec:
    return dsl.ContainerSpec(
        image=images.PLATFORM.reference(),
        command=["python", "-c", "import sys; print('error: ' + sys.argv[1]); sys.exit(2)"],
        args=[message],
    )


@dsl.container_component
def fail_once(marker: str, out: dsl.Output[dsl.Dataset]) -> dsl.ContainerSpec:
    return dsl.ContainerSpec(
        image=images.PLATFORM.reference(), command=["python", "-c", FAIL_ONCE_SCRIPT], args=[marker, out.path]
    )


@dsl.container_component
def print_env(out: dsl.Output[dsl.Dataset]) -> dsl.ContainerSpec:
    return dsl.ContainerSpec(
        image=images.PLATFORM.reference(),
        command=[
            "python",
            "-c",
            "import os, sys; os.makedirs(sys.argv[1]); open(sys.argv[1] + '/v', 'w').write(os.environ['SECRET_VALUE'])",
        ],
        args=[out.path],
    )


def _compile(pipeline, tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
    return path


def test_runs_two_environments_and_passes_artifacts(tmp_path):
    @dsl.pipeline(name="two-steps")
    def two_steps(text: str = "hello"):
        written = write_text(text=text)
        upper(data=written.outputs["data"])

    result = local_runner.run_pipeline(
        _compile(two_steps, tmp_path), {"text": "clinical"}, tmp_path / "runs", quiet=True
    )

    assert result.succeeded
    assert [t.name for t in result.tasks] == ["write-text", "upper"]
    assert {t.environment for t in result.tasks} == {"platform", "tfx"}
    upper_out = Path(result.output("upper", "result")["uri"])
    assert (upper_out / "data.txt").read_text() == "CLINICAL"
    assert upper_out == result.run_dir / "upper" / "result"
    assert result.output("write-text", "metrics")["metadata"] == {"chars": 8}
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["succeeded"] and record["parameters"] == {"text": "clinical"}


def test_failed_step_stops_run_and_keeps_earlier_outputs(tmp_path):
    @dsl.pipeline(name="fails")
    def fails():
        written = write_text(text="kept")
        failing = fail(message="bad input in Patient.ndjson:3").after(written)
        upper(data=written.outputs["data"]).after(failing)

    result = local_runner.run_pipeline(_compile(fails, tmp_path), {}, tmp_path / "runs", quiet=True)

    assert not result.succeeded
    statuses = {t.name: t.status for t in result.tasks}
    assert statuses == {"write-text": "succeeded", "fail": "failed", "upper": "skipped"}
    failed = next(t for t in result.tasks if t.name == "fail")
    assert failed.error.startswith("bad input in Patient.ndjson:3")
    assert (Path(result.output("write-text", "data")["uri"]) / "data.txt").read_text() == "kept"


def test_retry_policy_is_honoured(tmp_path):
    marker = tmp_path / "marker"

    @dsl.pipeline(name="retries")
    def retries():
        fail_once(marker=str(marker)).set_retry(num_retries=1, backoff_duration="0s")

    result = local_runner.run_pipeline(_compile(retries, tmp_path), {}, tmp_path / "runs", quiet=True)
    assert result.succeeded
    assert result.tasks[0].attempts == 2


def test_conditions_are_refused_before_anything_runs(tmp_path):
    @dsl.pipeline(name="conditional")
    def conditional(flag: str = "yes"):
        with dsl.If(flag == "yes"):
            write_text(text="x")

    with pytest.raises(local_runner.UnsupportedFeatureError, match="conditions"):
        local_runner.run_pipeline(_compile(conditional, tmp_path), {}, tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists()


def test_loops_are_refused(tmp_path):
    @dsl.pipeline(name="loop")
    def loop():
        with dsl.ParallelFor(["a", "b"]) as item:
            write_text(text=item)

    with pytest.raises(local_runner.UnsupportedFeatureError, match=r"loops|nested"):
        local_runner.run_pipeline(_compile(loop, tmp_path), {}, tmp_path / "runs", quiet=True)


def test_secret_as_env_comes_from_the_environment(tmp_path, monkeypatch):
    @dsl.pipeline(name="secret")
    def secret():
        task = print_env()
        kubernetes.use_secret_as_env(task, secret_name="s", secret_key_to_env={"k": "SECRET_VALUE"})

    spec = _compile(secret, tmp_path)
    monkeypatch.delenv("SECRET_VALUE", raising=False)
    result = local_runner.run_pipeline(spec, {}, tmp_path / "runs", run_id="no-secret", quiet=True)
    assert not result.succeeded
    assert "export SECRET_VALUE" in result.tasks[0].error

    monkeypatch.setenv("SECRET_VALUE", "from-env")
    result = local_runner.run_pipeline(spec, {}, tmp_path / "runs", run_id="with-secret", quiet=True)
    assert result.succeeded
    assert (Path(result.output("print-env", "out")["uri"]) / "v").read_text() == "from-env"


def test_parameters_are_checked(tmp_path):
    @dsl.pipeline(name="params")
    def params(text: str, count: int = 2):
        write_text(text=text)

    spec = local_runner.load_spec(_compile(params, tmp_path))
    assert local_runner.resolve_pipeline_parameters(spec, {"text": "a", "count": "5"}) == {
        "text": "a",
        "count": 5,
    }
    with pytest.raises(UserError, match="unknown pipeline parameter"):
        local_runner.resolve_pipeline_parameters(spec, {"text": "a", "cuont": "5"})
    with pytest.raises(UserError, match="text is required"):
        local_runner.resolve_pipeline_parameters(spec, {})
    with pytest.raises(UserError, match="not a valid NUMBER_INTEGER"):
        local_runner.resolve_pipeline_parameters(spec, {"text": "a", "count": "many"})


def test_stale_image_tag_is_refused(tmp_path):
    @dsl.pipeline(name="stale")
    def stale():
        write_text(text="x")

    path = _compile(stale, tmp_path)
    path.write_text(path.read_text().replace(images.PLATFORM.tag(), "0.0.0-000000000000"))
    result = local_runner.run_pipeline(path, {}, tmp_path / "runs", quiet=True)
    assert not result.succeeded
    assert "recompile" in result.tasks[0].error


def test_missing_spec_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="clinflow compile"):
        local_runner.load_spec(tmp_path / "nope.yaml")
