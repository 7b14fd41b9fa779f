"""Lookup files on a remote Beam filesystem (``gs://`` on the real GCS emulator).

On Dataflow the stage's scratch directory is a bucket: the lookup's parts are built locally and
uploaded, and each worker copies the merged file to local disk once to open it with SQLite. The
emulator has no batch-delete endpoint (``FileSystems.delete`` uses it), so the merge, which deletes
its parts, runs here with a local destination on parts that were written to the bucket; what
reaches the bucket and back is the upload, the download and the read.
"""

from __future__ import annotations

import os
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from components.deidentify import lookup_files
from components.deidentify.lookup_files import LookupFile, LookupReader, WriteLookupPartsFn


def _parts_in(prefix: str) -> list[str]:
    return sorted(metadata.path for metadata in FileSystems.match([prefix + "*"])[0].metadata_list)


def test_parts_written_to_a_bucket_are_read_back_through_a_local_copy(gcs_bucket: str, tmp_path: Path) -> None:
    parts_dir = f"gs://{gcs_bucket}/scratch/lookup-parts"
    with beam.Pipeline() as pipeline:
        _ = (
            pipeline
            | beam.Create([("p1", b"one"), ("p2", b"two")])
            | beam.ParDo(WriteLookupPartsFn(parts_dir, "known"))
        )
    parts = _parts_in(parts_dir + "/known-")
    assert parts and all(path.endswith(".sqlite") for path in parts)

    local_parts = []
    for number, part in enumerate(parts):
        local, temporary = lookup_files._local_copy(part)
        assert temporary and os.path.exists(local)
        os.replace(local, tmp_path / f"part-{number}.sqlite")
        local_parts.append(str(tmp_path / f"part-{number}.sqlite"))
    merged = lookup_files.merge_lookup_parts(local_parts, str(tmp_path / "merged.sqlite"), lambda values: values[0])

    remote = f"gs://{gcs_bucket}/scratch/known.sqlite"
    lookup_files._publish(str(tmp_path / "merged.sqlite"), remote)
    assert not (tmp_path / "merged.sqlite").exists()
    reader = LookupReader().use(LookupFile(remote, merged.keys, merged.merged_keys))
    copy = reader._local
    assert copy is not None and os.path.exists(copy)
    assert reader.get("p1") == b"one" and reader.get("p2") == b"two" and reader.get("p3") is None
    reader.close()
    assert not os.path.exists(copy), "the worker's local copy of a remote lookup is removed on close"
