"""Write a deterministic synthetic FHIR Bulk Data export (R4 NDJSON), one patient at a time."""

from __future__ import annotations

import contextlib
import gzip
import multiprocessing
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from clinflow.errors import UserError
from clinflow.synthetic.history import disability_years, simulate
from clinflow.synthetic.people import ProviderPool, build_provider_pool, make_person, patient_resource
from clinflow.synthetic.resources import CLINICAL_TYPES, render_history

RESOURCE_TYPES: tuple[str, ...] = ("Patient", *CLINICAL_TYPES, "Organization", "Practitioner")
GZIP_LEVEL = 6
CHUNK_PATIENTS = 50


def file_name(resource_type: str, compress: bool) -> str:
    """Returns the bulk-export file name of a resource type (``Patient.000.ndjson[.gz]``)."""
    return f"{resource_type}.000.ndjson" + (".gz" if compress else "")


def patient_rng(seed: int, index: int) -> random.Random:
    """Returns the RNG of one patient; independent of every other patient's."""
    return random.Random(f"clinflow-synthetic/{seed}/patient/{index}")


def provider_rng(seed: int) -> random.Random:
    """Returns the RNG of the provider pool."""
    return random.Random(f"clinflow-synthetic/{seed}/providers")


class _Sink:
    """One output NDJSON file (plain, or gzip with a fixed header so bytes are reproducible)."""

    def __init__(self, path: Path, compress: bool) -> None:
        self._raw: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._handle: IO[bytes] | gzip.GzipFile = self._raw
        if compress:
            self._handle = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=GZIP_LEVEL)
        self.count = 0

    def write(self, resources: Iterable[dict[str, Any]]) -> None:
        """Appends resources, one compact JSON object per line."""
        lines = [orjson.dumps(resource, option=orjson.OPT_APPEND_NEWLINE) for resource in resources]
        if lines:
            self._handle.write(b"".join(lines))
            self.count += len(lines)

    def write_bytes(self, data: bytes, count: int) -> None:
        """Appends already-serialised NDJSON holding ``count`` resources."""
        self._handle.write(data)
        self.count += count

    def close(self) -> None:
        """Flushes and closes the file."""
        if self._handle is not self._raw:
            self._handle.close()
        self._raw.close()


def _prepare_output(output_dir: Path, compress: bool) -> None:
    """Creates the output directory and removes the other-compression twin of each output file."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"{output_dir}: exists and is not a directory; pass a directory for the export")
    output_dir.mkdir(parents=True, exist_ok=True)
    for resource_type in RESOURCE_TYPES:
        (output_dir / file_name(resource_type, not compress)).unlink(missing_ok=True)


def _patient_resources(pool: ProviderPool, seed: int, index: int) -> dict[str, list[dict[str, Any]]]:
    """Simulates patient ``index`` and returns their resources by type."""
    rng = patient_rng(seed, index)
    person = make_person(rng, pool)
    history = simulate(rng, person)
    rendered = render_history(rng, person, history)
    patient = patient_resource(person, history.death, disability_years(history, person))
    return {"Patient": [patient], **rendered.by_type}


def render_chunk(pool: ProviderPool, seed: int, start: int, stop: int) -> dict[str, tuple[bytes, int]]:
    """Renders patients ``start .. stop-1`` as NDJSON bytes per resource type.

    Args:
        pool: The provider pool.
        seed: Random seed.
        start: First patient index.
        stop: One past the last patient index.

    Returns:
        Resource type to ``(ndjson_bytes, resource_count)``.
    """
    lines: dict[str, list[bytes]] = {}
    for index in range(start, stop):
        for resource_type, resources in _patient_resources(pool, seed, index).items():
            bucket = lines.setdefault(resource_type, [])
            bucket.extend(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in resources)
    return {resource_type: (b"".join(chunk), len(chunk)) for resource_type, chunk in lines.items()}


_WORKER_POOL: dict[str, Any] = {}


def _worker_init(seed: int, patients: int) -> None:
    """Builds the provider pool once in each worker process (same seed, same pool)."""
    _WORKER_POOL["pool"] = build_provider_pool(provider_rng(seed), patients)


def _worker_chunk(task: tuple[int, int, int]) -> dict[str, tuple[bytes, int]]:
    """Renders one chunk in a worker process."""
    seed, start, stop = task
    return render_chunk(_WORKER_POOL["pool"], seed, start, stop)


def _chunks(
    pool: ProviderPool, seed: int, patients: int, workers: int
) -> Iterator[tuple[int, dict[str, tuple[bytes, int]]]]:
    """Yields ``(patients_done, rendered_chunk)`` in patient order, in-process or from workers."""
    bounds = [(start, min(start + CHUNK_PATIENTS, patients)) for start in range(0, patients, CHUNK_PATIENTS)]
    if workers <= 1 or len(bounds) == 1:
        for start, stop in bounds:
            yield stop, render_chunk(pool, seed, start, stop)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_worker_init, initargs=(seed, patients)) as processes:
        tasks = [(seed, start, stop) for start, stop in bounds]
        for (_, stop), chunk in zip(bounds, processes.imap(_worker_chunk, tasks), strict=True):
            yield stop, chunk


def generate_fhir_bulk(
    output_dir: Path,
    patients: int,
    seed: int,
    compress: bool = False,
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
) -> dict[str, int]:
    """Writes a synthetic FHIR R4 Bulk Data export with realistic fake PHI and a learnable signal.

    Files are ``<ResourceType>.000.ndjson`` (``.ndjson.gz`` with ``compress``): Patient,
    Encounter, Condition, Observation, MedicationRequest, DocumentReference (plain-text clinical notes,
    base64, see ``notes.py``), Organization and Practitioner. The same
    ``(patients, seed, compress)`` always gives byte-identical files, whatever ``workers`` is, and
    patient ``i`` is the same person whatever the total (the provider pool grows with the total,
    though). Patients are simulated in chunks of ``CHUNK_PATIENTS`` and written as they come, so
    memory does not grow with ``patients``.

    Args:
        output_dir: Directory to write into (created if missing; same-named files are replaced).
        patients: Number of patients, at least 1.
        seed: Random seed.
        compress: Write gzip files (deterministic headers).
        progress: Called with the number of patients written so far, after each chunk.
        workers: Processes that simulate patients in parallel (1: in this process).

    Returns:
        Resource type to number of resources written.

    Raises:
        UserError: ``patients`` or ``workers`` is below 1, or ``output_dir`` is not a directory.
    """
    if patients < 1:
        raise UserError(f"--patients {patients}: need at least 1 patient")
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least 1 worker")
    output_dir = Path(output_dir)
    _prepare_output(output_dir, compress)
    pool = build_provider_pool(provider_rng(seed), patients)
    with contextlib.ExitStack() as stack:
        sinks: dict[str, _Sink] = {}
        for resource_type in RESOURCE_TYPES:
            sink = _Sink(output_dir / file_name(resource_type, compress), compress)
            stack.callback(sink.close)
            sinks[resource_type] = sink
        sinks["Organization"].write(org.resource() for org in pool.organizations)
        sinks["Practitioner"].write(p.resource() for org in pool.organizations for p in org.practitioners)
        for done, chunk in _chunks(pool, seed, patients, workers):
            for resource_type, (data, count) in chunk.items():
                sinks[resource_type].write_bytes(data, count)
            if progress is not None:
                progress(done)
        return {resource_type: sink.count for resource_type, sink in sinks.items()}
