"""The ``clinflow`` command line: compile, run, submit, serve, generate, demo."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinflow.errors import UserError, run_cli
from clinflow.images import REPO_ROOT

DEFAULT_RUNS_DIR = REPO_ROOT / "runs"
DEFAULT_MODEL_NAME = "clinflow-risk"
HMAC_ENV_VAR = "CLINFLOW_HMAC_KEY"


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """Parses ``--param name=value`` pairs."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"--param {pair!r}: expected NAME=VALUE")
        params[name] = value
    return params


def _default_spec() -> Path:
    from pipelines.compile import default_spec_path

    return default_spec_path()


def cmd_compile(args: argparse.Namespace) -> int:
    """Compiles every pipeline to IR YAML."""
    from pipelines.compile import compile_all

    for path in compile_all(Path(args.output_dir)):
        print(f"compiled {path}")
    return 0


def _run_local(spec: Path, params: dict[str, Any], runs_dir: Path, run_id: str | None, quiet: bool) -> Any:
    from clinflow.summary import print_run_summary
    from pipelines.local_runner import run_pipeline

    result = run_pipeline(spec, params, runs_dir, run_id=run_id, quiet=quiet)
    print_run_summary(result)
    if not result.succeeded:
        failed = next(task for task in result.tasks if task.status == "failed")
        raise UserError(f"step {failed.name} failed: {failed.error}")
    return result


def cmd_run(args: argparse.Namespace) -> int:
    """Runs the compiled pipeline locally."""
    params: dict[str, Any] = _parse_params(args.param)
    if args.source:
        source = Path(args.source)
        if not source.is_dir():
            raise UserError(f"--source {source}: not a directory")
        params["source_uri"] = str(source.resolve())
    _run_local(Path(args.spec), params, Path(args.runs_dir), args.run_id, args.quiet)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Submits the compiled spec to a Kubeflow Pipelines API."""
    from pipelines.submit import submit_run

    run_id = submit_run(
        host=args.host,
        spec=Path(args.spec),
        params=_parse_params(args.param),
        experiment=args.experiment,
        run_name=args.run_name,
        namespace=args.namespace,
        enable_caching=not args.no_cache,
    )
    print(f"submitted run {run_id} to {args.host} (experiment {args.experiment})")
    return 0


def _latest_run(runs_dir: Path) -> Path:
    runs = sorted((p for p in runs_dir.glob("*/run.json")), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"no runs under {runs_dir}; run `clinflow run` or pass --model-dir")
    return runs[-1].parent


def cmd_serve(args: argparse.Namespace) -> int:
    """Starts the KServe model server in the foreground."""
    from clinflow.serve import model_artifacts_from_run, server_command

    if args.model_dir:
        model_dir = Path(args.model_dir)
        config = Path(args.serving_config) if args.serving_config else None
    else:
        model_dir, config = model_artifacts_from_run(
            Path(args.run_dir) if args.run_dir else _latest_run(Path(args.runs_dir))
        )
    command = server_command(model_dir, args.model_name, args.port, config)
    print(
        f"serving {model_dir} as {args.model_name} on http://127.0.0.1:{args.port} "
        f"(V1 /v1/models/{args.model_name}:predict, V2 /v2/models/{args.model_name}/infer)",
        flush=True,
    )
    os.chdir(REPO_ROOT)
    os.execv(command[0], command)
    return 0  # pragma: no cover - execv does not return


def cmd_images(args: argparse.Namespace) -> int:
    """Prints the image references (or just the tag) that compiled specs use."""
    from clinflow import images

    if args.tag:
        print(images.image_tag())
        return 0
    for environment in images.ENVIRONMENTS:
        print(
            f"{environment.reference(args.registry)}  <- images/{environment.name}/Dockerfile, "
            f"{environment.lock_file.relative_to(REPO_ROOT)}, local twin .venvs/{environment.name}"
        )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Writes a synthetic FHIR Bulk export, or a file drop with every ingest lane (``--lanes``)."""
    if args.lanes:
        from clinflow.synthetic.drop import generate_clinical_drop

        written = generate_clinical_drop(Path(args.output), patients=args.patients, seed=args.seed)
        print(
            f"wrote {written['fhir_resources']:,} FHIR resources for {args.patients:,} patients, "
            f"{written['dicom']} DICOM files, {written['device_logs']} device logs and "
            f"{written['documents']} PDFs to {args.output}"
        )
        return 0
    from clinflow.synthetic import generate_fhir_bulk

    counts = generate_fhir_bulk(Path(args.output), patients=args.patients, seed=args.seed)
    print(f"wrote {sum(counts.values()):,} resources for {args.patients:,} patients to {args.output}")
    return 0


def _sample_rows(run_dir: Path, count: int) -> list[dict[str, float]]:
    """Takes a few held-out rows (features only) from a run to send to the server."""
    import pandas as pd

    from clinflow.prediction_task import FEATURE_NAMES

    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    train = next(task for task in record["tasks"] if task["name"] == "train")
    frame = pd.read_parquet(Path(train["outputs"]["eval_examples"]["uri"]) / "eval.parquet")
    return [{name: float(row[name]) for name in FEATURE_NAMES} for _, row in frame.head(count).iterrows()]


def _promotion_line(run_dir: Path) -> str:
    """Describes the deploy step's rollout decision from the rendered InferenceService."""
    import yaml

    manifest_path = run_dir / "deploy" / "inference_service" / "inferenceservice.yaml"
    manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    annotations = manifest["metadata"].get("annotations", {})
    percent = manifest["spec"]["predictor"].get("canaryTrafficPercent", 100)
    if annotations.get("clinflow.io/promotion") == "held":
        evaluation = json.loads((run_dir / "evaluate" / "evaluation" / "evaluation.json").read_text(encoding="utf-8"))
        failed = [
            f"{gate['name']} = {gate['value'] if gate['value'] is None else round(gate['value'], 3)} "
            f"(needs {gate['bounds']})"
            for gate in evaluation["gates"]
            if not gate["passed"]
        ]
        return f"canary held at {percent}%: promotion gate(s) failed: {'; '.join(failed)}"
    return f"canary rollout at {percent}% of traffic: every promotion gate passed"


def cmd_demo(args: argparse.Namespace) -> int:
    """Generates data, runs the whole pipeline locally, serves the model and queries it."""
    from clinflow import serve
    from clinflow.synthetic.drop import generate_clinical_drop

    runs_dir = Path(args.runs_dir)
    data_dir = runs_dir / f"demo-drop-{args.patients}-{args.seed}"
    if not (data_dir / "documents").exists():
        print(
            f"demo: generating {args.patients:,} synthetic patients (FHIR, DICOM, device logs, PDFs) into {data_dir}",
            flush=True,
        )
        generate_clinical_drop(data_dir, patients=args.patients, seed=args.seed)
    if not os.environ.get(HMAC_ENV_VAR):
        os.environ[HMAC_ENV_VAR] = secrets.token_hex(32)
        print(
            f"demo: no ${HMAC_ENV_VAR} set, so this run uses an ephemeral random key; its pseudonyms "
            "cannot be linked to any other run. Real runs must set the key from a secret.",
            flush=True,
        )
    started = time.monotonic()
    result = _run_local(_default_spec(), {"source_uri": str(data_dir.resolve())}, runs_dir, None, args.quiet)
    print(f"demo: pipeline finished in {time.monotonic() - started:.0f}s", flush=True)
    print(
        f"demo: deploy: {_promotion_line(result.run_dir)} "
        f"(manifest: {result.run_dir / 'deploy' / 'inference_service' / 'inferenceservice.yaml'})",
        flush=True,
    )
    model_dir, config = serve.model_artifacts_from_run(result.run_dir)
    port = args.port or serve.free_port()
    log_path = result.run_dir / "logs" / "serve.log"
    process = serve.start_server(serve.server_command(model_dir, args.model_name, port, config), log_path)
    base_url = f"http://127.0.0.1:{port}"
    try:
        serve.wait_until_ready(process, base_url, args.model_name, log_path)
        rows = _sample_rows(result.run_dir, 3)
        reply = serve.v2_infer(base_url, args.model_name, rows)
        print(f"demo: V2 POST {base_url}/v2/models/{args.model_name}/infer ->")
        print(json.dumps(reply, indent=2))
        if args.keep_serving:
            print(f"demo: serving on {base_url} until Ctrl-C", flush=True)
            process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        process.terminate()
        process.wait(timeout=30)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser with one sub-command per user task."""
    parser = argparse.ArgumentParser(
        prog="clinflow",
        description="Kubeflow-native clinical risk pipeline: compile, run locally, submit to KFP, serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile the pipeline(s) to pipelines/compiled/*.yaml")
    p.add_argument(
        "--output-dir",
        default=str(REPO_ROOT / "pipelines" / "compiled"),
        help="directory for the compiled IR YAML (default: %(default)s)",
    )
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run the compiled pipeline locally (no Docker, no Kubernetes)")
    p.add_argument(
        "--source",
        help="file drop directory: FHIR Bulk NDJSON, optionally DICOM, device logs and PDFs (sets source_uri)",
    )
    p.add_argument("--spec", default=str(_default_spec()), help="compiled pipeline YAML (default: %(default)s)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pipeline parameter, repeatable (e.g. --param seed=7 --param epochs=20)",
    )
    p.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR), help="where run directories go (default: %(default)s)")
    p.add_argument("--run-id", help="name of the run directory (default: <pipeline>-<UTC time>)")
    p.add_argument("--quiet", action="store_true", help="do not echo step output (still in <run>/logs/)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="submit the compiled pipeline to a Kubeflow Pipelines API")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.org/pipeline")
    p.add_argument("--spec", default=str(_default_spec()), help="compiled pipeline YAML (default: %(default)s)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pipeline parameter, repeatable; source_uri is required (e.g. /gcs/bucket/export)",
    )
    p.add_argument("--experiment", default="clinflow", help="experiment name, created if absent (default: %(default)s)")
    p.add_argument("--run-name", help="run display name (default: <pipeline>-<UTC time>)")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    p.add_argument("--no-cache", action="store_true", help="disable step caching for this run")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("serve", help="serve a trained model with the KServe model server (V1 and V2)")
    p.add_argument("--run-dir", help="a local run directory (default: the latest under --runs-dir)")
    p.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR), help="where runs are looked up (default: %(default)s)")
    p.add_argument("--model-dir", help="serve this model directory instead of a run's")
    p.add_argument("--serving-config", help="serving_config.json (threshold, version) to use with --model-dir")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="model name in the URLs (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port on 127.0.0.1 (default: %(default)s)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("images", help="print the container image references compiled specs use")
    p.add_argument("--tag", action="store_true", help="print only the shared tag (for CLINFLOW_IMAGE_TAG / skaffold)")
    p.add_argument("--registry", default="ghcr.io/clinflow", help="registry prefix to show (default: %(default)s)")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("generate", help="write a synthetic FHIR Bulk export with realistic fake PHI")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--patients", type=int, default=1000, help="number of patients (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="random seed; same seed, same files (default: %(default)s)")
    p.add_argument(
        "--lanes",
        action="store_true",
        help="also write DICOM (some with burned-in text), device logs and PDFs (one scanned) for the first "
        "patients, in dicom/, device_logs/ and documents/",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="generate data, run the whole pipeline, serve the model, send a V2 request")
    p.add_argument("--patients", type=int, default=1000, help="synthetic patients (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="data generation seed (default: %(default)s)")
    p.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR), help="where data and runs go (default: %(default)s)")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="served model name (default: %(default)s)")
    p.add_argument("--port", type=int, default=0, help="model server port (default: a free port)")
    p.add_argument("--keep-serving", action="store_true", help="keep the model server running until Ctrl-C")
    p.add_argument("--quiet", action="store_true", help="do not echo step output (still in <run>/logs/)")
    p.set_defaults(func=cmd_demo)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clinflow`` command."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
