"""Builds the stage's Feast repo copy and applies its definitions with Feast's Python API."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource
from feast.data_source import DataSource

from clinflow.errors import UserError

DEFAULT_FEATURE_REPO = Path(__file__).resolve().parents[2] / "feature_repo"
FEATURE_SERVICE = "patient_risk_v1"
CONFIG_FILE = "feature_store.yaml"
FeastObject = Entity | DataSource | FeatureView | FeatureService


def copy_feature_repo(feature_repo: Path, store_dir: Path) -> None:
    """Copies the Feast definitions and config into a fresh feature store directory.

    Files Feast creates (``data/``) and Python caches are not copied; a ``data/`` left in
    ``store_dir`` by an earlier run is removed so the registry and online store start empty.

    Args:
        feature_repo: The source ``feature_repo/`` directory.
        store_dir: The ``--feature-store`` artifact directory.

    Raises:
        UserError: The feature repo has no ``feature_store.yaml``, or is the same directory.
    """
    if not (feature_repo / CONFIG_FILE).is_file():
        raise UserError(f"{feature_repo}: no {CONFIG_FILE}; pass the repo's feature_repo/ as --feature-repo")
    if store_dir.resolve() == feature_repo.resolve():
        raise UserError(f"{store_dir}: --feature-store must differ from --feature-repo (it is written to)")
    shutil.rmtree(store_dir / "data", ignore_errors=True)
    shutil.copytree(
        feature_repo,
        store_dir,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "data"),
    )


def definition_files(repo: Path) -> list[Path]:
    """Lists the Python files Feast would import from a feature repo.

    Args:
        repo: The feature repo directory.

    Returns:
        Every ``.py`` file except ``__init__.py``, caches and ``data/``, sorted.
    """
    skipped = {"__pycache__", "data"}
    return sorted(
        path
        for path in repo.rglob("*.py")
        if path.name != "__init__.py" and not skipped.intersection(path.relative_to(repo).parts)
    )


def import_definition_file(path: Path) -> ModuleType:
    """Imports one definition file under a name unique to its absolute path.

    Args:
        path: A ``.py`` file of the feature repo.

    Returns:
        The executed module.
    """
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"_clinflow_feature_repo_{digest}_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_definitions(repo: Path) -> list[FeastObject]:
    """Collects the Feast objects defined in a feature repo, as ``feast apply`` does.

    Args:
        repo: The feature repo directory.

    Returns:
        Entities, data sources, feature views and feature services, each once.

    Raises:
        UserError: The repo defines no feature service named ``FEATURE_SERVICE``.
    """
    objects: list[FeastObject] = []
    for path in definition_files(repo):
        for value in vars(import_definition_file(path)).values():
            if isinstance(value, (Entity, DataSource, FeatureView, FeatureService)) and not any(
                value is seen for seen in objects
            ):
                objects.append(value)
    if not any(isinstance(obj, FeatureService) and obj.name == FEATURE_SERVICE for obj in objects):
        raise UserError(f"{repo}: no FeatureService named {FEATURE_SERVICE}; check the feature repo")
    return objects


def file_source_paths(objects: list[FeastObject]) -> list[str]:
    """Lists the parquet paths the repo's FileSources read.

    Args:
        objects: The repo's Feast objects.

    Returns:
        Each FileSource path as written in the definitions (relative to the repo when not absolute).
    """
    return sorted({obj.path for obj in objects if isinstance(obj, FileSource)})


def install_source_table(store_dir: Path, objects: list[FeastObject], table: Path) -> Path:
    """Copies the feature snapshot table to where the repo's single FileSource expects it.

    Args:
        store_dir: The feature store directory.
        objects: The repo's Feast objects.
        table: ``tables/patient_features.parquet``.

    Returns:
        The copied file.

    Raises:
        UserError: The repo does not define exactly one relative FileSource.
    """
    paths = file_source_paths(objects)
    if len(paths) != 1 or Path(paths[0]).is_absolute():
        raise UserError(f"{store_dir}: expected one FileSource with a repo-relative path, found {paths}")
    target = store_dir / paths[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(table, target)
    return target


def apply_definitions(store_dir: Path, objects: list[FeastObject]) -> FeatureStore:
    """Registers the definitions and creates the online store tables (``feast apply``).

    Args:
        store_dir: The feature store directory holding ``feature_store.yaml``.
        objects: The repo's Feast objects.

    Returns:
        The applied store.
    """
    store = FeatureStore(repo_path=str(store_dir))
    store.apply(list(objects))
    return store


def build_feature_store(feature_repo: Path, store_dir: Path, patient_features: Path) -> FeatureStore:
    """Copies the feature repo, installs the snapshot table and applies the definitions.

    Args:
        feature_repo: The source ``feature_repo/`` directory.
        store_dir: The ``--feature-store`` artifact directory.
        patient_features: ``tables/patient_features.parquet``.

    Returns:
        The applied store, ready for historical retrieval and materialization.
    """
    copy_feature_repo(feature_repo, store_dir)
    objects = load_definitions(store_dir)
    install_source_table(store_dir, objects, patient_features)
    return apply_definitions(store_dir, objects)
