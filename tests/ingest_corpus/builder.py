"""Builds the ingest bad-input corpus into a directory, deterministically.

``build_bad_corpus(dest)`` writes every case of ``EXPECTED`` (file name -> lane, outcome, reason
code) and returns ``{name: path}``. ``CASE_LIMITS`` holds the few cases that need a small
configured limit. ``build_valid_dicom(path)`` and friends are reused by the positive tests and the
DICOM bench.
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pypdf import PdfWriter
from pypdf.generic import (
    ArrayObject,
    DecodedStreamObject,
    DictionaryObject,
    NameObject,
    NumberObject,
    TextStringObject,
)

from components.ingest.limits import IngestLimits


@dataclass(frozen=True)
class Expected:
    lane: str
    outcome: str
    reason_code: str


# --------------------------------------------------------------------------- DICOM


def dicom_dataset(index: int = 0, rows: int = 8, columns: int = 8) -> Dataset:
    """A small valid Secondary Capture instance with deterministic UIDs (fake identifiers)."""
    rng = random.Random(f"corpus-dicom/{index}")
    ds = Dataset()
    ds.PatientName = "CORPUS^TEST"
    ds.PatientID = f"MRN-{index:05d}"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study-{index // 10}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series-{index // 5}"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"instance-{index}"])
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.StudyDate = "20240101"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(rng.randrange(256) for _ in range(rows * columns))
    return ds


def write_dicom(path: Path, ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Writes ``ds`` as a DICOM Part 10 file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", SecondaryCaptureImageStorage)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3.4")
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def build_valid_dicom(path: Path, index: int = 0, rows: int = 8, columns: int = 8) -> Path:
    """Writes a valid instance (see ``dicom_dataset``)."""
    return write_dicom(path, dicom_dataset(index, rows, columns))


def _dicom_bytes(index: int = 0, rows: int = 64, columns: int = 64) -> bytes:
    buffer = io.BytesIO()
    ds = dicom_dataset(index, rows, columns)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _dicom_without(path: Path, keyword: str) -> None:
    ds = dicom_dataset(3)
    delattr(ds, keyword)
    write_dicom(path, ds)


def _dicom_unsupported_ts(path: Path) -> None:
    ds = dicom_dataset(4)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(60) + b"\xff\xd9"])
    write_dicom(path, ds, JPEGLSLossless)


def _dicom_no_preamble(path: Path) -> None:
    fp = pydicom.filebase.DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, dicom_dataset(5))
    path.write_bytes(fp.getvalue())


def _dicom_encapsulated_truncated(path: Path) -> None:
    ds = dicom_dataset(6)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(400) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    write_dicom(path, ds, "1.2.840.10008.1.2.4.50")
    data = path.read_bytes()
    path.write_bytes(data[:-200])


# --------------------------------------------------------------------------- PDF


def _plain_pdf_writer(text_pages: int = 1) -> PdfWriter:
    writer = PdfWriter()
    for _ in range(text_pages):
        writer.add_blank_page(width=200, height=200)
    return writer


def _save(writer: PdfWriter, path: Path) -> None:
    with open(path, "wb") as handle:
        writer.write(handle)


def _js_action(writer: PdfWriter, script: str = "app.alert('x');") -> DictionaryObject:
    action = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Action"),
            NameObject("/S"): NameObject("/JavaScript"),
            NameObject("/JS"): TextStringObject(script),
        }
    )
    return action


def _pdf_names_js(path: Path) -> None:
    writer = _plain_pdf_writer()
    tree = DictionaryObject(
        {NameObject("/Names"): ArrayObject([TextStringObject("init"), writer._add_object(_js_action(writer))])}
    )
    writer._root_object[NameObject("/Names")] = DictionaryObject({NameObject("/JavaScript"): writer._add_object(tree)})
    _save(writer, path)


def _pdf_open_action_js(path: Path) -> None:
    writer = _plain_pdf_writer()
    writer._root_object[NameObject("/OpenAction")] = writer._add_object(_js_action(writer))
    _save(writer, path)


def _pdf_launch(path: Path) -> None:
    writer = _plain_pdf_writer()
    launch = DictionaryObject(
        {
            NameObject("/S"): NameObject("/Launch"),
            NameObject("/F"): TextStringObject("cmd.exe"),
        }
    )
    writer._root_object[NameObject("/OpenAction")] = writer._add_object(launch)
    _save(writer, path)


def _pdf_embedded(path: Path) -> None:
    writer = _plain_pdf_writer()
    writer.add_attachment("payload.txt", b"hidden data")
    _save(writer, path)


def _pdf_encrypted(path: Path) -> None:
    writer = _plain_pdf_writer()
    writer.encrypt(user_password="u", owner_password="o", algorithm="AES-128")
    _save(writer, path)


def _pdf_xfa(path: Path) -> None:
    writer = _plain_pdf_writer()
    xfa = DecodedStreamObject()
    xfa.set_data(b"<xdp:xdp xmlns:xdp='http://ns.adobe.com/xdp/'></xdp:xdp>")
    acro = DictionaryObject({NameObject("/Fields"): ArrayObject(), NameObject("/XFA"): writer._add_object(xfa)})
    writer._root_object[NameObject("/AcroForm")] = writer._add_object(acro)
    _save(writer, path)


def _pdf_page_aa(path: Path) -> None:
    writer = _plain_pdf_writer()
    page = writer.pages[0]
    page[NameObject("/AA")] = DictionaryObject({NameObject("/O"): writer._add_object(_js_action(writer))})
    _save(writer, path)


def _pdf_annotation_launch(path: Path) -> None:
    writer = _plain_pdf_writer()
    annotation = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Annot"),
            NameObject("/Subtype"): NameObject("/Link"),
            NameObject("/Rect"): ArrayObject([NumberObject(0), NumberObject(0), NumberObject(50), NumberObject(50)]),
            NameObject("/A"): DictionaryObject(
                {NameObject("/S"): NameObject("/Launch"), NameObject("/F"): TextStringObject("run.sh")}
            ),
        }
    )
    writer.pages[0][NameObject("/Annots")] = ArrayObject([writer._add_object(annotation)])
    _save(writer, path)


def _pdf_rich_media(path: Path) -> None:
    writer = _plain_pdf_writer()
    annotation = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Annot"),
            NameObject("/Subtype"): NameObject("/RichMedia"),
            NameObject("/Rect"): ArrayObject([NumberObject(0), NumberObject(0), NumberObject(50), NumberObject(50)]),
        }
    )
    writer.pages[0][NameObject("/Annots")] = ArrayObject([writer._add_object(annotation)])
    _save(writer, path)


def raw_pdf(objects: list[bytes], root: int = 1) -> bytes:
    """A hand-made PDF from ``N 0 obj`` bodies (numbered from 1), with a correct xref table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref)
    return bytes(out)


_MINIMAL_OBJECTS = [
    b"<< /Type /Catalog /Pages 2 0 R >>",
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
]


def _pdf_unreferenced_js(path: Path) -> None:
    path.write_bytes(raw_pdf([*_MINIMAL_OBJECTS, b"<< /S /JavaScript /JS (app.alert(1)) >>"]))


def _pdf_hex_escaped_js(path: Path) -> None:
    catalog = b"<< /Type /Catalog /Pages 2 0 R /OpenAction 4 0 R >>"
    action = b"<< /S /J#61vaScript /J#53 (app.alert(2)) >>"
    path.write_bytes(raw_pdf([catalog, *_MINIMAL_OBJECTS[1:], action]))


def _pdf_truncated(path: Path) -> None:
    path.write_bytes(raw_pdf(list(_MINIMAL_OBJECTS))[:120])


def _pdf_broken_structure(path: Path) -> None:
    path.write_bytes(b"%PDF-1.4\nthis is not a pdf body at all\n%%EOF\n")


def valid_pdf_bytes() -> bytes:
    """A small PDF with a text layer."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_creation_date(datetime(2024, 1, 1, tzinfo=timezone.utc))
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, "Clinical note for corpus testing. MRN: CORPUS-1. Patient is doing well today.")
    return bytes(pdf.output())


# --------------------------------------------------------------------------- device logs

DEVICE_HEADER = "device_id,patient_mrn,timestamp,metric,value,unit\n"


def _device_rows(*rows: str) -> str:
    return DEVICE_HEADER + "".join(row + "\n" for row in rows)


GOOD_ROWS = (
    "MON-1,MRN-1,2024-03-04T08:00:00-05:00,heart_rate,72,bpm",
    "MON-1,MRN-1,2024-03-04T08:00:00-05:00,spo2,97,%",
    "MON-1,MRN-1,2024-03-04T08:15:00-05:00,temperature,36.8,Cel",
)


# --------------------------------------------------------------------------- generic


def _elf() -> bytes:
    return b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHI", 2, 62, 1) + bytes(200)


def _pe() -> bytes:
    return b"MZ\x90\x00" + bytes(56) + b"PE\x00\x00" + bytes(200)


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4), 0).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def _zeros_gzip(path: Path, size: int, prefix: bytes = b"") -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    with open(path, "wb") as handle:
        handle.write(compressor.compress(prefix))
        for _ in range(size // len(chunk)):
            handle.write(compressor.compress(chunk))
        handle.write(compressor.flush())


def _tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("notes.txt")
        info.size = 5
        info.mtime = 0
        archive.addfile(info, io.BytesIO(b"hello"))
    return buffer.getvalue()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


PATIENT_LINE = b'{"resourceType":"Patient","id":"p1"}\n'


def _patient_line(index: int) -> bytes:
    rng = random.Random(index)
    return orjson.dumps({"resourceType": "Patient", "id": f"p{index}", "note": rng.randbytes(24).hex()}) + b"\n"


# --------------------------------------------------------------------------- the table

Writer = Callable[[Path], None]


def _bytes(data: bytes) -> Writer:
    return lambda path: path.write_bytes(data)


def _text(data: str) -> Writer:
    return lambda path: path.write_text(data, encoding="utf-8")


CASES: dict[str, tuple[Writer, Expected]] = {
    # FHIR
    "Patient.truncated.ndjson": (
        _bytes(PATIENT_LINE + b'{"resourceType":"Patient","id":"p2","na'),
        Expected("fhir", "quarantine", "invalid_json_line"),
    ),
    "Patient.notjson.ndjson": (
        _text("hello world\nthis is not json\n"),
        Expected("fhir", "quarantine", "invalid_json_line"),
    ),
    "Observation.wrongtype.ndjson": (_bytes(PATIENT_LINE), Expected("fhir", "quarantine", "resource_type_mismatch")),
    "Patient.truncated.ndjson.gz": (
        _bytes(_gz(b"".join(_patient_line(i) for i in range(2000)))[:4000]),
        Expected("fhir", "quarantine", "truncated_gzip"),
    ),
    "Patient.bomb.ndjson.gz": (
        lambda p: _zeros_gzip(p, 64 * 1024 * 1024, PATIENT_LINE),
        Expected("fhir", "reject", "decompression_bomb"),
    ),
    "Patient.empty.ndjson": (_bytes(b""), Expected("fhir", "quarantine", "empty_file")),
    "Patient.blank.ndjson": (_bytes(b"\n\n  \n"), Expected("fhir", "quarantine", "empty_file")),
    "Patient.bom.ndjson": (_bytes(b"\xef\xbb\xbf" + PATIENT_LINE), Expected("fhir", "quarantine", "byte_order_mark")),
    "Patient.latin1.ndjson": (
        _bytes(b'{"resourceType":"Patient","id":"caf\xe9"}\n'),
        Expected("fhir", "quarantine", "invalid_encoding"),
    ),
    "Patient.binary.ndjson": (_bytes(bytes(range(256)) * 4), Expected("fhir", "reject", "content_type_not_allowed")),
    "Patient.array.ndjson": (_bytes(b"[1, 2, 3]\n"), Expected("fhir", "quarantine", "not_json_object")),
    "resources.ndjson": (_bytes(PATIENT_LINE), Expected("fhir", "quarantine", "resource_type_not_in_name")),
    "Patient.gzipped.ndjson": (_bytes(_gz(PATIENT_LINE)), Expected("fhir", "quarantine", "extension_mismatch")),
    # DICOM
    "text.dcm": (_text("This is a radiology report, not an image.\n"), Expected("dicom", "quarantine", "not_dicom")),
    "report_pdf.dcm": (_bytes(valid_pdf_bytes()), Expected("dicom", "quarantine", "not_dicom")),
    "zero.dcm": (_bytes(b""), Expected("dicom", "quarantine", "empty_file")),
    "truncated_header.dcm": (
        _bytes(_dicom_bytes(1)[:330]),
        Expected("dicom", "quarantine", "truncated_file"),
    ),
    "truncated_mid_header.dcm": (
        _bytes(_dicom_bytes(1)[:515]),
        Expected("dicom", "quarantine", "truncated_file"),
    ),
    "truncated_pixels.dcm": (_bytes(_dicom_bytes(2)[:-1500]), Expected("dicom", "quarantine", "truncated_pixel_data")),
    "truncated_encapsulated.dcm": (
        _dicom_encapsulated_truncated,
        Expected("dicom", "quarantine", "truncated_pixel_data"),
    ),
    "no_sop_instance.dcm": (
        lambda p: _dicom_without(p, "SOPInstanceUID"),
        Expected("dicom", "quarantine", "missing_required_attribute"),
    ),
    "no_study.dcm": (
        lambda p: _dicom_without(p, "StudyInstanceUID"),
        Expected("dicom", "quarantine", "missing_required_attribute"),
    ),
    "no_patient_id.dcm": (
        lambda p: _dicom_without(p, "PatientID"),
        Expected("dicom", "quarantine", "missing_required_attribute"),
    ),
    "jpeg_ls.dcm": (_dicom_unsupported_ts, Expected("dicom", "quarantine", "unsupported_transfer_syntax")),
    "no_preamble.dcm": (_dicom_no_preamble, Expected("dicom", "quarantine", "dicom_missing_preamble")),
    # device logs
    "missing_column.csv": (
        _text("device_id,patient_mrn,timestamp,metric,value\nMON-1,MRN-1,2024-03-04T08:00:00Z,heart_rate,72\n"),
        Expected("device_logs", "quarantine", "missing_column"),
    ),
    "non_numeric.csv": (
        _text(_device_rows(GOOD_ROWS[0], "MON-1,MRN-1,2024-03-04T08:05:00-05:00,heart_rate,fast,bpm")),
        Expected("device_logs", "quarantine", "invalid_value"),
    ),
    "bad_timestamp.csv": (
        _text(_device_rows("MON-1,MRN-1,04/03/2024 08:00,heart_rate,72,bpm")),
        Expected("device_logs", "quarantine", "invalid_timestamp"),
    ),
    "no_offset.csv": (
        _text(_device_rows("MON-1,MRN-1,2024-03-04T08:00:00,heart_rate,72,bpm")),
        Expected("device_logs", "quarantine", "invalid_timestamp"),
    ),
    "non_monotonic.csv": (
        _text(_device_rows(GOOD_ROWS[2], GOOD_ROWS[0])),
        Expected("device_logs", "quarantine", "non_monotonic_timestamp"),
    ),
    "unknown_unit.csv": (
        _text(_device_rows("MON-1,MRN-1,2024-03-04T08:00:00Z,heart_rate,72,beats")),
        Expected("device_logs", "quarantine", "unknown_unit"),
    ),
    "unit_mismatch.csv": (
        _text(_device_rows("MON-1,MRN-1,2024-03-04T08:00:00Z,heart_rate,72,mm[Hg]")),
        Expected("device_logs", "quarantine", "unit_mismatch"),
    ),
    "unknown_metric.csv": (
        _text(_device_rows("MON-1,MRN-1,2024-03-04T08:00:00Z,mood,7,bpm")),
        Expected("device_logs", "quarantine", "unknown_metric"),
    ),
    "header_only.csv": (_text(DEVICE_HEADER), Expected("device_logs", "quarantine", "empty_file")),
    "empty.csv": (_bytes(b""), Expected("device_logs", "quarantine", "empty_file")),
    "ragged.csv": (
        _text(_device_rows(GOOD_ROWS[0], "MON-1,MRN-1,2024-03-04T08:05:00Z,heart_rate,72,bpm,extra")),
        Expected("device_logs", "quarantine", "ragged_row"),
    ),
    "missing_key.jsonl": (
        _bytes(
            b'{"device_id":"MON-1","patient_mrn":"MRN-1","timestamp":"2024-03-04T08:00:00Z","metric":"heart_rate","value":72}\n'
        ),
        Expected("device_logs", "quarantine", "missing_column"),
    ),
    "non_monotonic.jsonl": (
        _bytes(
            b'{"device_id":"MON-1","patient_mrn":"MRN-1","timestamp":"2024-03-04T09:00:00+00:00","metric":"spo2","value":97,"unit":"%"}\n'
            b'{"device_id":"MON-1","patient_mrn":"MRN-1","timestamp":"2024-03-04T08:00:00+00:00","metric":"spo2","value":96,"unit":"%"}\n'
        ),
        Expected("device_logs", "quarantine", "non_monotonic_timestamp"),
    ),
    # PDF
    "javascript.pdf": (_pdf_names_js, Expected("pdf", "reject", "pdf_javascript")),
    "open_action_js.pdf": (_pdf_open_action_js, Expected("pdf", "reject", "pdf_javascript")),
    "launch.pdf": (_pdf_launch, Expected("pdf", "reject", "pdf_launch_action")),
    "annotation_launch.pdf": (_pdf_annotation_launch, Expected("pdf", "reject", "pdf_launch_action")),
    "embedded_file.pdf": (_pdf_embedded, Expected("pdf", "reject", "pdf_embedded_file")),
    "xfa.pdf": (_pdf_xfa, Expected("pdf", "reject", "pdf_xfa")),
    "rich_media.pdf": (_pdf_rich_media, Expected("pdf", "reject", "pdf_rich_media")),
    "page_aa.pdf": (_pdf_page_aa, Expected("pdf", "reject", "pdf_javascript")),
    "unreferenced_js.pdf": (_pdf_unreferenced_js, Expected("pdf", "reject", "pdf_javascript")),
    "hex_escaped_js.pdf": (_pdf_hex_escaped_js, Expected("pdf", "reject", "pdf_javascript")),
    "encrypted.pdf": (_pdf_encrypted, Expected("pdf", "quarantine", "encrypted_pdf")),
    "truncated.pdf": (_pdf_truncated, Expected("pdf", "quarantine", "truncated_pdf")),
    "broken_structure.pdf": (_pdf_broken_structure, Expected("pdf", "quarantine", "unreadable_pdf")),
    "not_a_pdf.pdf": (_text("Discharge summary typed as plain text.\n"), Expected("pdf", "quarantine", "not_pdf")),
    # generic disguises and archives
    "elf_disguised.dcm": (_bytes(_elf()), Expected("dicom", "reject", "executable_disguised")),
    "pe_disguised.pdf": (_bytes(_pe()), Expected("pdf", "reject", "executable_disguised")),
    "script_disguised.csv": (_text("#!/bin/sh\nrm -rf /\n"), Expected("device_logs", "reject", "script_disguised")),
    "html_disguised.ndjson": (
        _text("<!DOCTYPE html><html><body>login</body></html>\n"),
        Expected("fhir", "reject", "html_disguised"),
    ),
    "png_disguised.dcm": (_bytes(_png()), Expected("dicom", "reject", "image_not_allowed")),
    "tar_disguised.csv": (_bytes(_tar_bytes()), Expected("device_logs", "reject", "archive_not_allowed")),
    "zip_bomb.zip": (
        _bytes(_zip_bytes({"Patient.ndjson": bytes(64 * 1024 * 1024)})),
        Expected("unrouted", "reject", "decompression_bomb"),
    ),
    "zip_traversal.zip": (
        _bytes(_zip_bytes({"../../etc/cron.d/job": b"x"})),
        Expected("unrouted", "reject", "zip_path_traversal"),
    ),
    "zip_nested.zip": (
        _bytes(_zip_bytes({"inner.zip": _zip_bytes({"a.txt": b"a"})})),
        Expected("unrouted", "reject", "nested_archive"),
    ),
    "plain.zip": (
        _bytes(_zip_bytes({"Patient.ndjson": PATIENT_LINE})),
        Expected("unrouted", "reject", "archive_not_allowed"),
    ),
    "zip_as.ndjson": (
        _bytes(_zip_bytes({"Patient.ndjson": PATIENT_LINE})),
        Expected("fhir", "reject", "archive_not_allowed"),
    ),
    "Patient.elf.ndjson.gz": (_bytes(_gz(_elf())), Expected("fhir", "reject", "executable_disguised")),
    "Patient.nested.ndjson.gz": (
        _bytes(_gz(_zip_bytes({"a.txt": b"a"}))),
        Expected("fhir", "reject", "nested_archive"),
    ),
    "oversize.pdf": (_bytes(valid_pdf_bytes()), Expected("pdf", "reject", "size_limit_exceeded")),
    "oversize.csv": (_text(_device_rows(*GOOD_ROWS)), Expected("device_logs", "reject", "size_limit_exceeded")),
    "notes.txt": (
        _text("just some notes\nnothing structured\n"),
        Expected("unrouted", "reject", "content_type_not_allowed"),
    ),
}

EXPECTED: dict[str, Expected] = {name: expected for name, (_, expected) in CASES.items()}
SMALL_LIMITS = IngestLimits(max_pdf_bytes=200, max_device_log_bytes=100)
CASE_LIMITS: dict[str, IngestLimits] = {"oversize.pdf": SMALL_LIMITS, "oversize.csv": SMALL_LIMITS}


def build_bad_corpus(dest: Path) -> dict[str, Path]:
    """Writes every case into ``dest`` and returns ``{name: path}``."""
    dest.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, (writer, _) in CASES.items():
        path = dest / name
        writer(path)
        paths[name] = path
    return paths
