"""PDF lane: refuse active content, quarantine encrypted or broken files, extract text (OCR when needed).

Active content is found twice: by walking pypdf's object model from the trailer (catalog,
``/OpenAction``, ``/AA``, the names tree, pages and their annotations, AcroForm) and by a raw
byte scan of the file and of its decompressed object streams (which also catches objects that
nothing references). Text comes from pdfplumber; a page without a text layer is rendered with
pypdfium2 and OCRed with tesseract, and its number is recorded in ``ocr_pages``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pypdf import PdfReader
from pypdf.errors import PdfReadError, PyPdfError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject, PdfObject

from components.ingest import sniff
from components.ingest.lanes.verdict import LaneVerdict, promote, quarantine, reject

LANE = "pdf"
MRN_PATTERN = re.compile(r"MRN[:#\s]*([A-Za-z0-9-]+)")
OCR_DPI = 200
MIN_TEXT_CHARS = 20  # a page with fewer extracted characters is treated as having no text layer
MAX_WALK_OBJECTS = 200_000
MAX_STREAM_INFLATE = 16 * 1024 * 1024
_LOG = logging.getLogger(__name__)

# name key -> reason code (a key present in any reachable dictionary).
_ACTIVE_KEYS: dict[str, str] = {
    "/JS": "pdf_javascript",
    "/JavaScript": "pdf_javascript",
    "/EmbeddedFiles": "pdf_embedded_file",
    "/EF": "pdf_embedded_file",
    "/RichMedia": "pdf_rich_media",
    "/RichMediaContent": "pdf_rich_media",
    "/XFA": "pdf_xfa",
    "/AA": "pdf_additional_actions",
}
# action type (/S) or object type (/Type, /Subtype) value -> reason code.
_ACTIVE_NAMES: dict[str, str] = {
    "/JavaScript": "pdf_javascript",
    "/Launch": "pdf_launch_action",
    "/EmbeddedFile": "pdf_embedded_file",
    "/FileAttachment": "pdf_embedded_file",
    "/RichMedia": "pdf_rich_media",
    "/ImportData": "pdf_launch_action",
}
# Most specific first, when several kinds are present.
_PRIORITY = (
    "pdf_javascript",
    "pdf_launch_action",
    "pdf_embedded_file",
    "pdf_rich_media",
    "pdf_xfa",
    "pdf_additional_actions",
)
_RAW_NAME = re.compile(rb"/(JavaScript|JS|Launch|EmbeddedFiles?|RichMedia|XFA|AA|FileAttachment)(?![A-Za-z0-9#])")
_RAW_CODES = {
    b"JavaScript": "pdf_javascript",
    b"JS": "pdf_javascript",
    b"Launch": "pdf_launch_action",
    b"EmbeddedFile": "pdf_embedded_file",
    b"EmbeddedFiles": "pdf_embedded_file",
    b"FileAttachment": "pdf_embedded_file",
    b"RichMedia": "pdf_rich_media",
    b"XFA": "pdf_xfa",
    b"AA": "pdf_additional_actions",
}
_HEX_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_STREAM = re.compile(rb"<<(?:(?!>>\s*stream).){0,2048}?/Type\s*/ObjStm.{0,2048}?>>\s*stream\r?\n", re.DOTALL)


@dataclass(frozen=True)
class ActiveContent:
    """One piece of active content: its reason code and where it was found (no content)."""

    code: str
    where: str


def _walk(root: PdfObject, label: str, seen: set[tuple[int, int]], skip: frozenset[str]) -> Iterator[ActiveContent]:
    """Walks every object reachable from ``root`` not in ``seen``, yielding active content with its key path."""
    stack: list[tuple[Any, str]] = [(root, label)]
    visited = 0
    while stack and visited < MAX_WALK_OBJECTS:
        node, where = stack.pop()
        visited += 1
        if isinstance(node, IndirectObject):
            key = (node.idnum, node.generation)
            if key in seen:
                continue
            seen.add(key)
            node = node.get_object()
        if isinstance(node, DictionaryObject):
            for name, value in node.items():
                code = _ACTIVE_KEYS.get(str(name))
                if code is not None:
                    yield ActiveContent(code, f"{where}{name}")
                if name in ("/S", "/Type", "/Subtype") and isinstance(value, NameObject):
                    code = _ACTIVE_NAMES.get(str(value))
                    if code is not None:
                        yield ActiveContent(code, f"{where} ({name} {value})")
                if name not in skip:
                    stack.append((value, f"{where}{name}"))
        elif isinstance(node, ArrayObject):
            for index, value in enumerate(node):
                stack.append((value, f"{where}[{index}]"))


def find_active_content_objects(reader: PdfReader) -> list[ActiveContent]:
    """Active content reachable through the object model (catalog, names tree, pages, annotations)."""
    seen: set[tuple[int, int]] = set()
    found = list(
        _walk(reader.trailer.get("/Root", DictionaryObject()), "/Root", seen, frozenset({"/Pages", "/Parent"}))
    )
    for number, page in enumerate(reader.pages, 1):
        found.extend(_walk(page, f"page {number} ", seen, frozenset({"/Parent"})))
    return found


def _normalise_names(data: bytes) -> bytes:
    """Decodes ``#xx`` escapes in PDF names so ``/J#61vaScript`` reads as ``/JavaScript``."""
    return _HEX_ESCAPE.sub(lambda match: bytes([int(match.group(1), 16)]), data)


def _object_streams(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yields ``(offset, inflated bytes)`` of each FlateDecode object stream (bounded output)."""
    for match in _STREAM.finditer(data):
        start = match.end()
        end = data.find(b"endstream", start)
        if end < 0:
            continue
        decoder = zlib.decompressobj()
        try:
            yield match.start(), decoder.decompress(data[start:end], MAX_STREAM_INFLATE)
        except zlib.error:
            continue


def find_active_content_bytes(data: bytes) -> list[ActiveContent]:
    """Active-content names in the raw bytes and in decompressed object streams."""
    found: list[ActiveContent] = []
    sources = [(0, data, "raw bytes"), *((offset, body, "object stream") for offset, body in _object_streams(data))]
    for base, body, label in sources:
        for match in _RAW_NAME.finditer(_normalise_names(body)):
            item = ActiveContent(_RAW_CODES[match.group(1)], f"{label} at byte {base + match.start():,}")
            if all(existing.code != item.code for existing in found):
                found.append(item)
    return found


def _most_specific(found: list[ActiveContent]) -> ActiveContent:
    """The finding whose code ranks first in ``_PRIORITY``."""
    return min(found, key=lambda item: _PRIORITY.index(item.code))


def _ocr_page(path: Path, index: int) -> str:
    """Renders one page with pypdfium2 and OCRs it with tesseract."""
    import pypdfium2
    import pytesseract

    document = pypdfium2.PdfDocument(str(path))
    try:
        page = document[index]
        image = page.render(scale=OCR_DPI / 72).to_pil()
        page.close()
    finally:
        document.close()
    return str(pytesseract.image_to_string(image))


def extract_text(path: Path) -> tuple[list[str], list[int]]:
    """Extracts each page's text (pdfplumber), OCRing pages without a text layer.

    Returns:
        ``(page_texts, ocr_pages)`` with 1-based page numbers of OCRed pages.
    """
    import pdfplumber

    texts: list[str] = []
    ocr_pages: list[int] = []
    with pdfplumber.open(path) as document:
        for index, page in enumerate(document.pages):
            text = page.extract_text() or ""
            if len(text.strip()) < MIN_TEXT_CHARS:
                text = _ocr_page(path, index)
                ocr_pages.append(index + 1)
            texts.append(text)
    return texts, ocr_pages


def find_mrn(text: str) -> str | None:
    """The first MRN in the text (``MRN: 12345``), or None."""
    match = MRN_PATTERN.search(text)
    return match.group(1) if match else None


def validate(path: Path, content_type: str) -> LaneVerdict:
    """Checks one PDF and extracts its text.

    Args:
        path: The file.
        content_type: The sniffed content type (must be ``pdf``).

    Returns:
        ``reject`` for active content (``pdf_javascript``, ``pdf_launch_action``, ``pdf_embedded_file``,
        ``pdf_rich_media``, ``pdf_xfa``, ``pdf_additional_actions``); ``quarantine`` for ``not_pdf``,
        ``truncated_pdf``, ``encrypted_pdf`` or ``unreadable_pdf``; else ``promote`` with ``extracted`` =
        ``{"text", "pages", "ocr_pages", "patient_mrn"}``.
    """
    name = path.name
    if content_type != sniff.PDF:
        return quarantine(
            name, LANE, content_type, "not_pdf", f"{name}: content is {content_type}, not a PDF; send the real PDF"
        )
    data = path.read_bytes()
    if b"%%EOF" not in data[-2048:]:
        return quarantine(
            name,
            LANE,
            content_type,
            "truncated_pdf",
            f"{name}: no %%EOF marker at the end of the file; the PDF is truncated, re-send it",
        )
    raw_found = find_active_content_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = PdfReader(path, strict=False)
            if reader.is_encrypted:
                return quarantine(
                    name,
                    LANE,
                    content_type,
                    "encrypted_pdf",
                    f"{name}: the PDF is encrypted; ask the sender for an unencrypted copy",
                )
            found = find_active_content_objects(reader) + raw_found
            pages = len(reader.pages)
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, OSError) as error:
        if raw_found:
            item = _most_specific(raw_found)
            return reject(name, LANE, content_type, item.code, f"{name}: {item.code} found in {item.where}; refused")
        return quarantine(
            name,
            LANE,
            content_type,
            "unreadable_pdf",
            f"{name}: the PDF structure cannot be read ({type(error).__name__}); re-export it",
        )
    if found:
        item = _most_specific(found)
        kinds = sorted({entry.code for entry in found}, key=_PRIORITY.index)
        return reject(
            name,
            LANE,
            content_type,
            item.code,
            f"{name}: active content ({item.code.removeprefix('pdf_').replace('_', ' ')}) at {item.where}; PDFs "
            "with scripts, actions or embedded files are refused, send a flattened PDF",
            {"active_content": kinds, "locations": [entry.where for entry in found[:20]]},
        )
    texts, ocr_pages = extract_text(path)
    text = "\n\f".join(texts)
    mrn = find_mrn(text)
    return promote(
        name,
        LANE,
        content_type,
        f"{name}: {pages} page(s), {len(ocr_pages)} OCRed",
        details={"pages": pages, "ocr_pages": ocr_pages, "chars": len(text), "has_mrn": mrn is not None},
        extracted={"text": text, "pages": pages, "ocr_pages": ocr_pages, "patient_mrn": mrn},
    )


def document_json(path: Path, verdict: LaneVerdict) -> dict[str, Any]:
    """Builds ``documents/<sha256>.json`` for a promoted PDF (see the ingest output contract).

    Args:
        path: The PDF as received.
        verdict: Its promoted PDF-lane verdict.

    Returns:
        ``{"file", "sha256", "pages", "text", "ocr_pages", "patient_mrn"}``.

    Raises:
        ValueError: The verdict is not a promoted PDF verdict.
    """
    if verdict.lane != LANE or not verdict.promoted or verdict.extracted is None:
        raise ValueError(f"{path.name}: document_json needs a promoted PDF verdict")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    extracted = verdict.extracted
    return {
        "file": path.name,
        "sha256": digest,
        "pages": extracted["pages"],
        "text": extracted["text"],
        "ocr_pages": list(extracted["ocr_pages"]),
        "patient_mrn": extracted["patient_mrn"],
    }
