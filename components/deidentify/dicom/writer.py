"""Writes a de-identified dataset as a DICOM Part 10 file, copying unchanged elements byte for byte.

The de-identification pass leaves every element it keeps as pydicom's ``RawDataElement`` (the bytes
as read, never decoded) and replaces the values it changes with new raw bytes, so writing is mostly
concatenation: the element header is packed and the raw value (pixel data included) is appended
unchanged. Elements that are pydicom ``DataElement`` objects (sequences, the de-identification
marks, values changed through pydicom) are encoded with pydicom's own element writer.

The fast path covers little-endian, non-deflated transfer syntaxes whose dataset was read with the
same encoding (implicit or explicit VR) and character set. :func:`write_part10` returns ``None``
for anything else and the caller falls back to ``Dataset.save_as``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import UID

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
# Explicit VR encodings with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
EXPLICIT_VR_LENGTH_32 = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
EXPLICIT_VR_LENGTH_16 = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST", "TM"}
    | {"UI", "UL", "US"}
)
# String VRs whose values pydicom encodes as plain text (one value, or the values joined by ``\\``).
ASCII_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
# File meta elements this module encodes itself; any other one goes through pydicom.
META_UI = (0x00020002, 0x00020003, 0x00020010, 0x00020012)
META_VERSION = 0x00020001
META_VERSION_NAME = 0x00020013

_IMPLICIT = struct.Struct("<HHL")
_EXPLICIT_16 = struct.Struct("<HH2sH")
_EXPLICIT_32 = struct.Struct("<HH2s2xL")
_ITEM = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_PREAMBLE = b"\x00" * 128 + b"DICM"


class _NotFastError(Exception):
    """The dataset needs pydicom's writer (an encoding the fast path does not cover)."""


def _sorted_tags(ds: Dataset) -> list[Any]:
    return sorted(ds._dict, key=int)


def _ascii_value(elem: DataElement, encodings: Any) -> bytes | None:
    """The encoded value of an ASCII string element (``None``: let pydicom encode it)."""
    value = elem.value
    if type(value) not in (str, UID) or elem.VR not in ASCII_STRING_VRS or not value.isascii():
        return None
    if not isinstance(encodings, str) or encodings.startswith("ISO 2022") or encodings == "ISO_IR 13":
        return None  # character sets where ASCII bytes may mean something else
    data = value.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if elem.VR == "UI" else b" "
    return data


def _element_bytes(elem: DataElement, implicit: bool, encodings: Any) -> bytes:
    data = _ascii_value(elem, encodings)
    if data is not None:
        return _header(int(elem.tag), elem.VR, len(data), implicit) + data
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_data_element(buffer, elem, encodings)
    return buffer.getvalue()


def _header(tag: int, vr: str | None, length: int, implicit: bool) -> bytes:
    if implicit:
        return _IMPLICIT.pack(tag >> 16, tag & 0xFFFF, length)
    if vr in EXPLICIT_VR_LENGTH_32:
        return _EXPLICIT_32.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)
    if vr in EXPLICIT_VR_LENGTH_16 and length <= 0xFFFF:
        return _EXPLICIT_16.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)
    raise _NotFastError


def _dataset_parts(ds: Dataset, implicit: bool, parent_encodings: Any) -> Iterator[bytes]:
    encodings: Any = None
    elements = ds._dict
    for tag in _sorted_tags(ds):
        tag_int = int(tag)
        if tag_int & 0xFFFF == 0 and tag_int >> 16 > 6:
            continue  # group lengths are retired and not written (as pydicom)
        elem = elements[tag]
        if isinstance(elem, RawDataElement):
            if elem.is_implicit_VR != implicit or not elem.is_little_endian or elem.is_buffered:
                raise _NotFastError
            value = elem.value or b""
            undefined = elem.length == UNDEFINED_LENGTH
            yield _header(tag_int, elem.VR, UNDEFINED_LENGTH if undefined else len(value), implicit)
            yield value
            if undefined:
                yield _SEQUENCE_END
            continue
        if encodings is None:
            encodings = ds.get("SpecificCharacterSet", parent_encodings)
        if elem.VR == "SQ":
            yield _header(tag_int, "SQ", UNDEFINED_LENGTH, implicit)
            items: list[Dataset] = elem.value
            for item in items:
                yield _ITEM
                yield from _dataset_parts(item, implicit, encodings)
                yield _ITEM_END
            yield _SEQUENCE_END
            continue
        if elem.is_buffered:
            raise _NotFastError
        yield _element_bytes(elem, implicit, encodings)


def _meta_bytes(meta: FileMetaDataset) -> bytes:
    parts: list[bytes] = []
    for tag in _sorted_tags(meta):
        tag_int = int(tag)
        if tag_int == 0x00020000:
            continue
        elem = meta[tag]
        if tag_int in META_UI or tag_int == META_VERSION_NAME:
            text = str(elem.value or "").encode("ascii")
            if len(text) % 2:
                text += b"\x00" if elem.VR == "UI" else b" "
            parts.append(_EXPLICIT_16.pack(tag_int >> 16, tag_int & 0xFFFF, elem.VR.encode(), len(text)) + text)
        elif tag_int == META_VERSION and isinstance(elem.value, bytes):
            parts.append(_EXPLICIT_32.pack(0x0002, 0x0001, b"OB", len(elem.value)) + elem.value)
        else:
            buffer = DicomBytesIO()
            buffer.is_little_endian = True
            buffer.is_implicit_VR = False
            write_file_meta_info(buffer, FileMetaDataset(meta), enforce_standard=True)
            return buffer.getvalue()
    if META_VERSION not in meta._dict:
        parts.insert(0, _EXPLICIT_32.pack(0x0002, 0x0001, b"OB", 2) + b"\x00\x01")
    body = b"".join(parts)
    return _EXPLICIT_16.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(body)) + body


def fast_path_applies(ds: Dataset) -> bool:
    """Whether :func:`write_part10` can write the dataset itself (see the module docstring).

    Args:
        ds: The dataset with its ``file_meta``.

    Returns:
        True for a little-endian, non-deflated public transfer syntax matching how the dataset was read.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return False
    for required in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
        if not meta.get(required):
            return False
    syntax = UID(str(meta[0x00020010].value))
    if not syntax.is_transfer_syntax or syntax.is_private or syntax.is_deflated or not syntax.is_little_endian:
        return False
    if ds.original_encoding != (syntax.is_implicit_VR, True):
        return False
    if ds.original_character_set != ds._character_set:
        return False
    if any(int(tag) >> 16 in (0, 2) for tag in ds._dict):
        return False
    pixels = ds._dict.get(PIXEL_DATA)  # type: ignore[call-overload]
    if pixels is not None:
        undefined = pixels.length == UNDEFINED_LENGTH if type(pixels) is RawDataElement else pixels.is_undefined_length
        if undefined != syntax.is_compressed:
            return False
    return True


def write_part10(ds: Dataset) -> bytes | None:
    """Encodes a dataset as a Part 10 file (zero preamble, ``DICM``, file meta, dataset).

    Args:
        ds: The de-identified dataset; its ``file_meta`` has the Media Storage SOP Class/Instance UIDs
            and the Transfer Syntax UID.

    Returns:
        The file bytes, or ``None`` when the fast path does not apply (use ``Dataset.save_as``).
    """
    if not fast_path_applies(ds):
        return None
    implicit = bool(UID(str(ds.file_meta[0x00020010].value)).is_implicit_VR)
    try:
        parts = [_PREAMBLE, _meta_bytes(ds.file_meta)]
        parts.extend(_dataset_parts(ds, implicit, "iso8859"))
    except _NotFastError:
        return None
    return b"".join(parts)


def raw_element(elem: DataElement, implicit: bool) -> RawDataElement:
    """Pre-encodes an element (a sequence too) as a little-endian ``RawDataElement`` for :func:`write_part10`.

    Args:
        elem: The element (ASCII text, or a sequence of such items).
        implicit: Whether the dataset it goes into is implicit VR.

    Returns:
        The raw element: its value is the encoded bytes (a sequence gets a defined length).
    """
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_data_element(buffer, elem, "iso8859")
    encoded = buffer.getvalue()
    start = 8 if implicit or elem.VR not in EXPLICIT_VR_LENGTH_32 else 12
    value = encoded[start:]
    if encoded[start - 4 : start] == b"\xff\xff\xff\xff":  # undefined length: drop the delimiter
        value = value[: -len(_SEQUENCE_END)]
    return RawDataElement(elem.tag, elem.VR, len(value), value, 0, implicit, True)
