"""The DICOM lane's residual-PHI self-check: identifying values of the input searched in its output.

:func:`residual_hits` is what ``components.deidentify.lanes.DicomFileFn`` runs on every file it
de-identified (any hit sends the file to the dead letter):

1. :func:`input_identifying_values` lists the input's identifying values by the rules of
   :func:`components.deidentify.dicom.deidentify.dicom_identifying_values`, from the input bytes
   (parsed again by pydicom, independently of the de-identification's own parse and decisions);
2. :func:`scan_dicom_output` searches the output for them: in the decoded value of every element
   (file meta, sequences at any depth, private elements; case-insensitive, not glued to a letter or
   digit), then, for a value no element holds, in the raw bytes (UTF-8 and Latin-1 encodings).

Both files are parsed by pydicom; nothing is decoded that the answer does not need:

- the output's elements whose value strings are verbatim pieces of their own ASCII bytes (text,
  names, codes, dates, UIDs, printable bytes) stay pydicom ``RawDataElement`` bytes; only the
  others (numbers, IS/DS, non-ASCII text) are decoded up front. Every element is decoded (as the
  search needs) only when a value is among those strings or, being ASCII, in the file's
  lowercased bytes;
- the raw-bytes search first drops every byte no searched value contains (one ``translate`` over
  the file), looks values up in a table of that reduced copy's 4-byte grams and only searches the
  full, lowercased bytes for a value the reduced copy holds: a value absent from it is absent from
  the file. Per-value regexes are replaced by an equivalent whole-word check.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from io import BytesIO

import numpy as np
import pydicom
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from components.deidentify.dicom.deidentify import (
    PIXEL_DATA_TAGS,
    _fast_strings,
    _keyword,
    _value_strings,
    contains_whole_word,
    dicom_identifying_values,
    raw_value_strings,
)
from components.deidentify.dicom.policy import DicomPolicy
from components.deidentify.dicom.table import ProfileTable

_WORD_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")
_UID_CHARS = _WORD_CHARS | {"."}
_WORD_BYTES = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyz")
_UID_BYTES = _WORD_BYTES | {ord(".")}
_ALL_BYTES = bytes(range(256))
_LOWER_TABLE = _ALL_BYTES.lower()
_SMALL_FILE = 16_384  # below this the reduced copy costs more than it saves


# --------------------------------------------------------------------------- input: identifying values


def input_identifying_values(
    data: bytes, policy: DicomPolicy, table: ProfileTable | None = None
) -> list[tuple[str, str]]:
    """The identifying values of an input file, parsed by pydicom without its pixel data.

    Args:
        data: The input file.
        policy: The DICOM policy (its options decide which attributes the profile keeps).
        table: The profile table (the shipped one by default).

    Returns:
        ``(category, value)`` pairs, as :func:`dicom_identifying_values` returns them.
    """
    dataset = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True)
    return dicom_identifying_values(dataset, policy, table)


# --------------------------------------------------------------------------- output: element strings


def _read_output(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data), force=True)


def _meta_texts(dataset: Dataset) -> list[tuple[str, str]]:
    meta = getattr(dataset, "file_meta", None)
    elements = list(meta) if meta is not None else []
    return [(elem.keyword or str(elem.tag), value) for elem in elements for value in _value_strings(elem)]


def _dataset_texts(dataset: Dataset, out: list[tuple[str, str]]) -> None:
    elements = dataset._dict
    for tag in sorted(elements, key=int):
        if int(tag) in PIXEL_DATA_TAGS:
            continue
        raw = elements[tag]
        strings = _raw_strings(dataset, raw) if isinstance(raw, RawDataElement) else None
        if strings is not None:
            where = _keyword(int(tag)) or f"private{raw.tag}"
            out.extend((where, value) for value in strings)
            continue
        elem = dataset[tag]
        if elem.VR == "SQ":
            for item in elem.value or []:
                _dataset_texts(item, out)
            continue
        out.extend((elem.keyword or f"private{elem.tag}", value) for value in _value_strings(elem))


def _raw_strings(dataset: Dataset, raw: RawDataElement) -> list[str] | None:
    """The value strings of a raw element that pydicom converts without resolving anything, else ``None``."""
    strings = _fast_strings(raw)
    return strings if strings is not None else raw_value_strings(dataset, raw)


def _texts_of(dataset: Dataset) -> list[tuple[str, str]]:
    """``(where, value string)`` of every element of a parsed output (pixel data left out).

    ``where`` is the keyword, else ``(gggg,eeee)`` in the file meta and ``private(gggg,eeee)`` in the
    dataset.
    """
    out = _meta_texts(dataset)
    _dataset_texts(dataset, out)
    return out


def output_texts(data: bytes) -> list[tuple[str, str]]:
    """``(where, value string)`` of every element of an output file (pixel data left out).

    Args:
        data: The file.

    Returns:
        The element strings; none at all when pydicom cannot read or decode the file.
    """
    try:
        return _texts_of(_read_output(data))
    except Exception:
        return []


# Value strings that are a piece of the element's own bytes when those are ASCII without escape
# sequences (text, names, codes, dates, UIDs, printable bytes): a value such an element holds is in
# the file's lowercased bytes. Numbers, tags, IS and DS (pydicom may reformat them) are decoded, and
# so is every element whose VR pydicom resolves (explicit ``UN``, implicit private or ambiguous).
_VERBATIM_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
    | {"OB", "OD", "OF", "OL", "OV", "OW"}
)


def _verbatim(raw: RawDataElement) -> bool:
    """Whether a raw element's value strings are verbatim ASCII pieces of its bytes."""
    vr = raw.VR
    if vr is None and not raw.tag >> 16 & 1:
        entry = DicomDictionary.get(raw.tag)
        vr = entry[0] if entry is not None else None
    value = raw.value
    return vr in _VERBATIM_VRS and value is not None and value.isascii() and b"\x1b" not in value


def _decoded_strings(dataset: Dataset, out: list[str], *, shortcut: bool) -> None:
    """The value strings of a dataset's elements, but for those verbatim in the file (``shortcut``)."""
    elements = dataset._dict
    for tag, raw in list(elements.items()):
        if int(tag) in PIXEL_DATA_TAGS:
            continue
        if isinstance(raw, RawDataElement):
            if not raw.length or (shortcut and _verbatim(raw)):
                continue
            strings = _raw_strings(dataset, raw)
            if strings is not None:
                out.extend(strings)
                continue
        elem = dataset[tag]
        if elem.VR == "SQ":
            for item in elem.value or []:
                _decoded_strings(item, out, shortcut=shortcut)
            continue
        out.extend(_value_strings(elem))


def _stored_as_read(dataset: Dataset) -> bool:
    """Whether the dataset's element bytes are pieces of the file's bytes (not a deflated stream)."""
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    return syntax is None or not UID(syntax).is_deflated


class _OutputTexts:
    """The element strings of an output, decoded in full only when a searched value may be among them.

    Parsing the file (pydicom) decodes only the elements whose strings are not verbatim ASCII pieces
    of their bytes (see ``_VERBATIM_VRS``), or every element of a deflated dataset. A value can then
    be in an element's strings only if it is in those decoded strings or, being ASCII, in the file's
    lowercased bytes (casefolding ASCII text is lowercasing it); :meth:`may_hold` tests exactly that,
    and :meth:`hits` decodes every element (as :func:`output_texts`) the first time it is asked.
    """

    def __init__(self, data: bytes) -> None:
        self._dataset: Dataset | None = None
        self._decoded: str | None = None  # casefolded, newline-joined; None: no shortcut, decode all
        self._texts: list[tuple[str, str]] | None = None
        self._all_folded = ""
        try:
            dataset = _read_output(data)
            decoded = [value for _, value in _meta_texts(dataset)]
            _decoded_strings(dataset, decoded, shortcut=_stored_as_read(dataset))
        except Exception:  # pydicom cannot read or decode it: no element strings (as output_texts)
            self._texts = []
            return
        self._dataset = dataset
        self._decoded = "\n".join(decoded).casefold()

    def may_hold(self, folded: str, in_lowered_bytes: Callable[[bytes], bool]) -> bool:
        """False only when no element string can contain ``folded`` (a casefolded value)."""
        if self._decoded is None:
            return False  # no element strings at all
        if folded in self._decoded:
            return True
        return folded.isascii() and in_lowered_bytes(folded.encode("ascii"))

    def hits(self, folded: str, word_chars: frozenset[str]) -> list[str]:
        """Where (keyword) each element string holding ``folded`` as a whole word is."""
        if self._texts is None:
            assert self._dataset is not None
            try:
                texts = _texts_of(self._dataset)
            except Exception:  # as output_texts
                texts = []
            self._all_folded = "\n".join(text for _, text in texts).casefold()  # per character
            self._texts = [(where, text.casefold()) for where, text in texts]
        if folded not in self._all_folded:
            return []
        texts = self._texts
        return [where for where, text in texts if folded in text and contains_whole_word(text, folded, word_chars)]


# --------------------------------------------------------------------------- search


def _encodings(value: str) -> set[bytes]:
    """UTF-8 and (when it can encode the value) Latin-1 encodings of a value."""
    encodings = {value.encode("utf-8")}
    with contextlib.suppress(UnicodeEncodeError):
        encodings.add(value.encode("latin-1"))
    return encodings


def _used_bytes(values: Sequence[str]) -> bytes:
    """Every byte of the values' encodings, in both ASCII cases (a superset of what is searched)."""
    encoded = "".join(values)
    used = bytes(sorted(set(encoded.encode("utf-8", "surrogatepass")) | set(encoded.encode("latin-1", "ignore"))))
    return used.lower() + used.upper()


_GRAM_HASH = 2654435761  # Knuth's multiplicative hash of a 4-byte gram, top 16 bits of 32 kept
_GRAM_INDEX_BYTES = 4096  # below this, searching the reduced copy directly is as fast


def _gram_slot(gram: bytes) -> int:
    return ((int.from_bytes(gram, "little") * _GRAM_HASH) & 0xFFFFFFFF) >> 16


def _gram_table(data: bytes) -> np.ndarray:
    """Marks the hash slot of every 4-byte gram of ``data`` (all offsets)."""
    grams = np.concatenate(
        [np.frombuffer(data, dtype="<u4", count=(len(data) - offset) // 4, offset=offset) for offset in range(4)]
    )
    table = np.zeros(1 << 16, dtype=bool)
    table[(grams * np.uint32(_GRAM_HASH)) >> np.uint32(16)] = True
    return table


class _RawSearch:
    """Case-insensitive (ASCII) whole-word search of values in a file's bytes.

    ``reduced`` is the lowercased file without the bytes that occur in no searched value (nor in
    its casefolded form): a value missing from it is missing from the file, so the full lowercased
    copy is made, and searched, only for the few values the reduced copy holds. A large reduced
    copy is first looked up in a table of its 4-byte grams: a value with a gram the table lacks is
    not in it.
    """

    def __init__(self, data: bytes, values: Sequence[str]) -> None:
        self._data = data
        self._values = values
        self._reduced: bytes | None = None
        self._grams: np.ndarray | None = None
        self._lower: bytes | None = None
        self._in_reduced: dict[bytes, bool] = {}

    def in_lowered(self, needle: bytes) -> bool:
        """Whether ``needle`` (lowercase, made of bytes of the searched values) may occur in the lowered file.

        Exact for files below ``_SMALL_FILE`` bytes, else a test on the reduced copy (never a false
        negative).
        """
        found = self._in_reduced.get(needle)
        if found is None:
            found = self._in_reduced[needle] = self._grams_present(needle) and needle in self._reduced_data()
        return found

    def _grams_present(self, needle: bytes) -> bool:
        """False when a 4-byte gram of ``needle`` (first, last and two between) is not in the reduced copy."""
        reduced = self._reduced_data()
        if len(reduced) < _GRAM_INDEX_BYTES or len(needle) < 4:
            return True
        if self._grams is None:
            self._grams = _gram_table(reduced)
        last = len(needle) - 4
        return all(self._grams[_gram_slot(needle[at : at + 4])] for at in (0, last // 3, 2 * last // 3, last))

    def _reduced_data(self) -> bytes:
        if self._reduced is None:
            if len(self._data) < _SMALL_FILE:
                self._reduced = self._lower_data()
            else:
                keep = _used_bytes(self._values)
                self._reduced = self._data.translate(_LOWER_TABLE, _ALL_BYTES.translate(None, keep))
        return self._reduced

    def _lower_data(self) -> bytes:
        if self._lower is None:
            self._lower = self._data.lower()
        return self._lower

    def found(self, value: str, uid: bool) -> bool:
        """Whether an encoding of ``value`` occurs in the file, not glued to a letter or digit (or ``.``)."""
        needles = [needle for needle in {encoded.lower() for encoded in _encodings(value)} if self.in_lowered(needle)]
        if not needles:
            return False
        lower = self._lower_data()
        word_bytes = _UID_BYTES if uid else _WORD_BYTES
        return any(contains_whole_word(lower, needle, word_bytes) for needle in needles)


def scan_dicom_output(data: bytes, values: Iterable[tuple[str, str]]) -> Counter[str]:
    """Searches a de-identified file for identifying values of its input.

    Every element is searched (file meta, sequences at any depth, private elements; case-insensitive
    substring match of the decoded value, not glued to an ASCII letter or digit, nor to ``.`` for
    UIDs), and then the raw bytes (UTF-8 and Latin-1 encodings, ASCII case-insensitive, same edges)
    for values no element matched.

    Args:
        data: The output file.
        values: ``(category, value)`` pairs from :func:`input_identifying_values` of the input.

    Returns:
        Hits keyed ``<category>:<attribute keyword>`` (or ``<category>:raw_bytes``); empty means clean.
    """
    scan = OutputScan(data, values)
    hits: Counter[str] = Counter()
    for category, value in scan.values:
        hits.update(scan.places(category, value))
    return hits


class OutputScan:
    """One output file searched for a list of identifying values (see :func:`scan_dicom_output`).

    The reduced bytes kept for the raw-bytes search hold every byte of the listed values: only
    values of the list may be searched.
    """

    def __init__(self, data: bytes, values: Iterable[tuple[str, str]]) -> None:
        self.values = list(values)
        self._texts = _OutputTexts(data)
        self._raw = _RawSearch(data, [value for _, value in self.values] + [v.casefold() for _, v in self.values])

    def places(self, category: str, value: str) -> list[str]:
        """The hits of one listed value: ``<category>:<keyword>`` per element holding it, else raw bytes.

        Args:
            category: The value's category.
            value: The value (one of the listed ones).

        Returns:
            Its hit keys, as :func:`scan_dicom_output` counts them (empty when it is not in the file).
        """
        folded = value.casefold()
        if self._texts.may_hold(folded, self._raw.in_lowered):
            places = self._texts.hits(folded, _UID_CHARS if category == "uid" else _WORD_CHARS)
            if places:
                return [f"{category}:{where}" for where in places]
        return [f"{category}:raw_bytes"] if self._raw.found(value, category == "uid") else []


def residual_hits(original: bytes, output: bytes, policy: DicomPolicy) -> Counter[str]:
    """The lane's self-check: identifying values of ``original`` found in ``output``.

    Args:
        original: The input file.
        output: Its de-identified output.
        policy: The DICOM policy the output was made with.

    Returns:
        Hits as :func:`scan_dicom_output` counts them; empty means no residual PHI.
    """
    return scan_dicom_output(output, input_identifying_values(original, policy))
