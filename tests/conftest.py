"""Shared pytest fixtures: test data locations and a small generated FHIR export."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLINFLOW_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SMALL_PATIENTS = 120
IN_TFX_ENV = importlib.util.find_spec("tfx") is not None
TFX_MARK = "pytest.mark.tfx_env"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Sends each test file to the environment it needs.

    Files that declare ``pytestmark = pytest.mark.tfx_env`` run only under the TFX
    environment's pytest (Python 3.10); every other file only under the platform
    environment's (Python 3.11). ``make test`` runs both, so every file runs once.
    """
    if collection_path.is_dir():
        # The TFX environment lacks the platform packages that folders' conftest.py files import
        # (pydicom, PyJWT, google-cloud-storage): skip folders without a TFX test.
        if IN_TFX_ENV and collection_path.name != "__pycache__":
            return not any(TFX_MARK in f.read_text(encoding="utf-8") for f in collection_path.rglob("test_*.py"))
        return None
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    is_tfx_file = TFX_MARK in collection_path.read_text(encoding="utf-8")
    return is_tfx_file != IN_TFX_ENV


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real Synthea exports, DICOM samples, KServe CRDs); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_fhir_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic FHIR Bulk export made by the project's own generator."""
    from clinflow.synthetic import generate_fhir_bulk

    out = tmp_path_factory.mktemp("synthetic-fhir")
    generate_fhir_bulk(out, patients=SMALL_PATIENTS, seed=7)
    return out


@pytest.fixture()
def hmac_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """Sets ``CLINFLOW_HMAC_KEY`` to a test-only key for the duration of a test."""
    key = "test-only-key-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("CLINFLOW_HMAC_KEY", key)
    return key


def load_bench_module(repo_root: Path, file_name: str) -> ModuleType:
    """Imports a ``bench/`` script as a module (bench scripts keep frozen originals for differential tests)."""
    path = repo_root / "bench" / file_name
    spec = importlib.util.spec_from_file_location(f"{path.stem}_for_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def legacy_redactor(repo_root: Path) -> ModuleType:
    """``bench/redactor_speed.py``: holds the frozen copy of the original free-text redactor (differential tests)."""
    return load_bench_module(repo_root, "redactor_speed.py")


@pytest.fixture(scope="session")
def legacy_dicom_check(repo_root: Path) -> ModuleType:
    """``bench/deid_dicom.py``: its ``legacy_*`` functions are the frozen original DICOM residual check."""
    return load_bench_module(repo_root, "deid_dicom.py")
