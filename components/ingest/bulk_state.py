"""The persisted state of one Bulk Data export in its output directory (``bulk_export_state.json``).

It records the request, the job's status URL and kick-off time, the manifest once received, every
file's outcome and whether the job was deleted, so a re-run after a crash reuses the same job,
skips finished files and resumes partial ones. Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from clinflow.errors import UserError

STATE_FILE = "bulk_export_state.json"
STATE_VERSION = 1


class ExportState:
    """Thread-safe view of ``bulk_export_state.json``."""

    def __init__(self, path: Path, document: dict[str, Any]) -> None:
        """Wraps a loaded or new state document (use ``open``)."""
        self.path = path
        self.document = document
        self._lock = threading.Lock()

    @classmethod
    def open(cls, output_dir: Path, request: dict[str, Any]) -> ExportState:
        """Loads the state of ``output_dir`` or starts a new one for ``request``.

        Args:
            output_dir: The export's output directory.
            request: What is exported (base URL, level, group, types, since); a saved state for another
                request is an error rather than a silent mix of two exports.

        Raises:
            UserError: The state file is unreadable or belongs to another request.
        """
        path = output_dir / STATE_FILE
        if not path.exists():
            return cls(path, {"version": STATE_VERSION, "request": request, "files": {}})
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: unreadable export state ({error}); delete it to start a new export") from error
        if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
            raise UserError(f"{path}: unknown export state version; delete it to start a new export")
        if document.get("request") != request:
            raise UserError(
                f"{path}: this directory holds another export (different server, level, group, _type or _since); "
                "use a new output directory or delete the state file"
            )
        document.setdefault("files", {})
        return cls(path, document)

    def get(self, key: str) -> Any:
        """Reads a top-level field."""
        with self._lock:
            return self.document.get(key)

    def update(self, **fields: Any) -> None:
        """Sets top-level fields and saves."""
        with self._lock:
            self.document.update(fields)
            self._save()

    def file_record(self, name: str) -> dict[str, Any] | None:
        """The saved outcome of a file (by local relative path), if any."""
        with self._lock:
            record = self.document["files"].get(name)
            return dict(record) if record else None

    def set_file_record(self, name: str, record: dict[str, Any]) -> None:
        """Saves one file's outcome."""
        with self._lock:
            self.document["files"][name] = record
            self._save()

    def forget_job(self) -> None:
        """Drops the job (status URL, manifest, file outcomes) after the server lost it."""
        with self._lock:
            for key in ("status_url", "kickoff_time", "manifest", "transaction_time", "job_deleted"):
                self.document.pop(key, None)
            self.document["files"] = {}
            self._save()

    def _save(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temporary, self.path)
