"""Read and write FHIR Bulk Data NDJSON (plain or gzipped) with precise errors."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from clinflow.errors import UserError

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")


def is_ndjson_name(path: str | os.PathLike[str]) -> bool:
    """Tells whether a file name has an NDJSON suffix (plain or gzipped)."""
    return str(path).lower().endswith(NDJSON_SUFFIXES)


def resource_type_from_name(path: str | os.PathLike[str]) -> str:
    """Returns the resource type a bulk-export file name declares.

    ``Patient.000.ndjson.gz`` and ``Patient.ndjson`` both give ``Patient``.
    """
    return Path(path).name.split(".", 1)[0]


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """Opens a plain or gzipped text file for reading as UTF-8."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """Yields ``(line_number, text)`` for each non-blank line, 1-based.

    Raises:
        UserError: The file is not valid gzip/UTF-8 or is truncated.
    """
    name = Path(path).name
    try:
        with open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        raise UserError(
            f"{name}: cannot be read as UTF-8 NDJSON ({error}); re-export or re-download the file"
        ) from error


def parse_line(name: str, number: int, line: str) -> dict[str, Any]:
    """Parses one NDJSON line into a JSON object.

    Args:
        name: File name used in the error message.
        number: 1-based line number used in the error message.
        line: The raw line.

    Returns:
        The parsed object.

    Raises:
        UserError: The line is not a JSON object.
    """
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{name}:{number}: not valid JSON ({error.msg} at column {error.colno}); the line may be truncated"
        ) from error
    if not isinstance(value, dict):
        raise UserError(f"{name}:{number}: expected a JSON object (a FHIR resource), got {type(value).__name__}")
    return value


def iter_resources(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line_number, resource)`` for each line of an NDJSON file.

    Raises:
        UserError: A line is not a JSON object, or the file is unreadable.
    """
    name = Path(path).name
    for number, line in iter_lines(path):
        yield number, parse_line(name, number, line)


def write_resources(path: str | os.PathLike[str], resources: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> int:
    """Writes resources as compact NDJSON (gzipped when the name ends in ``.gz``).

    Returns:
        The number of resources written.
    """
    count = 0
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for resource in resources:
            handle.write(json.dumps(resource, separators=(",", ":"), ensure_ascii=False))
            handle.write("\n")
            count += 1
    return count
