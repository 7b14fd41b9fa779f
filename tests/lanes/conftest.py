"""Fixtures for the ingest lane tests: the bad-input corpus and small generated inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))  # makes tests/ingest_corpus importable as ingest_corpus


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ingest_corpus.builder import build_bad_corpus

    return build_bad_corpus(tmp_path_factory.mktemp("bad-corpus"))


@pytest.fixture(scope="session")
def small_fhir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clinflow.synthetic import generate_fhir_bulk

    out = tmp_path_factory.mktemp("lanes-fhir")
    generate_fhir_bulk(out, patients=6, seed=11)
    return out
