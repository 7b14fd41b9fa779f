"""Start the KServe model server for a trained model and talk to it over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from clinflow.errors import UserError
from clinflow.images import PLATFORM, REPO_ROOT


def free_port() -> int:
    """Returns a free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def model_artifacts_from_run(run_dir: Path) -> tuple[Path, Path | None]:
    """Finds the model directory and the deploy step's serving config in a local run.

    Args:
        run_dir: A run directory made by ``clinflow run``.

    Returns:
        (model directory, ``serving_config.json`` or None when deploy did not run).

    Raises:
        UserError: The run has no trained model.
    """
    record_path = run_dir / "run.json"
    if not record_path.is_file():
        raise UserError(f"{run_dir}: not a clinflow run directory (no run.json)")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    tasks = {task["name"]: task for task in record["tasks"]}
    model = tasks.get("train", {}).get("outputs", {}).get("model")
    if not model:
        raise UserError(f"{run_dir}: the train step did not produce a model in this run")
    inference_service = tasks.get("deploy", {}).get("outputs", {}).get("inference_service")
    config = Path(inference_service["uri"]) / "serving_config.json" if inference_service else None
    return Path(model["uri"]), config if config and config.is_file() else None


def server_command(model_dir: Path, model_name: str, port: int, serving_config: Path | None) -> list[str]:
    """Builds the command line that starts ``serving.predictor`` in the platform environment."""
    command = [
        str(PLATFORM.local_env / "bin" / "python"),
        "-m",
        "serving.predictor",
        "--model_dir",
        str(model_dir),
        "--model_name",
        model_name,
        "--http_port",
        str(port),
        "--grpc_port",
        str(free_port()),
    ]
    if serving_config is not None:
        command += ["--serving_config", str(serving_config)]
    return command


def start_server(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Starts the model server in the background, logging to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_until_ready(
    process: subprocess.Popen[bytes], base_url: str, model_name: str, log_path: Path, timeout_s: float = 120
) -> None:
    """Polls ``/v2/models/<name>/ready`` until the model is ready.

    Raises:
        UserError: The server exited or did not become ready in time (the log path is named).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"model server exited with status {process.returncode}; see {log_path}")
        try:
            if requests.get(f"{base_url}/v2/models/{model_name}/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise UserError(f"model server not ready after {timeout_s:.0f}s; see {log_path}")


def v2_infer(base_url: str, model_name: str, rows: list[dict[str, float]]) -> dict[str, Any]:
    """Sends an Open Inference Protocol V2 request with one FP32 tensor per feature.

    Args:
        base_url: ``http://host:port``.
        model_name: Served model name.
        rows: Feature dicts, one per patient.

    Returns:
        The decoded V2 response.
    """
    names = list(rows[0])
    payload = {
        "id": "clinflow-demo",
        "inputs": [
            {
                "name": name,
                "shape": [len(rows)],
                "datatype": "FP32",
                "data": [float(row[name]) for row in rows],
            }
            for name in names
        ],
    }
    response = requests.post(f"{base_url}/v2/models/{model_name}/infer", json=payload, timeout=30)
    if response.status_code != 200:
        raise UserError(f"V2 inference failed with HTTP {response.status_code}: {response.text[:300]}")
    return dict(response.json())


def v1_predict(base_url: str, model_name: str, rows: list[dict[str, float]]) -> dict[str, Any]:
    """Sends a KServe V1 ``:predict`` request with one instance per patient."""
    response = requests.post(f"{base_url}/v1/models/{model_name}:predict", json={"instances": rows}, timeout=30)
    if response.status_code != 200:
        raise UserError(f"V1 prediction failed with HTTP {response.status_code}: {response.text[:300]}")
    return dict(response.json())
