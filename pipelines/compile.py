"""Compile pipeline factories to KFP IR YAML (``pipelines/compiled/*.yaml``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfp import compiler

from clinflow.images import REPO_ROOT

COMPILED_DIR = REPO_ROOT / "pipelines" / "compiled"


def pipeline_factories() -> dict[str, Callable[..., Any]]:
    """Returns compiled-file stem -> pipeline function, for every pipeline we ship."""
    from pipelines.clinical_risk import clinical_risk_pipeline

    return {"clinical_risk": clinical_risk_pipeline}


def compile_all(output_dir: Path = COMPILED_DIR) -> list[Path]:
    """Compiles every pipeline to ``<output_dir>/<stem>.yaml``.

    Args:
        output_dir: Where to write the specs.

    Returns:
        The written paths.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, factory in pipeline_factories().items():
        path = output_dir / f"{stem}.yaml"
        compiler.Compiler().compile(pipeline_func=factory, package_path=str(path))
        written.append(path)
    return written


def default_spec_path() -> Path:
    """The committed spec of the main pipeline."""
    return COMPILED_DIR / "clinical_risk.yaml"
