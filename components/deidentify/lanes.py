"""The DICOM, device-log and document lanes of the deidentify pipeline (plugged into ``pipeline.LANES``).

Each lane reads ``<input>/<lane>/*`` (the ingest layout), de-identifies every file with the pure
functions of its module (``components.deidentify.dicom.deidentify.deidentify_dicom``,
``components.deidentify.device_logs.deidentify_device_log``) using the patient crosswalk built from
the FHIR Patients (``pipeline.LaneContext.patient_links``: MRN -> FHIR Patient id, so a linked
patient's DICOM and device logs shift by the FHIR patient's date offset), writes the result under
``<output>/<lane>/`` and returns counts (``lane_in``/``lane_out``/``lane_dead`` per lane) and
dead-letter records ``{"source", "line", "reason"}`` (quarantined DICOM files included, with their
reason code). Nothing here logs or reports a value from a file.

The ``documents`` lane takes the text the ingest PDF lane extracted (``documents/<sha256>.json``;
the PDF itself is never copied out, its pages may carry PHI in images or metadata), links it to the
patient through the MRN found in it, redacts the patient's own identifiers and pattern-based PHI
with ``components.deidentify.free_text.Redactor``, checks that none of the patient's known values
survives (a document that still holds one goes to the dead letter: fail closed), and writes
``documents/<HMAC of the sha256>.json`` with the patient's pseudonym and per-category counts.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from components.deidentify import pipeline
from components.deidentify.lookup_files import LookupFile, LookupReader, TextLookup

LANE_IN_PREFIX = "lane_in\t"
LANE_OUT_PREFIX = "lane_out\t"
LANE_DEAD_PREFIX = "lane_dead\t"
LANE_COUNT_PREFIX = "lane_count\t"
# Document headers and signatures name clinicians and facilities ("Dr. Jane Roe", "Springfield General
# Hospital"); a facility name often carries the town, a geographic unit smaller than a state.
CLINICIAN_NAME = re.compile(r"\b(?:Dr|Doctor|Prof)\.?\s+[A-Z][a-z'-]+(?:\s+[A-Z]\.)?(?:\s+[A-Z][a-z'-]+)?")
FACILITY_NAME = re.compile(
    r"\b(?:[A-Z][A-Za-z'-]+\s+){1,4}(?:Hospital|Medical Center|Health Center|Clinic|Infirmary)\b"
)


def redact_care_team(text: str) -> tuple[str, Counter[str]]:
    """Replaces clinician names (``Dr. Given Family``) and facility names; counts each category."""
    counts: Counter[str] = Counter()
    for category, pattern in (("clinician", CLINICIAN_NAME), ("facility", FACILITY_NAME)):
        text, replaced = pattern.subn(f"[{category.upper()}]", text)
        if replaced:
            counts[category] += replaced
    return text, counts


def _list(directory: str) -> list[str]:
    if "://" not in directory and not os.path.isdir(directory):
        return []
    return sorted(m.path for m in FileSystems.match([FileSystems.join(directory, "*")])[0].metadata_list)


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return bytes(handle.read())


def _write(path: str, data: bytes) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def _dead(lane: str, name: str, line: int, reason: str) -> Any:
    return beam.pvalue.TaggedOutput(
        pipeline.DEAD, orjson.dumps({"source": f"{lane}/{name}", "line": line, "reason": reason})
    )


class LinkedFileFn(beam.DoFn):
    """A lane's DoFn that links each file to its patient through the patient-links lookup file."""

    def setup(self) -> None:
        """The lookup file is opened on first use."""
        self._links = LookupReader()

    def teardown(self) -> None:
        """Closes the lookup file."""
        self._links.close()

    def _crosswalk(self, links_file: LookupFile) -> Mapping[str, str]:
        """Identifier value (MRN, ...) -> original FHIR Patient id."""
        return TextLookup(self._links.use(links_file), links_file.keys)


class DicomFileFn(LinkedFileFn):
    """De-identifies one DICOM file."""

    def __init__(self, key: bytes, dicom_section: Mapping[str, Any], source: str, output_dir: str) -> None:
        self._key = key
        self._section = dict(dicom_section)
        self._source = source
        self._output_dir = output_dir

    def setup(self) -> None:
        """Parses the ``dicom:`` policy section once per worker."""
        from components.deidentify.dicom.policy import parse_dicom_policy

        super().setup()
        self._policy = parse_dicom_policy(self._section, self._source)

    def _residual(self, original: bytes, output: bytes) -> int:
        """Counts identifying values of the input file found anywhere in its de-identified output.

        The check parses the input again with pydicom (``components.deidentify.dicom.residual``), so its
        identifying values do not depend on the de-identification's parse or decisions.
        """
        from components.deidentify.dicom.residual import residual_hits

        return sum(residual_hits(original, output, self._policy).values())

    def process(self, path: str, links_file: LookupFile) -> Iterator[Any]:
        """Yields counts (main output) and a dead letter when the file is not written (fail closed)."""
        from components.deidentify.dicom.deidentify import deidentify_dicom

        crosswalk = self._crosswalk(links_file)
        name = os.path.basename(path)
        data = _read(path)
        result = deidentify_dicom(data, self._key, self._policy, crosswalk)
        counts: Counter[str] = Counter({LANE_IN_PREFIX + "dicom": 1})
        counts[f"{LANE_COUNT_PREFIX}dicom\t{result.outcome}"] += 1
        counts[f"{LANE_COUNT_PREFIX}dicom\tpatients_{result.patient_link}"] += 1
        for action, count in result.action_counts.items():
            counts[f"{LANE_COUNT_PREFIX}dicom\t{action}"] += count
        if result.outcome == "deidentified" and result.output is not None:
            residual = self._residual(data, result.output)
            if residual:
                counts[LANE_DEAD_PREFIX + "dicom"] += 1
                counts[f"{LANE_COUNT_PREFIX}dicom\tresidual_phi_files"] += 1
                yield _dead("dicom", name, 0, f"residual_phi: {residual} identifying values of the input survived")
                yield dict(counts)
                return
            _write(FileSystems.join(self._output_dir, name), result.output)
            counts[LANE_OUT_PREFIX + "dicom"] += 1
        else:
            counts[LANE_DEAD_PREFIX + "dicom"] += 1
            yield _dead("dicom", name, 0, f"{result.reason_code}: {result.reason}")
        yield dict(counts)


class DeviceLogFileFn(LinkedFileFn):
    """De-identifies one device-log file (JSONL or CSV)."""

    def __init__(self, key: bytes, output_dir: str) -> None:
        self._key = key
        self._output_dir = output_dir

    def process(self, path: str, links_file: LookupFile) -> Iterator[Any]:
        """Yields counts (main output) and one dead letter per rejected row."""
        from components.deidentify.device_logs import deidentify_device_log

        name = os.path.basename(path)
        result = deidentify_device_log(name, _read(path), self._key, self._crosswalk(links_file))
        counts: Counter[str] = Counter()
        counts[LANE_IN_PREFIX + "device_logs"] += result.counts["records_in"] + (
            1 if result.counts["records_in"] == 0 and result.dead_letter else 0
        )
        counts[LANE_OUT_PREFIX + "device_logs"] += result.counts["records_out"]
        counts[LANE_DEAD_PREFIX + "device_logs"] += len(result.dead_letter)
        for measure, count in result.counts.items():
            counts[f"{LANE_COUNT_PREFIX}device_logs\t{measure}"] += count
        if result.lines:
            _write(FileSystems.join(self._output_dir, name), ("\n".join(result.lines) + "\n").encode("utf-8"))
        for entry in result.dead_letter:
            yield _dead("device_logs", name, int(entry["line"]), f"{entry['reason_code']}: {entry['reason']}")
        yield dict(counts)


class DocumentFileFn(LinkedFileFn):
    """Redacts the extracted text of one PDF document."""

    def __init__(self, key: bytes, output_dir: str) -> None:
        self._key = key
        self._output_dir = output_dir

    def setup(self) -> None:
        """The lookup files are opened on first use."""
        super().setup()
        self._known = LookupReader()

    def teardown(self) -> None:
        """Closes the lookup files."""
        super().teardown()
        self._known.close()

    def process(self, path: str, links_file: LookupFile, known_file: LookupFile) -> Iterator[Any]:
        """Yields counts (main output) and a dead letter when the document is not written."""
        from components.deidentify.dicom.linkage import link_patient
        from components.deidentify.free_text import Redactor
        from components.deidentify.keys import hmac_hex

        name = os.path.basename(path)
        counts: Counter[str] = Counter({LANE_IN_PREFIX + "documents": 1})
        if not name.endswith(".json"):
            counts[LANE_DEAD_PREFIX + "documents"] += 1
            yield _dead("documents", name, 0, "unexpected_file: documents/ holds <sha256>.pdf and <sha256>.json only")
            yield dict(counts)
            return
        try:
            document = orjson.loads(_read(path))
            text = document["text"]
            if not isinstance(text, str):
                raise TypeError("text")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            counts[LANE_DEAD_PREFIX + "documents"] += 1
            yield _dead("documents", name, 0, "malformed_document: not the ingest PDF lane's JSON (text missing)")
            yield dict(counts)
            return
        mrn = document.get("patient_mrn") or ""
        crosswalk = self._crosswalk(links_file)
        link = link_patient(self._key, mrn, crosswalk)
        fhir_id = crosswalk.get(mrn) if mrn else None
        identifiers = pipeline.known_of(self._known.use(known_file), fhir_id)
        care_team_redacted, redactions = redact_care_team(text)
        redacted, patient_redactions = Redactor(identifiers).redact(care_team_redacted)
        redactions.update(patient_redactions)
        counts[f"{LANE_COUNT_PREFIX}documents\tpatients_{'linked' if link.linked else 'unlinked'}"] += 1
        for category, count in redactions.items():
            counts[f"{LANE_COUNT_PREFIX}documents\tredacted_{category}"] += count
        if identifiers is not None and Redactor(identifiers, frozenset()).redact(redacted)[1]:
            counts[LANE_DEAD_PREFIX + "documents"] += 1
            yield _dead("documents", name, 0, "residual_phi: a known identifier of the patient survived redaction")
            yield dict(counts)
            return
        output = {
            "document": hmac_hex(self._key, "Document/" + str(document.get("sha256", name))),
            "patient": link.pseudonym,
            "pages": document.get("pages"),
            "ocr_pages": document.get("ocr_pages", []),
            "text": redacted,
            "redactions": dict(sorted(redactions.items())),
        }
        _write(FileSystems.join(self._output_dir, output["document"] + ".json"), orjson.dumps(output) + b"\n")
        counts[LANE_OUT_PREFIX + "documents"] += 1
        yield dict(counts)


def _crosswalk(context: pipeline.LaneContext) -> Any:
    return beam.pvalue.AsSingleton(context.patient_links)


def _prepare(context: pipeline.LaneContext, lane: str) -> tuple[list[str], str]:
    files = _list(FileSystems.join(context.input_dir, lane))
    output = FileSystems.join(context.output_dir, lane)
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    return files, output


def dicom_lane(context: pipeline.LaneContext) -> tuple[beam.PCollection, beam.PCollection]:
    """Adds the DICOM lane; returns (counts, dead letters)."""
    files, output = _prepare(context, "dicom")
    results = (
        context.pipeline
        | "DicomFiles" >> beam.Create(files)
        | "DeidentifyDicom"
        >> beam.ParDo(
            DicomFileFn(context.key, context.policy.document.get("dicom", {}), context.policy.source, output),
            _crosswalk(context),
        ).with_outputs(pipeline.DEAD, main="counts")
    )
    return results.counts, results[pipeline.DEAD]


def device_log_lane(context: pipeline.LaneContext) -> tuple[beam.PCollection, beam.PCollection]:
    """Adds the device-log lane; returns (counts, dead letters)."""
    files, output = _prepare(context, "device_logs")
    results = (
        context.pipeline
        | "DeviceLogFiles" >> beam.Create(files)
        | "DeidentifyDeviceLogs"
        >> beam.ParDo(DeviceLogFileFn(context.key, output), _crosswalk(context)).with_outputs(
            pipeline.DEAD, main="counts"
        )
    )
    return results.counts, results[pipeline.DEAD]


def document_lane(context: pipeline.LaneContext) -> tuple[beam.PCollection, beam.PCollection]:
    """Adds the document lane (extracted PDF text); returns (counts, dead letters)."""
    files, output = _prepare(context, "documents")
    # The PDFs stay behind by design (their pages may hold PHI in images or metadata); any other
    # file is unexpected and goes to the dead letter rather than being skipped silently.
    texts = [path for path in files if not path.endswith(".pdf")]
    known = beam.pvalue.AsSingleton(context.known_identifiers)
    results = (
        context.pipeline
        | "DocumentFiles" >> beam.Create(texts)
        | "RedactDocuments"
        >> beam.ParDo(DocumentFileFn(context.key, output), _crosswalk(context), known).with_outputs(
            pipeline.DEAD, main="counts"
        )
    )
    return results.counts, results[pipeline.DEAD]


pipeline.LANES.setdefault("dicom", dicom_lane)
pipeline.LANES.setdefault("documents", document_lane)
pipeline.LANES.setdefault("device_logs", device_log_lane)
