"""Key -> value lookups that wait in SQLite files in the stage's scratch directory, not in memory.

The de-identify step needs each patient's known identifiers (``KnownIdentifiers``, for the free-text
redactor) and the lanes need a crosswalk from identifier values to patients. As Beam side inputs
(``AsDict``) the local runner holds them in memory several times over (the grouped values, the
materialised side input and the decoded dict): about 1.5 KB per patient, the one part of the
stage's memory that grew with the number of patients. Here they go to disk instead:

* ``WriteLookupPartsFn`` writes the ``(key, value bytes)`` pairs of each bundle to its own SQLite
  file (a *part*) in ``<scratch>/lookup-parts/`` and yields the part's path from ``finish_bundle``;
* ``merge_lookup_parts`` (one call, over the list of parts) copies the parts into one SQLite file
  with one row per key, merging the values of a key that several parts hold with a given function
  (``merge_known`` for patients that appear twice), and deletes the parts;
* the result is a ``LookupFile``: a few bytes, passed as a singleton side input; each worker
  opens the file once, read-only, through ``LookupReader`` (SQLite's page cache: about 2 MB).

The files hold identifiers (the known identifiers are PHI), so they are built where the stage
deletes them at the end: in the scratch directory itself when it is local (the stage's ``finally``
removes it, failed runs included). A remote scratch directory (``gs://...``) gets its files from a
local temporary file that is moved there (removed on failure too); a worker that reads a remote
file copies it to local disk once and removes the copy on teardown. Values are opaque bytes; keys
are text.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

LOOKUP_PARTS_DIR = "lookup-parts"
INSERT_BATCH = 10_000  # rows per executemany
COPY_BLOCK = 8 << 20  # bytes per read when a file moves to or from a remote filesystem
PART_TABLE = "CREATE TABLE pairs (key TEXT NOT NULL, value BLOB NOT NULL)"
LOOKUP_TABLE = "CREATE TABLE lookup (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"


@dataclass(frozen=True)
class LookupFile:
    """A merged lookup: one SQLite file with one row per key.

    Attributes:
        path: The SQLite file (any Beam filesystem; the stage's scratch directory).
        keys: Distinct keys it holds.
        merged_keys: Keys whose values came from more than one pair and were merged.
    """

    path: str
    keys: int
    merged_keys: int


def is_local(path: str) -> bool:
    """Whether ``path`` is on the local filesystem (SQLite can open it where it is)."""
    return isinstance(FileSystems.get_filesystem(path), LocalFileSystem)


def _new_local_database(destination_dir: str) -> tuple[str, sqlite3.Connection]:
    """A new, empty local SQLite file for bulk writing (no journal, no fsync), in ``destination_dir`` if local.

    Args:
        destination_dir: Where the finished file goes (any Beam filesystem); a remote one gets a
            file in the system's temporary directory, moved there by ``_publish``.
    """
    directory = None
    if is_local(destination_dir):
        directory = os.path.abspath(destination_dir)
        os.makedirs(directory, exist_ok=True)
    handle, local = tempfile.mkstemp(prefix="clinflow-lookup-", suffix=".sqlite", dir=directory)
    os.close(handle)
    connection = sqlite3.connect(local)
    connection.execute("PRAGMA journal_mode = OFF")
    connection.execute("PRAGMA synchronous = OFF")
    return local, connection


def _publish(local: str, path: str) -> None:
    """Moves a finished local file to ``path`` on any Beam filesystem (the local file is gone after)."""
    if is_local(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        shutil.move(local, path)
        return
    with open(local, "rb") as source, FileSystems.create(path, mime_type="application/x-sqlite3") as target:
        shutil.copyfileobj(source, target, COPY_BLOCK)
    os.remove(local)


def _local_copy(path: str) -> tuple[str, bool]:
    """A local path SQLite can open for ``path``, and whether it is a temporary copy to delete after."""
    if is_local(path):
        return path, False
    handle, local = tempfile.mkstemp(prefix="clinflow-lookup-", suffix=".sqlite")
    with (
        os.fdopen(handle, "wb") as target,
        FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as source,
    ):
        shutil.copyfileobj(source, target, COPY_BLOCK)
    return local, True


def _open_read_only(local: str) -> sqlite3.Connection:
    """Opens a finished lookup file read-only (immutable: no locking, shared by worker threads)."""
    uri = f"file:{quote(os.path.abspath(local))}?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


class WriteLookupPartsFn(beam.DoFn):
    """Writes the ``(key, value bytes)`` pairs of each bundle to a SQLite part; yields its path.

    A key may appear in several pairs and parts; ``merge_lookup_parts`` merges them.
    """

    def __init__(self, parts_dir: str, name: str) -> None:
        """Args: parts_dir: Directory for the parts (any Beam filesystem); name: File name prefix."""
        self._parts_dir = parts_dir
        self._name = name

    def start_bundle(self) -> None:
        """Nothing is opened until the bundle's first pair."""
        self._local: str | None = None
        self._connection: sqlite3.Connection | None = None
        self._pending: list[tuple[str, bytes]] = []

    def process(self, pair: tuple[str, bytes]) -> Iterator[Any]:
        """Buffers one pair (written in batches of ``INSERT_BATCH``)."""
        self._pending.append(pair)
        if len(self._pending) >= INSERT_BATCH:
            self._flush()
        return iter(())

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._connection is None:
            self._local, self._connection = _new_local_database(self._parts_dir)
            self._connection.execute(PART_TABLE)
        self._connection.executemany("INSERT INTO pairs VALUES (?, ?)", self._pending)
        self._pending = []

    def finish_bundle(self) -> Iterator[Any]:
        """Closes this bundle's part, moves it to the parts directory and yields its path."""
        self._flush()
        if self._connection is None or self._local is None:
            return
        self._connection.commit()
        self._connection.close()
        path = FileSystems.join(self._parts_dir, f"{self._name}-{uuid.uuid4().hex}.sqlite")
        _publish(self._local, path)
        self._connection, self._local = None, None
        yield WindowedValue(path, GlobalWindow().max_timestamp(), (GlobalWindow(),))

    def teardown(self) -> None:
        """Removes the part of a bundle that failed before it was finished (it holds identifiers)."""
        connection, local = getattr(self, "_connection", None), getattr(self, "_local", None)
        if connection is not None:
            connection.close()
        if local is not None and os.path.exists(local):
            os.remove(local)


def _copy_parts(parts: Sequence[str], staging: sqlite3.Connection) -> None:
    """Appends every part's pairs to the staging database."""
    for part in parts:
        local, temporary = _local_copy(part)
        try:
            staging.execute("ATTACH DATABASE ? AS part", (local,))
            staging.execute("INSERT INTO pairs SELECT key, value FROM part.pairs")
            staging.commit()
            staging.execute("DETACH DATABASE part")
        finally:
            if temporary:
                os.remove(local)


def _merged_rows(
    staging: sqlite3.Connection, merge: Callable[[list[bytes]], bytes], merged: list[int]
) -> Iterator[tuple[str, bytes]]:
    """One ``(key, value)`` per key, in key order; ``merged[0]`` counts keys merged from several values."""
    current: str | None = None
    values: list[bytes] = []
    for key, value in staging.execute("SELECT key, value FROM pairs ORDER BY key"):
        if key != current:
            if current is not None:
                merged[0] += len(values) > 1
                yield current, values[0] if len(values) == 1 else merge(values)
            current, values = key, []
        values.append(value)
    if current is not None:
        merged[0] += len(values) > 1
        yield current, values[0] if len(values) == 1 else merge(values)


def merge_lookup_parts(parts: Sequence[str], path: str, merge: Callable[[list[bytes]], bytes]) -> LookupFile:
    """Merges the parts into one lookup file at ``path`` (one row per key); deletes the parts.

    The pairs are sorted by SQLite on local disk (not in memory), then written key by key.

    Args:
        parts: Paths ``WriteLookupPartsFn`` yielded (none gives an empty lookup).
        path: Where the lookup file goes (any Beam filesystem).
        merge: Merges the values of a key that several pairs hold (called only then).

    Returns:
        The lookup file's description.
    """
    destination_dir = os.path.dirname(path) if is_local(path) else path.rsplit("/", 1)[0]
    staging_path, staging = _new_local_database(destination_dir)
    final_path, final = _new_local_database(destination_dir)
    try:
        staging.execute(PART_TABLE)
        _copy_parts(parts, staging)
        final.execute(LOOKUP_TABLE)
        merged = [0]
        rows = _merged_rows(staging, merge, merged)
        keys = 0
        while batch := [row for _, row in zip(range(INSERT_BATCH), rows, strict=False)]:
            final.executemany("INSERT INTO lookup VALUES (?, ?)", batch)
            keys += len(batch)
        final.commit()
    except BaseException:
        final.close()
        os.remove(final_path)
        raise
    finally:
        staging.close()
        os.remove(staging_path)
    final.close()
    _publish(final_path, path)
    if parts:
        FileSystems.delete(list(parts))
    return LookupFile(path, keys, merged[0])


class LookupReader:
    """Per-worker, read-only access to the current ``LookupFile`` (opened once; a local copy if remote).

    Has the ``get`` of a mapping, so code written for a dict side input reads it unchanged.
    """

    def __init__(self) -> None:
        """Nothing is open until ``use``."""
        self._path: str | None = None
        self._local: str | None = None
        self._temporary = False
        self._connection: sqlite3.Connection | None = None

    def use(self, lookup: LookupFile) -> LookupReader:
        """Opens ``lookup`` unless it is already the open one; returns self."""
        if lookup.path != self._path:
            self.close()
            self._local, self._temporary = _local_copy(lookup.path)
            self._connection = _open_read_only(self._local)
            self._path = lookup.path
        return self

    def get(self, key: str | None) -> bytes | None:
        """The value of ``key`` (None when absent, or when nothing is open)."""
        if key is None or self._connection is None:
            return None
        row = self._connection.execute("SELECT value FROM lookup WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def keys(self) -> Iterator[str]:
        """Every key, in key order (nothing when nothing is open)."""
        if self._connection is None:
            return
        for (key,) in self._connection.execute("SELECT key FROM lookup ORDER BY key"):
            yield key

    def close(self) -> None:
        """Closes the file (and deletes a temporary local copy)."""
        if self._connection is not None:
            self._connection.close()
        if self._temporary and self._local is not None and os.path.exists(self._local):
            os.remove(self._local)
        self._path, self._local, self._temporary, self._connection = None, None, False, None


class TextLookup(Mapping[str, str]):
    """An open lookup whose values are UTF-8 text, as a read-only ``Mapping`` (for code written for a dict).

    Only ``get``/``[]`` are used on the stage's paths; iteration reads every key from the file.
    """

    def __init__(self, reader: LookupReader, keys: int) -> None:
        """Args: reader: An open reader (``LookupReader.use``); keys: The lookup's ``LookupFile.keys``."""
        self._reader = reader
        self._keys = keys

    def __getitem__(self, key: str) -> str:
        """The value of ``key`` as text.

        Raises:
            KeyError: The lookup has no such key.
        """
        value = self._reader.get(key)
        if value is None:
            raise KeyError(key)
        return value.decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        """Every key, in key order."""
        return self._reader.keys()

    def __len__(self) -> int:
        """Distinct keys."""
        return self._keys
