"""Loads the shipped PS3.15 Table E.1-1 and looks attributes up, including the pattern rows.

The table (``ps3_15_table_e1_1.json``) is generated from the standard by
:mod:`components.deidentify.dicom.generate_table`; nothing here is a hand-written tag list.
Pattern rows: ``(50xx,xxxx)`` curve data, ``(60xx,3000)`` overlay data, ``(60xx,4000)`` overlay
comments and ``(gggg,eeee) where gggg is odd`` (every private attribute).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from clinflow.errors import UserError

TABLE_PATH = Path(__file__).with_name("ps3_15_table_e1_1.json")
CURVE_ROW = "50xxxxxx"
OVERLAY_DATA_ROW = "60xx3000"
OVERLAY_COMMENTS_ROW = "60xx4000"
PRIVATE_ROW = "ggggeeee-where-gggg-is-odd"


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1.

    Attributes:
        id: The upstream id: eight lower-case hex digits, or a pattern id.
        tag: The tag as the standard prints it, e.g. ``(0010,0010)``.
        name: The attribute name.
        in_std_comp_iod: Whether the attribute is in a standard composite IOD.
        basic: The Basic Profile action (``D``, ``Z``, ``X``, ``K``, ``C``, ``U`` or a compound).
        options: Option name -> action, only for options that change the Basic Profile action.
    """

    id: str
    tag: str
    name: str
    in_std_comp_iod: bool
    basic: str
    options: MappingProxyType[str, str]


@dataclass(frozen=True)
class ProfileTable:
    """The whole table with its provenance.

    Attributes:
        revision: The standard revision, e.g. ``2024b``.
        source_sha256: SHA-256 of the upstream file the table was generated from.
        generator_version: Version of the generator that wrote the table.
        rows: Rows keyed by the integer tag (exact rows) ...
        patterns: ... and the four pattern rows keyed by their id.
    """

    revision: str
    source_sha256: str
    generator_version: str
    rows: MappingProxyType[int, ProfileRow]
    patterns: MappingProxyType[str, ProfileRow]

    @property
    def row_count(self) -> int:
        """Number of rows, exact and pattern."""
        return len(self.rows) + len(self.patterns)

    def lookup(self, tag: int) -> ProfileRow | None:
        """Finds the row governing a tag, or ``None`` when the table does not list it.

        Args:
            tag: The attribute tag as ``(group << 16) | element``.

        Returns:
            The exact row, else the matching pattern row (curve, overlay, private), else ``None``.
        """
        row = self.rows.get(tag)
        if row is not None:
            return row
        group, element = tag >> 16, tag & 0xFFFF
        if group & 1:
            return self.patterns.get(PRIVATE_ROW)
        if group & 0xFF00 == 0x5000:
            return self.patterns.get(CURVE_ROW)
        if group & 0xFF00 == 0x6000 and element == 0x3000:
            return self.patterns.get(OVERLAY_DATA_ROW)
        if group & 0xFF00 == 0x6000 and element == 0x4000:
            return self.patterns.get(OVERLAY_COMMENTS_ROW)
        return None


def _parse_row(raw: dict[str, Any]) -> ProfileRow:
    return ProfileRow(
        id=raw["id"],
        tag=raw["tag"],
        name=raw["name"],
        in_std_comp_iod=bool(raw["in_std_comp_iod"]),
        basic=raw["basic"],
        options=MappingProxyType(dict(raw["options"])),
    )


@lru_cache(maxsize=4)
def load_table(path: Path = TABLE_PATH) -> ProfileTable:
    """Loads (once) the generated Table E.1-1.

    Args:
        path: The generated JSON; the shipped table by default.

    Returns:
        The parsed table.

    Raises:
        UserError: The file is missing or not a generated table.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserError(
            f"{path}: cannot load the PS3.15 Table E.1-1; regenerate it with "
            "`python -m components.deidentify.dicom.generate_table`"
        ) from None
    rows: dict[int, ProfileRow] = {}
    patterns: dict[str, ProfileRow] = {}
    for raw in document["rows"]:
        row = _parse_row(raw)
        if row.id in (CURVE_ROW, OVERLAY_DATA_ROW, OVERLAY_COMMENTS_ROW, PRIVATE_ROW):
            patterns[row.id] = row
        else:
            rows[int(row.id, 16)] = row
    table = ProfileTable(
        revision=document["revision"],
        source_sha256=document["source"]["sha256"],
        generator_version=document["generator"]["version"],
        rows=MappingProxyType(rows),
        patterns=MappingProxyType(patterns),
    )
    if table.row_count != document["row_count"]:
        raise UserError(f"{path}: row count {table.row_count} does not match the header {document['row_count']}")
    return table
