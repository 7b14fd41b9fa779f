"""Submit a compiled pipeline spec to a Kubeflow Pipelines API with ``kfp.Client``."""

from __future__ import annotations

import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clinflow.errors import UserError

TOKEN_ENV_VAR = "KFP_TOKEN"  # bearer token for the KFP API, from the environment only


def submit_run(
    host: str,
    spec: Path,
    params: dict[str, Any],
    experiment: str,
    run_name: str | None = None,
    namespace: str | None = None,
    enable_caching: bool = True,
) -> str:
    """Creates a run of a compiled spec on a KFP cluster.

    Args:
        host: KFP API endpoint.
        spec: Compiled IR YAML (the same file ``clinflow run`` executes locally).
        params: Pipeline parameters.
        experiment: Experiment name (created when absent).
        run_name: Run display name.
        namespace: Kubeflow profile namespace.
        enable_caching: Whether the cluster may reuse cached step results.

    Returns:
        The run id the API assigned.

    Raises:
        UserError: The spec is missing, or the API cannot be reached or refuses the run.
    """
    import kfp
    import requests

    if not spec.is_file():
        raise UserError(f"{spec}: compiled pipeline spec not found; run `clinflow compile` first")
    run_name = run_name or f"{spec.stem}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # kfp warns about server versions on every call
            client = kfp.Client(host=host, existing_token=os.environ.get(TOKEN_ENV_VAR) or None, namespace=namespace)
            result = client.create_run_from_pipeline_package(
                str(spec),
                arguments=params,
                run_name=run_name,
                experiment_name=experiment,
                namespace=namespace,
                enable_caching=enable_caching,
            )
    except (requests.exceptions.RequestException, OSError) as error:
        raise UserError(f"cannot reach the Kubeflow Pipelines API at {host}: {error}") from error
    except Exception as error:  # urllib3 and kfp_server_api errors are not OSError subclasses
        kind = type(error).__name__
        if kind in {"MaxRetryError", "NewConnectionError", "ProtocolError"}:
            reason = getattr(error, "reason", error)
            raise UserError(f"cannot reach the Kubeflow Pipelines API at {host}: {kind} ({reason})") from error
        if kind == "ApiException":
            detail = f"HTTP {getattr(error, 'status', '?')} {getattr(error, 'reason', '')}".strip()
            raise UserError(f"Kubeflow Pipelines API at {host} refused the run: {detail}") from error
        raise
    return str(result.run_id)
