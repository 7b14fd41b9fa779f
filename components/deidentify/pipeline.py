"""The Apache Beam pipelines of the deidentify stage.

Pipeline 1 (de-identify), per input line ``(source, line number, bytes)``:

* parse with orjson; bad lines (not JSON, not an object, no valid ``resourceType``, a Patient
  without ``id``) go to the dead-letter output as ``{"source", "line", "reason"}``;
* non-Patient resources are de-identified at once and written; Patients wait for one side input,
  the end of data (latest original date of any patient-linked resource), needed for the age cap;
* outputs are written with ``fileio.WriteToFiles``, one destination per resource type, named
  like a FHIR Bulk export: ``<ResourceType>.<nnn>.ndjson`` (``nnn`` = 000, 001, ... one per
  bundle that wrote the type; DirectRunner on small inputs gives ``.000`` only);
* counts are kept per bundle and emitted once per bundle (no per-element metrics traffic), then
  summed into one JSON file the driver reads.

Pipeline 2 (residual-PHI scan) reads the input files that held Patients again, builds the PHI
index (``components.deidentify.phi_scan``) as a side input, then reads every output line back
from storage (and the dead-letter file) and counts lines and PHI hits per file type.

Nothing is collected in the driver: it only lists file names and reads the two small count files.
The PCollections crossing a side-input wait are the Patient lines (one per patient) only.
"""

from __future__ import annotations

import gzip
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from components.deidentify.phi_scan import PhiIndex, build_index, patient_phi, scan_line
from components.deidentify.transform import deidentify_patient, deidentify_resource

RESOURCE_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
PROGRESS_EVERY = 20000
DEAD = "dead"
PATIENTS = "patients"
STATS = "stats"
LATEST = "latest"
STATS_FILE = "stats.json"
SCAN_FILE = "scan.json"

IN_PREFIX = "in\t"
OUT_PREFIX = "out\t"
DEAD_PREFIX = "dead\t"
PATIENT_SOURCE_PREFIX = "patient_source\t"
BLANK_LINES = "blank_lines"


def _emit_once(value: Any) -> WindowedValue:
    """Wraps a per-bundle summary for output from ``finish_bundle`` (global window)."""
    return WindowedValue(value, GlobalWindow().max_timestamp(), (GlobalWindow(),))


def _dead(source: str, line: int, reason: str) -> bytes:
    return orjson.dumps({"source": source, "line": line, "reason": reason})


def _safe_message(message: str) -> str:
    """Keeps only letters, spaces and simple punctuation of a parser message (never input text)."""
    return re.sub(r"[^a-zA-Z ,:\-]", "", message).strip()[:80]


class ReadNumberedLines(beam.DoFn):
    """Reads one NDJSON file (plain or gzipped, any Beam filesystem) as numbered lines.

    Emits ``(source path, line number, raw bytes)`` for each non-blank line; a truncated or
    corrupt gzip stream ends with one dead-letter record for the unreadable rest.
    """

    def start_bundle(self) -> None:
        """Resets the per-bundle counts."""
        self._stats: Counter[str] = Counter()

    def process(self, path: str) -> Iterator[Any]:
        """Yields the numbered lines of one file."""
        number = 0
        name = os.path.basename(path)
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
                stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
                for number, line in enumerate(stream, start=1):
                    if line.strip():
                        yield path, number, line
                    else:
                        self._stats[BLANK_LINES] += 1
        except (OSError, EOFError) as error:
            reason = f"file unreadable after this line ({type(error).__name__}: truncated or corrupt gzip?)"
            self._stats[IN_PREFIX + "<unreadable>"] += 1
            self._stats[DEAD_PREFIX + "file unreadable"] += 1
            yield beam.pvalue.TaggedOutput(DEAD, _dead(name, number + 1, reason))

    def finish_bundle(self) -> Iterator[Any]:
        """Emits this bundle's counts."""
        yield beam.pvalue.TaggedOutput(STATS, _emit_once(dict(self._stats)))


class DeidentifyFn(beam.DoFn):
    """Parses and de-identifies one line; routes Patients and bad lines to tagged outputs."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def start_bundle(self) -> None:
        """Resets the per-bundle counts."""
        self._stats: Counter[str] = Counter()
        self._latest = ""
        self._seen = 0

    def process(self, element: tuple[str, int, bytes]) -> Iterator[Any]:
        """De-identifies one resource line."""
        path, number, raw = element
        self._seen += 1
        if self._seen % PROGRESS_EVERY == 0:
            print(f"deidentify: {self._seen:,} resources in this bundle so far", file=sys.stderr, flush=True)
        resource, reason = _parse(raw)
        if resource is None:
            self._stats[IN_PREFIX + "<unparsed>"] += 1
            self._stats[DEAD_PREFIX + reason.split(" (")[0]] += 1
            yield beam.pvalue.TaggedOutput(DEAD, _dead(os.path.basename(path), number, reason))
            return
        resource_type = resource["resourceType"]
        self._stats[IN_PREFIX + resource_type] += 1
        if resource_type == "Patient":
            self._stats[PATIENT_SOURCE_PREFIX + path] += 1
            yield beam.pvalue.TaggedOutput(PATIENTS, raw)
            return
        out, latest = deidentify_resource(resource, self._key, self._stats)
        self._latest = max(self._latest, latest)
        self._stats[OUT_PREFIX + resource_type] += 1
        yield resource_type, orjson.dumps(out)

    def finish_bundle(self) -> Iterator[Any]:
        """Emits this bundle's counts and latest date."""
        yield beam.pvalue.TaggedOutput(STATS, _emit_once(dict(self._stats)))
        yield beam.pvalue.TaggedOutput(LATEST, _emit_once(self._latest))


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """Parses one line; returns the resource, or None and a PHI-free reason."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return None, f"not valid JSON ({_safe_message(error.msg)} at column {error.colno})"
    if not isinstance(value, dict):
        return None, f"not a JSON object (got {type(value).__name__})"
    resource_type = value.get("resourceType")
    if not isinstance(resource_type, str) or not RESOURCE_TYPE_RE.match(resource_type):
        return None, "missing or invalid resourceType"
    resource_id = value.get("id")
    if resource_id is not None and (not isinstance(resource_id, str) or not resource_id):
        return None, f"{resource_type} with a non-string or empty id"
    if resource_type == "Patient" and resource_id is None:
        return None, "Patient without id (cannot derive its pseudonym and date shift)"
    return value, ""


class DeidentifyPatientFn(beam.DoFn):
    """De-identifies one Patient line once the end of data is known (side input)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def start_bundle(self) -> None:
        """Resets the per-bundle counts."""
        self._stats: Counter[str] = Counter()

    def process(self, raw: bytes, end_of_data: str) -> Iterator[tuple[str, bytes]]:
        """De-identifies one Patient."""
        out = deidentify_patient(orjson.loads(raw), self._key, self._stats, end_of_data)
        self._stats[OUT_PREFIX + "Patient"] += 1
        yield "Patient", orjson.dumps(out)

    def finish_bundle(self) -> Iterator[Any]:
        """Emits this bundle's counts."""
        yield beam.pvalue.TaggedOutput(STATS, _emit_once(dict(self._stats)))


class SumCounts(beam.CombineFn):
    """Sums count dictionaries."""

    def create_accumulator(self) -> Counter[str]:
        """Starts empty."""
        return Counter()

    def add_input(self, accumulator: Counter[str], element: dict[str, int]) -> Counter[str]:
        """Adds one bundle's counts."""
        accumulator.update(element)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[Counter[str]]) -> Counter[str]:
        """Sums partial results."""
        total: Counter[str] = Counter()
        for accumulator in accumulators:
            total.update(accumulator)
        return total

    def extract_output(self, accumulator: Counter[str]) -> dict[str, int]:
        """Returns a plain dict."""
        return dict(accumulator)


class NdjsonSink(fileio.FileSink):
    """Writes ``(resource type, JSON bytes)`` records as NDJSON lines."""

    def open(self, fh: Any) -> None:
        """Starts a file."""
        self._fh = fh

    def write(self, record: tuple[str, bytes]) -> None:
        """Writes one line."""
        self._fh.write(record[1])
        self._fh.write(b"\n")

    def flush(self) -> None:
        """Flushes the file."""
        self._fh.flush()


def resource_type_destination(record: tuple[str, bytes]) -> str:
    """Routes a record to the file set of its resource type."""
    return record[0]


def bulk_file_naming(
    window: Any, pane: Any, shard_index: int, total_shards: int, compression: Any, destination: str
) -> str:
    """Names output files like a FHIR Bulk export: ``<ResourceType>.<nnn>.ndjson``."""
    return f"{destination}.{int(shard_index or 0):03d}.ndjson"


def _write(records: beam.PCollection, label: str, output_dir: str, temp_dir: str) -> None:
    _ = records | label >> fileio.WriteToFiles(
        path=output_dir,
        destination=resource_type_destination,
        sink=lambda _destination: NdjsonSink(),
        file_naming=bulk_file_naming,
        temp_directory=StaticValueProvider(str, temp_dir),
        max_writers_per_bundle=256,
    )


def _write_json(pcoll: beam.PCollection, label: str, path_prefix: str) -> None:
    _ = (
        pcoll
        | f"{label}ToJson" >> beam.Map(lambda value: orjson.dumps(value).decode("utf-8"))
        | f"Write{label}" >> beam.io.WriteToText(path_prefix, num_shards=1, shard_name_template="")
    )


def run_deidentify(
    input_files: Sequence[str],
    key: bytes,
    output_dir: str,
    dead_letter_path: str,
    work_dir: str,
    options: PipelineOptions,
) -> None:
    """Runs pipeline 1: de-identify every input line, write outputs, dead letters and counts.

    Args:
        input_files: NDJSON paths (plain or ``.gz``) on any Beam filesystem.
        key: The HMAC key (travels to workers inside the DoFns; never logged).
        output_dir: Directory for ``<ResourceType>.<nnn>.ndjson``.
        dead_letter_path: The dead-letter file path (``.../dead_letter.ndjson``).
        work_dir: Directory for the counts file (``stats.json``) and Beam temp files.
        options: Beam pipeline options (runner etc.).

    Raises:
        RuntimeError: The pipeline did not finish successfully.
    """
    with beam.Pipeline(options=options) as pipeline:
        lines = (
            pipeline
            | "InputFiles" >> beam.Create(list(input_files))
            | "ReadLines" >> beam.ParDo(ReadNumberedLines()).with_outputs(DEAD, STATS, main="lines")
        )
        parsed = lines.lines | "Deidentify" >> beam.ParDo(DeidentifyFn(key)).with_outputs(
            DEAD, PATIENTS, STATS, LATEST, main="resources"
        )
        end_of_data = parsed[LATEST] | "EndOfData" >> beam.CombineGlobally(lambda days: max(days, default=""))
        patients = parsed[PATIENTS] | "DeidentifyPatients" >> beam.ParDo(
            DeidentifyPatientFn(key), end_of_data=beam.pvalue.AsSingleton(end_of_data)
        ).with_outputs(STATS, main="patients")
        temp_dir = FileSystems.join(work_dir, "beam-temp")
        _write(parsed.resources, "WriteResources", output_dir, temp_dir)
        _write(patients.patients, "WritePatients", output_dir, temp_dir)
        dead = (lines[DEAD], parsed[DEAD]) | "DeadLetters" >> beam.Flatten()
        _ = (
            dead
            | "DeadToText" >> beam.Map(lambda raw: raw.decode("utf-8"))
            | "WriteDeadLetters" >> beam.io.WriteToText(dead_letter_path, num_shards=1, shard_name_template="")
        )
        stats = (lines[STATS], parsed[STATS], patients[STATS]) | "AllStats" >> beam.Flatten()
        _write_json(stats | "SumStats" >> beam.CombineGlobally(SumCounts()), "Stats", _join(work_dir, STATS_FILE))


class ExtractPhiFn(beam.DoFn):
    """Yields ``(category, value)`` for the identifying values of each input Patient line."""

    def process(self, element: tuple[str, int, bytes]) -> Iterator[tuple[str, str]]:
        """Extracts PHI values from one line when it is a Patient."""
        try:
            resource = orjson.loads(element[2])
        except orjson.JSONDecodeError:
            return
        if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
            yield from patient_phi(resource)


class BuildIndexFn(beam.CombineFn):
    """Collects PHI values into one ``(index, counts)`` pair."""

    def create_accumulator(self) -> list[tuple[str, str]]:
        """Starts empty."""
        return []

    def add_input(self, accumulator: list[tuple[str, str]], element: tuple[str, str]) -> list[tuple[str, str]]:
        """Adds one value."""
        accumulator.append(element)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[tuple[str, str]]]) -> list[tuple[str, str]]:
        """Concatenates partial lists."""
        return [item for accumulator in accumulators for item in accumulator]

    def extract_output(self, accumulator: list[tuple[str, str]]) -> tuple[PhiIndex, dict[str, int]]:
        """Builds the index."""
        index, counts = build_index(accumulator)
        return index, dict(counts)


class ScanFn(beam.DoFn):
    """Counts lines and residual-PHI hits per output file type."""

    def start_bundle(self) -> None:
        """Resets the per-bundle counts."""
        self._stats: Counter[str] = Counter()

    def process(self, element: tuple[str, str], phi: tuple[PhiIndex, dict[str, int]]) -> None:
        """Scans one output line."""
        file_name, line = element
        kind = os.path.basename(file_name).split(".", 1)[0]
        self._stats["lines\t" + kind] += 1
        hits, exempt = scan_line(line, phi[0])
        for category, count in hits.items():
            self._stats[f"hits\t{kind}\t{category}"] += count
        if exempt:
            self._stats["vocabulary_matches"] += exempt

    def finish_bundle(self) -> Iterator[Any]:
        """Emits this bundle's counts."""
        yield _emit_once(dict(self._stats))


def run_scan(
    patient_files: Sequence[str],
    scanned_globs: Sequence[str],
    work_dir: str,
    options: PipelineOptions,
) -> None:
    """Runs pipeline 2: residual-PHI scan of the written outputs.

    Args:
        patient_files: Input files that held Patient resources (to rebuild the PHI index).
        scanned_globs: File patterns of everything the stage wrote (outputs and dead letters).
        work_dir: Directory for the result file ``scan.json``.
        options: Beam pipeline options.
    """
    with beam.Pipeline(options=options) as pipeline:
        patient_lines = (
            pipeline
            | "PatientFiles" >> beam.Create(list(patient_files))
            | "ReadPatients" >> beam.ParDo(ReadNumberedLines()).with_outputs(DEAD, STATS, main="lines")
        ).lines
        phi = (
            patient_lines
            | "ExtractPhi" >> beam.ParDo(ExtractPhiFn())
            | "BuildIndex" >> beam.CombineGlobally(BuildIndexFn())
        )
        side = beam.pvalue.AsSingleton(phi)
        scans = [
            pipeline
            | f"Read{number}" >> beam.io.ReadFromTextWithFilename(pattern)
            | f"Scan{number}" >> beam.ParDo(ScanFn(), phi=side)
            for number, pattern in enumerate(scanned_globs)
        ]
        indexed = phi | "IndexCounts" >> beam.Map(lambda pair: pair[1])
        totals = (*scans, indexed) | "AllScans" >> beam.Flatten() | "SumScans" >> beam.CombineGlobally(SumCounts())
        _write_json(totals, "Scan", _join(work_dir, SCAN_FILE))


def _join(directory: str, name: str) -> str:
    return FileSystems.join(directory, name)


def read_json(path: str) -> dict[str, int]:
    """Reads one of the small JSON count files the pipelines write."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        text = handle.read().strip()
    return orjson.loads(text) if text else {}
