"""The Apache Beam pipelines of the deidentify stage.

Pipeline 1 (de-identify), per input line ``(source, line number, bytes)`` (lines travel in batches of
``BATCH_LINES`` per element, and written resources leave as one newline-joined record per resource
type and batch, which keeps the per-element runner overhead small):

* parse with orjson; bad lines (not JSON, not an object, no valid ``resourceType``, a Patient
  without ``id``) go to the dead-letter output as ``{"source", "line", "reason"}`` (no PHI);
* a pre-pass (a second read of the files, parsing only the lines a byte pre-filter picks) gives
  what the de-identify step looks up: an identifier crosswalk ``"<Type>|<system>|<value>" -> id``
  of the policy's conditional-reference targets (Practitioner, Organization, ...) and the
  providers' names, addresses, telecom and identifier values that free text is also redacted of
  (both side inputs; they grow with providers, not patients); and each Patient's encoded
  ``KnownIdentifiers`` (original Patient id -> the values free text is redacted of), which grows
  with patients and so waits on disk, in a SQLite lookup file in the scratch directory
  (``components.deidentify.lookup_files``; the side input is the file's name);
* non-Patient resources are de-identified at once (one walk) and written. When the walk meets
  free text of a patient's resource, that patient's redactor (``components.deidentify.free_text``)
  is built from the lookup file, or taken from a per-worker LRU cache (``PatientRedactors``:
  exports list a patient's resources together, so it is built about once per patient and file);
* Patients are counted (and dead-lettered when bad) with the other lines, and de-identified in a
  stage that reads them from the input again once its side input, the end of data (latest
  original date of any patient-linked resource, needed for the age cap), is known, so no Patient
  waits in memory; they also give the k-anonymity quasi-identifier counts. The pre-pass gives the
  patient crosswalk ``identifier value (MRN, ...) -> Patient id`` (``patient_links``, a lookup file
  too) that other lanes use for linkage;
* **lanes seam**: ``LANES`` maps a lane name (``dicom``, ``device_logs``, ``documents``, the
  input subdirectories of the ingest layout) to a builder called with a ``LaneContext`` (the
  pipeline, directories, key, policy, and the ``patient_links`` PCollection). A builder adds its
  own transforms and returns a PCollection of count dictionaries (``lane_in``/``lane_out``/
  ``lane_dead`` prefixes, summed with the FHIR counts) and a PCollection of dead-letter records
  (written with the FHIR ones). ``components.deidentify.lanes`` registers ``dicom``,
  ``device_logs`` and ``documents``; an input subdirectory without a registered lane would be
  reported as not processed (its files are not copied to the output);
* outputs are written with ``fileio.WriteToFiles`` (one writer for Patients, one for the other
  resources), one destination per resource type, named like a FHIR Bulk export:
  ``<ResourceType>.<nnn>.ndjson``;
* counts are kept per bundle and emitted once per bundle, then summed into one JSON file.

Pipeline 2 (residual-PHI scan) reads every input file again, collects every identifying value of
every resource (``components.deidentify.phi_scan.resource_phi``) into a Bloom filter sized by the
input (saved to a file), reads every output line back from storage (and the dead letters, in batches of
lines) and emits Bloom-positive token sequences as candidates. The candidates are confirmed
exactly: the inputs are read once more, the values whose key is a candidate's are kept
(``MatchCandidateValuesFn``) and a ``CoGroupByKey`` of those few values and the candidates counts
the hits, so a Bloom false positive never counts and no step holds every value.

Memory (FnApiRunner/DirectRunner): the side inputs are the provider crosswalk, the provider values,
the names of the lookup files (``LookupFile``: known identifiers, patient links) and of the Bloom
filter's file (``BloomFile``), and the end-of-data day; each worker reads those files itself (SQLite
for the lookups, about 2 MB of page cache; the Bloom bits once). What grows with the input: the
provider side inputs (with providers), the Bloom filter (sized at ``bloom_bits_per_resource`` per
input resource so its false-positive rate does not grow) and the scan's candidates (output
sequences that pass the Bloom filter, few when the output is clean). As ``AsDict`` side inputs the
known identifiers cost the local runner about 1.5 KB per patient (grouped, materialised and
decoded copies); Dataflow/Flink/Spark keep side inputs and shuffles on disk anyway.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import sys
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from components.deidentify import phi_scan
from components.deidentify.dates import parse_day
from components.deidentify.lookup_files import (
    LOOKUP_PARTS_DIR,
    LookupFile,
    LookupReader,
    WriteLookupPartsFn,
    merge_lookup_parts,
)
from components.deidentify.policy import Policy, rules_of
from components.deidentify.references import resource_patient_id
from components.deidentify.transform import (
    crosswalk_entries,
    deidentify_patient,
    deidentify_resource,
    provider_redactor,
    provider_values,
    reference_day,
)

if TYPE_CHECKING:
    from components.deidentify.free_text import KnownIdentifiers

RESOURCE_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
PROGRESS_EVERY = 20000
BATCH_LINES = 1000  # input lines per element: one DoFn call de-identifies a batch (less per-element overhead)
CHUNK_BYTES = 16 << 20  # byte range of a file read by one DoFn call (big files spread across workers)
PLAN_BLOCK_BYTES = 1 << 20
DEAD = "dead"
KNOWN = "known"
LINKS = "links"
FIRST_TOKENS = "first_tokens"
# The residual scan's Bloom filter: bits per input resource (up to 3 entries per value: first token,
# length and sequence; ~1.4 values per resource), so the fill stays near 30% and the estimated
# false-positive rate near 200 ppm (169 ppm measured at 10k generated patients).
BLOOM_BITS_PER_RESOURCE = 64
MAX_BLOOM_BITS = 2**34
REDACTOR_CACHE = 512  # patients' free-text redactors kept per worker
CANDIDATE_FLUSH = 50_000  # distinct residual-scan candidates a ScanFn bundle counts before emitting them
STATS = "stats"
LATEST = "latest"
REID = "reid"
STATS_FILE = "stats.json"
SCAN_FILE = "scan.json"
BLOOM_FILE = "bloom.bin"  # the residual scan's Bloom filter bits (scratch directory)
BLOOM_PARTS_DIR = "bloom-parts"  # one filter per ExtractPhiFn bundle, ORed into BLOOM_FILE
KNOWN_FILE = "known-identifiers.sqlite"  # the patients' encoded KnownIdentifiers (scratch directory)
LINKS_FILE = "patient-links.sqlite"  # identifier value -> original Patient id, for the lanes (scratch directory)
LANE_DIRS = ("dicom", "device_logs", "documents")

IN_PREFIX = "in\t"
OUT_PREFIX = "out\t"
DEAD_PREFIX = "dead\t"
FILE_IN_PREFIX = "file_in\t"
FILE_OUT_PREFIX = "file_out\t"
FILE_DEAD_PREFIX = "file_dead\t"
QI_PREFIX = "qi\t"
BLANK_LINES = "blank_lines"
PENDING_TEXT = "resources_joined_for_free_text"
PENDING_WITHOUT_PATIENT = "free_text_patient_not_found"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"


@dataclass(frozen=True)
class LaneContext:
    """What a lane builder gets (see the module docstring's lanes seam).

    Attributes:
        pipeline: The Beam pipeline to add transforms to.
        input_dir: The ingest output directory (the lane reads ``<input_dir>/<lane>/``).
        output_dir: The de-identified output directory (the lane writes under ``<output_dir>/<lane>/``).
        dead_letter_dir: Where dead letters go.
        work_dir: Scratch directory.
        key: The HMAC key.
        policy: The loaded policy (``policy.document["dicom"]`` / ``["device_logs"]``).
        patient_links: PCollection of one ``LookupFile``: identifier value (MRN, ...) -> original
            FHIR Patient id (UTF-8; the smallest id when patients share a value); pass it with
            ``beam.pvalue.AsSingleton``, read it as a ``TextLookup`` and resolve with
            ``components.deidentify.dicom.linkage.link_patient``.
        known_identifiers: PCollection of one ``LookupFile``: original FHIR Patient id ->
            ``KnownIdentifiers.to_bytes()``, for lanes that redact free text with the patient's own
            values (``documents``); pass it with ``beam.pvalue.AsSingleton`` and read it with a
            ``LookupReader``.
    """

    pipeline: beam.Pipeline
    input_dir: str
    output_dir: str
    dead_letter_dir: str
    work_dir: str
    key: bytes
    policy: Policy
    patient_links: beam.PCollection
    known_identifiers: beam.PCollection


LaneBuilder = Callable[[LaneContext], tuple[beam.PCollection, beam.PCollection]]
LANES: dict[str, LaneBuilder] = {}


def _emit_once(value: Any) -> WindowedValue:
    """Wraps a per-bundle summary for output from ``finish_bundle`` (global window)."""
    return WindowedValue(value, GlobalWindow().max_timestamp(), (GlobalWindow(),))


def _dead(source: str, line: int, reason: str) -> bytes:
    return orjson.dumps({"source": source, "line": line, "reason": reason})


def _safe_message(message: str) -> str:
    """Keeps only letters, spaces and simple punctuation of a parser message (never input text)."""
    return re.sub(r"[^a-zA-Z ,:\-]", "", message).strip()[:80]


class PlanChunks(beam.DoFn):
    """Splits one NDJSON file into byte ranges of whole lines, so big files spread across workers.

    Emits ``(path, start, end, first line number)``: uncompressed files are read in blocks of
    ``block_bytes`` and cut at the last newline of the block where a range reaches
    ``chunk_bytes`` (line numbers come from counting the newlines before each cut, so dead letters
    name the same line as a whole-file read); a gzipped file is one range (``end`` = -1: read to
    the end of the stream). An empty file has no range.
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, block_bytes: int = PLAN_BLOCK_BYTES) -> None:
        self._chunk_bytes = chunk_bytes
        self._block_bytes = block_bytes

    def process(self, path: str) -> Iterator[tuple[str, int, int, int]]:
        """Yields the ranges of one file."""
        if path.endswith(".gz"):
            yield path, 0, -1, 1
            return
        start, first_line, newlines, position = 0, 1, 0, 0
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            while block := handle.read(self._block_bytes):
                cut = block.rfind(b"\n") if position + len(block) - start >= self._chunk_bytes else -1
                if cut < 0:
                    newlines += block.count(b"\n")
                else:
                    newlines += block.count(b"\n", 0, cut + 1)
                    yield path, start, position + cut + 1, first_line
                    start, first_line = position + cut + 1, first_line + newlines
                    newlines = block.count(b"\n", cut + 1)
                position += len(block)
        if position > start:
            yield path, start, position, first_line


class ReadNumberedLines(beam.DoFn):
    """Reads one byte range of an NDJSON file (plain or gzipped, any Beam filesystem) as batches of numbered lines.

    Input: a range from ``PlanChunks``. Emits ``(source path, [(line number, raw bytes), ...])`` with
    up to ``BATCH_LINES`` non-blank lines per element (in file order); a truncated or corrupt gzip
    stream ends with one dead-letter record for the unreadable rest.
    """

    def __init__(self, count: bool = True) -> None:
        self._count = count

    def start_bundle(self) -> None:
        """Resets the per-bundle counts."""
        self._stats: Counter[str] = Counter()

    def process(self, element: tuple[str, int, int, int]) -> Iterator[Any]:
        """Yields the numbered lines of one range, in batches."""
        path, start, end, first_line = element
        number = first_line - 1
        name = os.path.basename(path)
        batch: list[tuple[int, bytes]] = []
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
                if end < 0:
                    stream: Any = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
                else:
                    raw.seek(start)
                    stream = io.BytesIO(raw.read(end - start))
                for number, line in enumerate(stream, start=first_line):
                    if line.strip():
                        batch.append((number, line))
                        if len(batch) >= BATCH_LINES:
                            yield path, batch
                            batch = []
                    else:
                        self._stats[BLANK_LINES] += 1
            if batch:
                yield path, batch
        except (OSError, EOFError) as error:
            if batch:
                yield path, batch
            reason = f"file unreadable after this line ({type(error).__name__}: truncated or corrupt gzip?)"
            self._stats[IN_PREFIX + "<unreadable>"] += 1
            self._stats[FILE_IN_PREFIX + name] += 1
            self._stats[FILE_DEAD_PREFIX + name] += 1
            self._stats[DEAD_PREFIX + "file unreadable"] += 1
            yield beam.pvalue.TaggedOutput(DEAD, _dead(name, number + 1, reason))

    def finish_bundle(self) -> Iterator[Any]:
        """Emits this bundle's counts."""
        if self._count:
            yield beam.pvalue.TaggedOutput(STATS, _emit_once(dict(self._stats)))


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


def _reid_line(resource_type: str, original_id: Any, out: Mapping[str, Any]) -> bytes:
    return orjson.dumps({"pseudonym": f"{resource_type}/{out.get('id')}", "original": f"{resource_type}/{original_id}"})


PROVIDERS = "providers"


class CrosswalkFn(beam.DoFn):
    """The pre-pass: crosswalk entries of the conditional-reference target types, providers, patients.

    Yields crosswalk entries of the target types (main output); tagged ``providers``: the names,
    addresses, telecom and identifier values of those resources, for the provider redactor free
    text goes through; tagged ``known``: ``(original Patient id, encoded KnownIdentifiers)`` of every
    Patient, for the patient redactor. Only lines that may hold such a resource are parsed (cheap
    byte pre-filter).
    """

    def __init__(self, target_types: Iterable[str]) -> None:
        types = sorted({*target_types, "Patient"})
        self._types = frozenset(target_types)
        self._prefilter = re.compile(rb'"resourceType"\s*:\s*"(' + b"|".join(t.encode() for t in types) + rb')"')

    def process(self, element: tuple[str, list[tuple[int, bytes]]]) -> Iterator[Any]:
        """Parses only lines that may be a target resource or a Patient."""
        from components.deidentify.free_text import known_identifiers_from_patient

        search = self._prefilter.search
        for _, raw in element[1]:
            if not search(raw):
                continue
            resource, _ = _parse(raw)
            if resource is None:
                continue
            if resource["resourceType"] == "Patient":
                known = known_identifiers_from_patient(resource).to_bytes()
                yield beam.pvalue.TaggedOutput(KNOWN, (str(resource["id"]), known))
                for link in patient_links(resource):
                    yield beam.pvalue.TaggedOutput(LINKS, link)
            elif resource["resourceType"] in self._types:
                yield from crosswalk_entries(resource)
                for value in provider_values(resource):
                    yield beam.pvalue.TaggedOutput(PROVIDERS, value)


def merge_known(values: Iterable[bytes]) -> bytes:
    """Merges the encoded KnownIdentifiers of Patients that share an id (every value of each is kept).

    Known identifiers travel encoded (``KnownIdentifiers.to_bytes``): the local runner keeps the
    side input of every patient in memory, and bytes take about a quarter of the objects' memory.
    """
    from components.deidentify.free_text import KnownIdentifiers

    items = list(values)
    if len(items) == 1:
        return items[0]
    decoded = [KnownIdentifiers.from_bytes(item) for item in items]
    fields = ("names", "identifiers", "telecom", "addresses", "dates")
    return KnownIdentifiers(
        **{name: tuple(dict.fromkeys(value for item in decoded for value in getattr(item, name))) for name in fields}
    ).to_bytes()


KnownSource = Mapping[str, bytes] | LookupReader  # patient id -> encoded KnownIdentifiers


def known_of(known: KnownSource, patient_id: str | None) -> KnownIdentifiers | None:
    """The decoded ``KnownIdentifiers`` of one patient (None when absent)."""
    from components.deidentify.free_text import KnownIdentifiers

    encoded = known.get(patient_id) if patient_id else None
    return None if encoded is None else KnownIdentifiers.from_bytes(encoded)


class PatientRedactors:
    """Per-worker cache of patients' free-text redactors, built on first use (LRU bounded).

    Bulk exports list a patient's resources together within each file, so a small cache serves
    almost every lookup; a miss only costs building the redactor again.
    """

    def __init__(self, limit: int = REDACTOR_CACHE) -> None:
        self._limit = limit
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def get(self, patient_id: str, known: KnownSource, stats: Counter[str]) -> Any:
        """The redactor of one patient (patterns only, counted, when the export lacks the Patient)."""
        from components.deidentify.free_text import Redactor

        redactor = self._cache.get(patient_id)
        if redactor is not None:
            self._cache.move_to_end(patient_id)
            return redactor
        identifiers = known_of(known, patient_id)
        if identifiers is None:
            stats[PENDING_WITHOUT_PATIENT] += 1
        redactor = Redactor(identifiers)
        self._cache[patient_id] = redactor
        if len(self._cache) > self._limit:
            self._cache.popitem(last=False)
        return redactor


class LazyPatientRedactor:
    """The free-text redactor of one resource's patient, looked up only when free text is met."""

    def __init__(self, redactors: PatientRedactors, patient_id: str, known: KnownSource, stats: Counter[str]) -> None:
        """Remembers what the lookup needs."""
        self._redactors = redactors
        self._patient_id = patient_id
        self._known = known
        self._stats = stats
        self._redactor: Any = None

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """Redacts with the patient's redactor (counts the resource as joined on first use)."""
        if self._redactor is None:
            self._stats[PENDING_TEXT] += 1
            self._redactor = self._redactors.get(self._patient_id, self._known, self._stats)
        result: tuple[str, Counter[str]] = self._redactor.redact(text)
        return result


class ProviderRedactorCache:
    """Builds the provider redactor once per worker from the side input."""

    def __init__(self) -> None:
        self._source: int | None = None
        self._redactor: Any = None

    def get(self, values: Sequence[tuple[str, str]]) -> Any:
        """The redactor for this side-input value (rebuilt only when the side input changes)."""
        if self._source != id(values):
            self._redactor = provider_redactor(values)
            self._source = id(values)
        return self._redactor


class _PolicyFn(beam.DoFn):
    """A DoFn holding the key, the policy and its per-worker lookup tables."""

    def __init__(self, key: bytes, policy: Policy, reid: bool) -> None:
        self._key = key
        self._policy = policy
        self._reid = reid

    def setup(self) -> None:
        """Builds the policy's lookup tables once per worker."""
        self._rules = rules_of(self._policy)
        self._providers = ProviderRedactorCache()
        self._redactors = PatientRedactors()
        self._known = LookupReader()

    def teardown(self) -> None:
        """Closes the known-identifier lookup file."""
        self._known.close()


class DeidentifyFn(_PolicyFn):
    """Parses and de-identifies one batch of lines; routes Patients and bad lines."""

    def start_bundle(self) -> None:
        """Resets the per-bundle counts."""
        self._stats: Counter[str] = Counter()
        self._latest = ""
        self._seen = 0

    def process(
        self,
        element: tuple[str, list[tuple[int, bytes]]],
        crosswalk: Mapping[str, str],
        providers: Sequence[tuple[str, str]],
        known_file: LookupFile,
    ) -> Iterator[Any]:
        """De-identifies one batch of resource lines.

        Written resources leave as ``(resource type, lines joined by newlines)``, one record per
        type present in the batch (input order kept within a type).
        """
        path, batch = element
        name = os.path.basename(path)
        stats = self._stats
        provider_redactor = self._providers.get(providers)
        known = self._known.use(known_file)
        written: dict[str, list[bytes]] = {}
        before = self._seen
        self._seen += len(batch)
        if self._seen // PROGRESS_EVERY > before // PROGRESS_EVERY:
            print(f"deidentify: {self._seen:,} resources in this bundle so far", file=sys.stderr, flush=True)
        stats[FILE_IN_PREFIX + name] += len(batch)
        for number, raw in batch:
            resource, reason = _parse(raw)
            if resource is None:
                stats[IN_PREFIX + "<unparsed>"] += 1
                stats[DEAD_PREFIX + reason.split(" (")[0]] += 1
                stats[FILE_DEAD_PREFIX + name] += 1
                yield beam.pvalue.TaggedOutput(DEAD, _dead(name, number, reason))
                continue
            resource_type = resource["resourceType"]
            stats[IN_PREFIX + resource_type] += 1
            if resource_type == "Patient":
                continue  # written by DeidentifyPatientFn, once the end of data is known
            patient_id = resource_patient_id(resource)
            outcome = deidentify_resource(
                resource,
                self._key,
                stats,
                self._rules,
                self._policy,
                redactor=None if patient_id is None else LazyPatientRedactor(self._redactors, patient_id, known, stats),
                crosswalk=crosswalk,
                provider_redactor=provider_redactor,
            )
            if outcome.latest_day > self._latest:
                self._latest = outcome.latest_day
            stats[OUT_PREFIX + resource_type] += 1
            if self._reid and "id" in resource:
                yield beam.pvalue.TaggedOutput(REID, _reid_line(resource_type, resource["id"], outcome.resource))
            written.setdefault(resource_type, []).append(orjson.dumps(outcome.resource))
        for resource_type, lines in written.items():
            stats[FILE_OUT_PREFIX + name] += len(lines)
            yield resource_type, b"\n".join(lines)

    def finish_bundle(self) -> Iterator[Any]:
        """Emits this bundle's counts and latest date."""
        yield beam.pvalue.TaggedOutput(STATS, _emit_once(dict(self._stats)))
        yield beam.pvalue.TaggedOutput(LATEST, _emit_once(self._latest))


def smallest_patient_id(patient_ids: list[bytes]) -> bytes:
    """The patient an identifier value shared by several Patients links to (the smallest id, stable)."""
    return min(patient_ids)


def patient_links(patient: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(identifier value, original Patient id)`` for each identifier of one Patient."""
    for identifier in patient.get("identifier") or []:
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str) and identifier["value"]:
            yield identifier["value"], str(patient["id"])


def quasi_identifiers(original: Mapping[str, Any], out: Mapping[str, Any], end_of_data: str, policy: Policy) -> str:
    """The k-anonymity equivalence-class label of one de-identified Patient (generalised values only)."""
    rules = rules_of(policy)
    settings = policy.document.get("k_anonymity", {})
    band = int(settings.get("age_band_years", 10))
    wanted = settings.get("quasi_identifiers", ["age_band", "gender", "zip3", "race", "ethnicity"])
    birth = parse_day(original.get("birthDate")) if isinstance(original.get("birthDate"), str) else None
    age_band = "unknown"
    if birth is not None:
        reference = reference_day(dict(original), end_of_data)
        age = reference.year - birth.year - ((reference.month, reference.day) < (birth.month, birth.day))
        if age > rules.age_over:
            age_band = f"{rules.age_reported}+"
        else:
            low = max(age, 0) // band * band
            age_band = f"{low}-{min(low + band - 1, rules.age_over)}"
    addresses = out.get("address") or []
    zip_code = next((a.get("postalCode") for a in addresses if isinstance(a, dict) and a.get("postalCode")), "none")
    values = {
        "age_band": age_band,
        "gender": str(out.get("gender") or "unknown"),
        "zip3": str(zip_code),
        "race": _omb_code(out, "us-core-race"),
        "ethnicity": _omb_code(out, "us-core-ethnicity"),
    }
    return "|".join(values[name] for name in wanted)


def _omb_code(patient: Mapping[str, Any], name: str) -> str:
    for extension in patient.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == US_CORE + name:
            for part in extension.get("extension") or []:
                if isinstance(part, dict) and part.get("url") == "ombCategory":
                    return str((part.get("valueCoding") or {}).get("code", "unknown"))
    return "unknown"


def may_be_patient(raw: bytes) -> bool:
    """A cheap necessary condition of a Patient line (the name, or a JSON escape that may spell it)."""
    return b"Patient" in raw or b"\\u" in raw


class DeidentifyPatientFn(_PolicyFn):
    """De-identifies the Patients of one batch of input lines once the end of data is known.

    The Patients are read from the input a second time (in the stage that waits for the end-of-data
    side input) rather than held in memory until the other resources are done. Lines that are not
    valid Patients are skipped here: ``DeidentifyFn`` counts and dead-letters them.
    """

    def start_bundle(self) -> None:
        """Resets the per-bundle counts."""
        self._stats: Counter[str] = Counter()

    def process(
        self,
        element: tuple[str, list[tuple[int, bytes]]],
        end_of_data: str,
        providers: Sequence[tuple[str, str]],
    ) -> Iterator[Any]:
        """De-identifies the Patients of one batch, each with its own free-text redactor."""
        path, batch = element
        name = os.path.basename(path)
        for _, raw in batch:
            if not may_be_patient(raw):
                continue
            patient, _ = _parse(raw)
            if patient is not None and patient["resourceType"] == "Patient":
                yield from self._patient(name, patient, end_of_data, providers)

    def _patient(
        self, name: str, patient: dict[str, Any], end_of_data: str, providers: Sequence[tuple[str, str]]
    ) -> Iterator[Any]:
        from components.deidentify.free_text import Redactor, known_identifiers_from_patient

        redactor = Redactor(known_identifiers_from_patient(patient))
        out = deidentify_patient(
            patient,
            self._key,
            self._stats,
            end_of_data,
            self._rules,
            self._policy,
            redactor,
            self._providers.get(providers),
        )
        self._stats[OUT_PREFIX + "Patient"] += 1
        self._stats[FILE_OUT_PREFIX + name] += 1
        self._stats[QI_PREFIX + quasi_identifiers(patient, out, end_of_data, self._policy)] += 1
        if self._reid:
            yield beam.pvalue.TaggedOutput(REID, _reid_line("Patient", patient["id"], out))
        yield "Patient", orjson.dumps(out)

    def finish_bundle(self) -> Iterator[Any]:
        """Emits this bundle's counts."""
        yield beam.pvalue.TaggedOutput(STATS, _emit_once(dict(self._stats)))


class SumCounts(beam.CombineFn):
    """Sums count dictionaries."""

    def create_accumulator(self) -> Counter[str]:
        """Starts empty."""
        return Counter()

    def add_input(self, accumulator: Counter[str], element: Mapping[str, int]) -> Counter[str]:
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
    """Writes ``(resource type, JSON lines joined by newlines)`` records as NDJSON lines."""

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


def _write_resources(records: beam.PCollection, label: str, output_dir: str, work_dir: str) -> None:
    """Writes ``(resource type, NDJSON lines)`` records as ``<ResourceType>.<nnn>.ndjson`` files."""
    _ = records | f"Write{label}" >> fileio.WriteToFiles(
        path=output_dir,
        destination=resource_type_destination,
        sink=lambda _destination: NdjsonSink(),
        file_naming=bulk_file_naming,
        temp_directory=StaticValueProvider(str, FileSystems.join(work_dir, f"beam-temp-{label.lower()}")),
        max_writers_per_bundle=256,
    )


def _write_json(pcoll: beam.PCollection, label: str, path_prefix: str) -> None:
    _ = (
        pcoll
        | f"{label}ToJson" >> beam.Map(lambda value: orjson.dumps(value).decode("utf-8"))
        | f"Write{label}" >> beam.io.WriteToText(path_prefix, num_shards=1, shard_name_template="")
    )


def _read_lines(pipeline: beam.Pipeline, label: str, files: Sequence[str], count: bool = True) -> Any:
    """Reads files as batches of numbered lines: planned byte ranges, redistributed, then read."""
    return (
        pipeline
        | f"{label}Files" >> beam.Create(list(files))
        | f"{label}Chunks" >> beam.ParDo(PlanChunks())
        | f"{label}Spread" >> beam.Reshuffle()
        | f"{label}Lines" >> beam.ParDo(ReadNumberedLines(count)).with_outputs(DEAD, STATS, main="lines")
    )


def run_deidentify(
    input_files: Sequence[str],
    key: bytes,
    policy: Policy,
    output_dir: str,
    dead_letter_path: str,
    work_dir: str,
    options: PipelineOptions,
    reid_path: str | None = None,
    input_dir: str = "",
    lanes: Sequence[str] = (),
) -> None:
    """Runs pipeline 1: de-identify every input line, write outputs, dead letters and counts.

    Args:
        input_files: NDJSON paths (plain or ``.gz``) on any Beam filesystem.
        key: The HMAC key (travels to workers inside the DoFns; never logged).
        policy: The loaded policy.
        output_dir: Directory for ``<ResourceType>.<nnn>.ndjson``.
        dead_letter_path: The dead-letter file path (``.../dead_letter.ndjson``).
        work_dir: Directory for the counts file (``stats.json``) and Beam temp files.
        options: Beam pipeline options (runner etc.).
        reid_path: Re-identification map file prefix (only when the policy allows it).
        input_dir: The input directory (for lanes).
        lanes: Names of registered lanes to run (``LANES``).
    """
    reid = reid_path is not None
    rules = rules_of(policy)
    with beam.Pipeline(options=options) as pipeline:
        lines = _read_lines(pipeline, "Input", input_files)
        crosswalk_lines = _read_lines(pipeline, "Crosswalk", input_files, count=False)
        targets = crosswalk_lines.lines | "CrosswalkEntries" >> beam.ParDo(
            CrosswalkFn(rules.conditional_targets)
        ).with_outputs(PROVIDERS, KNOWN, LINKS, main="entries")
        crosswalk = beam.pvalue.AsDict(targets.entries | "OneIdPerEntry" >> beam.CombinePerKey(min))
        providers = beam.pvalue.AsSingleton(
            targets[PROVIDERS]
            | "DistinctProviderValues" >> beam.Distinct()
            | "ProviderValues" >> beam.combiners.ToList()
        )
        known = (
            targets[KNOWN]
            | "KnownParts" >> beam.ParDo(WriteLookupPartsFn(_join(work_dir, LOOKUP_PARTS_DIR), "known"))
            | "AllKnownParts" >> beam.combiners.ToList()
            | "MergeKnownParts" >> beam.Map(merge_lookup_parts, _join(work_dir, KNOWN_FILE), merge_known)
        )
        parsed = lines.lines | "Deidentify" >> beam.ParDo(
            DeidentifyFn(key, policy, reid), crosswalk, providers, beam.pvalue.AsSingleton(known)
        ).with_outputs(DEAD, STATS, LATEST, REID, main="resources")
        end_of_data = parsed[LATEST] | "EndOfData" >> beam.CombineGlobally(lambda days: max(days, default=""))
        patient_lines = _read_lines(pipeline, "PatientInput", input_files, count=False)
        patients = patient_lines.lines | "DeidentifyPatients" >> beam.ParDo(
            DeidentifyPatientFn(key, policy, reid),
            end_of_data=beam.pvalue.AsSingleton(end_of_data),
            providers=providers,
        ).with_outputs(STATS, REID, main="patients")
        lane_stats, lane_dead = [], []
        links = (
            targets[LINKS]
            | "EncodeLinks" >> beam.Map(lambda link: (link[0], link[1].encode("utf-8")))
            | "LinkParts" >> beam.ParDo(WriteLookupPartsFn(_join(work_dir, LOOKUP_PARTS_DIR), "links"))
            | "AllLinkParts" >> beam.combiners.ToList()
            | "MergeLinkParts" >> beam.Map(merge_lookup_parts, _join(work_dir, LINKS_FILE), smallest_patient_id)
        )
        for lane in lanes:
            context = LaneContext(
                pipeline,
                input_dir,
                output_dir,
                os.path.dirname(dead_letter_path),
                work_dir,
                key,
                policy,
                links,
                known,
            )
            counts, dead_letters = LANES[lane](context)
            lane_stats.append(counts)
            lane_dead.append(dead_letters)
        # One writer per producer (their resource types differ): a Flatten in front of one writer
        # would make the local runner hold every written resource in memory until the last producer ends.
        _write_resources(parsed.resources, "Resources", output_dir, work_dir)
        _write_resources(patients.patients, "Patients", output_dir, work_dir)
        dead = (lines[DEAD], parsed[DEAD], *lane_dead) | "DeadLetters" >> beam.Flatten()
        _ = (
            dead
            | "DeadToText" >> beam.Map(lambda raw: raw.decode("utf-8"))
            | "WriteDeadLetters" >> beam.io.WriteToText(dead_letter_path, num_shards=1, shard_name_template="")
        )
        if reid_path is not None:
            _ = (
                (parsed[REID], patients[REID])
                | "ReidEntries" >> beam.Flatten()
                | "ReidToText" >> beam.Map(lambda raw: raw.decode("utf-8"))
                | "WriteReidMap" >> beam.io.WriteToText(reid_path, num_shards=1, shard_name_template="")
            )
        stats = (lines[STATS], parsed[STATS], patients[STATS], *lane_stats) | "AllStats" >> (beam.Flatten())
        _write_json(stats | "SumStats" >> beam.CombineGlobally(SumCounts()), "Stats", _join(work_dir, STATS_FILE))


def phi_values(
    batch: Iterable[tuple[int, bytes]], min_token_chars: int, stats: Counter[str]
) -> Iterator[tuple[str, tuple[str, ...]]]:
    """``(category, token sequence)`` of every searchable identifying value of a batch of input lines."""
    for _, raw in batch:
        try:
            resource = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(resource, dict):
            continue
        # Without ``raw``: walking every object is cheaper than the byte tests that narrow the walk.
        for category, value in phi_scan.resource_phi_list(resource):
            parts = phi_scan.searchable(value, min_token_chars)
            if parts is None:
                stats["skipped\t" + category] += 1
                continue
            stats["indexed\t" + category] += 1
            yield category, parts


class ExtractPhiFn(beam.DoFn):
    """Adds the identifying values of every input resource to this bundle's Bloom filter, saved as a part.

    Each bundle fills one filter of the final size and writes it to ``<parts_dir>/<uuid>.bin`` in
    ``finish_bundle``; ``merge_bloom_parts`` ORs the parts. No filter travels through the runner:
    as a combine accumulator the local runner pickled and buffered it several times (900 MB at
    100k generated patients for a 100 MB filter).
    """

    def __init__(self, min_token_chars: int, bits: int, hashes: int, parts_dir: str) -> None:
        self._min = min_token_chars
        self._bits = bits
        self._hashes = hashes
        self._parts_dir = parts_dir

    def start_bundle(self) -> None:
        """Resets the per-bundle counts; the filter is created on the first value."""
        self._stats: Counter[str] = Counter()
        self._bloom: phi_scan.Bloom | None = None

    def process(self, element: tuple[str, list[tuple[int, bytes]]]) -> Iterator[Any]:
        """Adds the values of one batch of input lines."""
        sequences = [parts for _, parts in phi_values(element[1], self._min, self._stats)]
        if sequences:
            if self._bloom is None:
                self._bloom = phi_scan.Bloom.empty(self._bits, self._hashes)
            self._bloom.add_sequences(sequences)
        return iter(())

    def finish_bundle(self) -> Iterator[Any]:
        """Saves this bundle's filter (when it has values) and emits it and the counts."""
        if self._bloom is not None:
            path = _join(self._parts_dir, f"{uuid.uuid4().hex}.bin")
            yield _emit_once(save_bloom(self._bloom, path))
            self._bloom = None
        yield beam.pvalue.TaggedOutput(STATS, _emit_once(dict(self._stats)))


class MatchCandidateValuesFn(beam.DoFn):
    """Yields ``(seq_key, category)`` of the input values whose key is a candidate's (exact confirmation).

    The inputs are read and their values extracted a second time, instead of keeping every value
    for a join: only values matching one of the (few) Bloom-positive candidates leave this step.
    A batch is skipped when there is no candidate at all, and a line is parsed only when it may
    hold a candidate's first token (``phi_scan.may_hold_any``).
    """

    def __init__(self, min_token_chars: int) -> None:
        self._min = min_token_chars
        self._source: int | None = None
        self._keys: frozenset[str] = frozenset()
        self._filter: phi_scan.FirstTokenFilter | None = None

    def process(
        self,
        element: tuple[str, list[tuple[int, bytes]]],
        candidate_keys: Sequence[str],
        first_tokens: Sequence[bytes],
    ) -> Iterator[Any]:
        """Extracts the values of one batch of input lines that match a candidate key."""
        if self._source != id(candidate_keys):
            self._keys = frozenset(candidate_keys)
            self._filter = phi_scan.first_token_filter(first_tokens)
            self._source = id(candidate_keys)
        if not self._keys:
            return
        scratch: Counter[str] = Counter()
        lines = [(number, raw) for number, raw in element[1] if phi_scan.may_hold_any(raw, self._filter)]
        for category, parts in phi_values(lines, self._min, scratch):
            key = phi_scan.seq_key(parts)
            if key in self._keys:
                yield key, category


@dataclass(frozen=True)
class BloomFile:
    """A built Bloom filter (or one bundle's part of it) whose bits wait in a file.

    The scan's side input stays a few bytes: a side input or combine accumulator holding the
    filter itself was pickled and buffered several times by the local runner (the scan phase
    peaked at 1.4 GB at 100k generated patients, for a 100 MB filter).

    Attributes:
        path: Where the bit array is (any Beam filesystem; the stage's scratch directory).
        bits: Filter size in bits.
        hashes: Bit positions per item.
        lengths: The sequence lengths present.
        first_lengths: The character lengths of the first tokens present.
        items: Items added.
        false_positive_ppm: The estimated false-positive rate at this fill, per million.
    """

    path: str
    bits: int
    hashes: int
    lengths: tuple[int, ...]
    first_lengths: tuple[int, ...]
    items: int
    false_positive_ppm: int


def save_bloom(bloom: phi_scan.Bloom, path: str) -> BloomFile:
    """Writes the bit array of ``bloom`` to ``path`` (the same bytes on a retry) and describes it."""
    with FileSystems.create(path, mime_type="application/octet-stream") as handle:
        handle.write(bloom.array)
    return BloomFile(
        path,
        bloom.bits,
        bloom.hashes,
        tuple(sorted(bloom.lengths)),
        tuple(sorted(bloom.first_lengths)),
        bloom.items,
        round(bloom.false_positive_rate() * 1e6),
    )


def load_bloom(bloom_file: BloomFile) -> phi_scan.Bloom:
    """Reads a filter written by ``save_bloom``.

    Raises:
        ValueError: The file does not hold ``bits`` bits (truncated or replaced).
    """
    with FileSystems.open(bloom_file.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        array = bytearray(handle.read())
    if len(array) != (bloom_file.bits + 7) // 8:
        raise ValueError(f"Bloom filter file holds {len(array)} bytes, not the {bloom_file.bits} bits it was saved as")
    return phi_scan.Bloom(
        bloom_file.bits,
        bloom_file.hashes,
        array,
        set(bloom_file.lengths),
        set(bloom_file.first_lengths),
        bloom_file.items,
    )


MERGE_BLOCK_BYTES = 8 << 20  # parts are ORed this many bytes at a time


def merge_bloom_parts(parts: Sequence[BloomFile], path: str, bits: int, hashes: int) -> BloomFile:
    """ORs the bundles' filter parts into one file at ``path`` block by block; deletes the parts.

    An input with no searchable value at all gives an empty filter of the same size.

    Args:
        parts: The parts ``ExtractPhiFn`` saved (each of ``bits`` bits).
        path: Where the merged filter goes.
        bits: Filter size in bits.
        hashes: Bit positions per item.

    Raises:
        ValueError: A part has another size than ``bits``.
    """
    for part in parts:
        if (part.bits, part.hashes) != (bits, hashes):
            raise ValueError(f"Bloom filter part of {part.bits} bits/{part.hashes} hashes, not {bits}/{hashes}")
    size = (bits + 7) // 8
    handles = [FileSystems.open(part.path, compression_type=CompressionTypes.UNCOMPRESSED) for part in parts]
    set_bits = 0
    try:
        with FileSystems.create(path, mime_type="application/octet-stream") as out:
            for offset in range(0, size, MERGE_BLOCK_BYTES):
                length = min(MERGE_BLOCK_BYTES, size - offset)
                block = np.zeros(length, dtype=np.uint8)
                for handle in handles:
                    data = handle.read(length)
                    if len(data) != length:
                        raise ValueError(f"Bloom filter part is shorter than its {bits} bits")
                    np.bitwise_or(block, np.frombuffer(data, dtype=np.uint8), out=block)
                set_bits += int(np.bitwise_count(block).sum(dtype=np.int64))
                out.write(block.tobytes())
    finally:
        for handle in handles:
            handle.close()
    if parts:
        FileSystems.delete([part.path for part in parts])
    return BloomFile(
        path,
        bits,
        hashes,
        tuple(sorted({n for part in parts for n in part.lengths})),
        tuple(sorted({n for part in parts for n in part.first_lengths})),
        sum(part.items for part in parts),
        round((set_bits / bits) ** hashes * 1e6),
    )


class ScanFn(beam.DoFn):
    """Counts lines per output file type and emits Bloom-positive candidates for confirmation.

    Identical candidates (same sequence key, file kind, flag and length) are counted together per
    bundle and leave as ``(key, (kind, flag, length, occurrences))``: the local runner holds every
    candidate until the confirmation's join, and at 100k generated patients most candidates are a
    few values repeated (an MRN that is also a SNOMED CT code: about 170k whole-code matches).
    The per-bundle counts are flushed at ``CANDIDATE_FLUSH`` distinct candidates.
    """

    def __init__(self) -> None:
        self._loaded: tuple[str, phi_scan.Bloom] | None = None

    def start_bundle(self) -> None:
        """Resets the per-bundle counts and candidates."""
        self._stats: Counter[str] = Counter()
        self._candidates: Counter[tuple[str, str, str, int]] = Counter()
        self._first_tokens: set[bytes] = set()

    def _bloom(self, bloom_file: BloomFile) -> phi_scan.Bloom:
        """The filter, read once per worker (its token caches live as long as it does)."""
        if self._loaded is None or self._loaded[0] != bloom_file.path:
            self._loaded = (bloom_file.path, load_bloom(bloom_file))
        return self._loaded[1]

    def process(self, element: tuple[str, list[tuple[int, bytes]]], bloom_file: BloomFile) -> Iterator[Any]:
        """Scans one batch of output lines."""
        bloom = self._bloom(bloom_file)
        file_name, batch = element
        lane = os.path.basename(os.path.dirname(file_name))
        kind = lane if lane in LANE_DIRS else os.path.basename(file_name).split(".", 1)[0]
        self._stats["lines\t" + kind] += len(batch)
        candidates = self._candidates
        for _, raw in batch:
            for key, flag, length, first in phi_scan.line_candidates_with_first_token(raw.rstrip(b"\r\n"), bloom):
                self._stats["bloom_candidates"] += 1
                candidates[key, kind, flag, length] += 1
                self._first_tokens.add(first)
        if len(candidates) >= CANDIDATE_FLUSH:
            yield from self._flush(lambda value: value)

    def _flush(self, wrap: Callable[[Any], Any]) -> Iterator[Any]:
        """Emits the counted candidates and first tokens (``wrap``: for output from ``finish_bundle``)."""
        for (key, kind, flag, length), occurrences in self._candidates.items():
            yield wrap((key, (kind, flag, length, occurrences)))
        for first in self._first_tokens:
            yield beam.pvalue.TaggedOutput(FIRST_TOKENS, wrap(first))
        self._candidates = Counter()
        self._first_tokens = set()

    def finish_bundle(self) -> Iterator[Any]:
        """Emits this bundle's remaining candidates and its counts."""
        yield from self._flush(_emit_once)
        yield beam.pvalue.TaggedOutput(STATS, _emit_once(dict(self._stats)))


def _bloom_stats(bloom: BloomFile) -> dict[str, int]:
    return {"bloom_bits": bloom.bits, "bloom_items": bloom.items, "bloom_fpr_ppm": bloom.false_positive_ppm}


def _confirm(element: tuple[str, Mapping[str, Iterable[Any]]]) -> Iterator[dict[str, int]]:
    _, groups = element
    candidates = list(groups["candidates"])
    if candidates:
        counts = phi_scan.confirm(groups["values"], candidates)
        if counts:
            yield dict(counts)


def bloom_bits(settings: Mapping[str, Any], input_resources: int) -> int:
    """The Bloom filter size for an input: ``bloom_bits`` at least, ``bloom_bits_per_resource`` each.

    A filter of fixed size fills up as the input grows: at 10k generated patients (1.3M resources,
    5M filter entries in 32 Mbit) about 2% of lookups were false positives, which made the scan's
    candidates (and its time and memory) grow faster than the input. Sizing by the input keeps the
    fill, and so the false-positive rate, the same at every size.

    Args:
        settings: The policy's ``residual_scan`` section.
        input_resources: Resources read from the input (their values fill the filter).

    Returns:
        Bits, a multiple of 64, at most ``MAX_BLOOM_BITS``.
    """
    minimum = int(settings.get("bloom_bits", 1 << 25))
    per_resource = int(settings.get("bloom_bits_per_resource", BLOOM_BITS_PER_RESOURCE))
    wanted = max(minimum, per_resource * input_resources)
    return min(MAX_BLOOM_BITS, (wanted + 63) // 64 * 64)


def run_scan(
    input_files: Sequence[str],
    scanned_globs: Sequence[str],
    work_dir: str,
    options: PipelineOptions,
    policy: Policy,
    input_resources: int = 0,
) -> None:
    """Runs pipeline 2: residual-PHI scan of the written outputs.

    Args:
        input_files: Every input NDJSON file (the values of every resource are searched).
        scanned_globs: File patterns of everything the stage wrote (outputs and dead letters).
        work_dir: Directory for the result file ``scan.json``.
        options: Beam pipeline options.
        policy: The policy (``residual_scan`` sizes the Bloom filter).
        input_resources: Resources pipeline 1 read (the Bloom filter grows with them, see ``bloom_bits``).
    """
    settings = policy.document.get("residual_scan", {})
    bits = bloom_bits(settings, input_resources)
    hashes = int(settings.get("bloom_hashes", 7))
    with beam.Pipeline(options=options) as pipeline:
        min_token_chars = int(settings.get("min_token_chars", phi_scan.MIN_TOKEN_CHARS))
        values = _read_lines(pipeline, "Scan", input_files, count=False).lines | "ExtractPhi" >> beam.ParDo(
            ExtractPhiFn(min_token_chars, bits, hashes, _join(work_dir, BLOOM_PARTS_DIR))
        ).with_outputs(STATS, main="parts")
        bloom = (
            values.parts
            | "AllBloomParts" >> beam.combiners.ToList()
            | "MergeBloomParts" >> beam.Map(merge_bloom_parts, _join(work_dir, BLOOM_FILE), bits, hashes)
        )
        side = beam.pvalue.AsSingleton(bloom)
        scanned = sorted(
            {metadata.path for match in FileSystems.match(list(scanned_globs)) for metadata in match.metadata_list}
        )
        scan = _read_lines(pipeline, "Output", scanned, count=False).lines | "ScanOutputs" >> beam.ParDo(
            ScanFn(), side
        ).with_outputs(STATS, FIRST_TOKENS, main="candidates")
        scans = [scan]
        candidates = scan.candidates
        candidate_keys = (
            candidates
            | "CandidateKeys" >> beam.Map(lambda candidate: candidate[0])
            | "DistinctCandidateKeys" >> beam.Distinct()
        )
        first_tokens = scan[FIRST_TOKENS] | "DistinctFirstTokens" >> beam.Distinct()
        matched = _read_lines(pipeline, "Confirm", input_files, count=False).lines | "MatchCandidates" >> beam.ParDo(
            MatchCandidateValuesFn(min_token_chars),
            beam.pvalue.AsList(candidate_keys),
            beam.pvalue.AsList(first_tokens),
        )
        confirmed = (
            {"values": matched, "candidates": candidates}
            | "ConfirmCandidates" >> beam.CoGroupByKey()
            | "Confirm" >> beam.FlatMap(_confirm)
        )
        bloom_stats = bloom | "BloomStats" >> beam.Map(_bloom_stats)
        totals = (
            (*[scan[STATS] for scan in scans], values[STATS], confirmed, bloom_stats)
            | "AllScans" >> beam.Flatten()
            | "SumScans" >> beam.CombineGlobally(SumCounts())
        )
        _write_json(totals, "Scan", _join(work_dir, SCAN_FILE))


def _join(directory: str, name: str) -> str:
    return FileSystems.join(directory, name)


def read_json(path: str) -> dict[str, int]:
    """Reads one of the small JSON count files the pipelines write."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        text = handle.read().strip()
    return orjson.loads(text) if text else {}
