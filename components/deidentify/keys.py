"""The HMAC key and everything derived from it: pseudonyms, DICOM-style UIDs, date offsets.

The key reaches the stage as the environment variable ``CLINFLOW_HMAC_KEY`` (a Kubernetes
Secret on a cluster). It is never logged, reported or written anywhere; only values derived
from it with HMAC-SHA256 leave this module.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from functools import lru_cache

from clinflow.errors import UserError

KEY_ENV = "CLINFLOW_HMAC_KEY"
MIN_KEY_CHARS = 32
MAX_SHIFT_DAYS = 365


def load_key(environ: Mapping[str, str] | None = None) -> bytes:
    """Reads the HMAC key from ``CLINFLOW_HMAC_KEY``.

    Args:
        environ: The environment to read; ``os.environ`` by default.

    Returns:
        The key as UTF-8 bytes.

    Raises:
        UserError: The variable is unset, or shorter than 32 characters.
    """
    value = (os.environ if environ is None else environ).get(KEY_ENV, "")
    how = (
        f"set {KEY_ENV} to a random secret of at least {MIN_KEY_CHARS} characters, e.g. "
        f'`export {KEY_ENV}="$(openssl rand -hex 32)"` locally, or mount it from a Kubernetes Secret '
        "on a cluster; keep the same key to keep pseudonyms stable across runs"
    )
    if not value:
        raise UserError(f"{KEY_ENV} is not set; the deidentify stage refuses to run without a key: {how}")
    if len(value) < MIN_KEY_CHARS:
        raise UserError(f"{KEY_ENV} is too short ({len(value)} characters): {how}")
    return value.encode("utf-8")


def hmac_hex(key: bytes, message: str) -> str:
    """Returns ``HMAC-SHA256(key, message)`` as 64 lowercase hex characters."""
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


@lru_cache(maxsize=65536)
def pseudonym(key: bytes, resource_type: str, resource_id: str) -> str:
    """Returns the pseudonymous id of a resource: ``HMAC-SHA256(key, "<Type>/<id>")`` hex.

    All 64 hex characters are kept; that is exactly the FHIR ``id`` length limit.

    Args:
        key: The HMAC key.
        resource_type: The resource type, e.g. ``"Patient"``.
        resource_id: The original logical id.

    Returns:
        The pseudonym; the same key and input always give the same output.
    """
    return hmac_hex(key, f"{resource_type}/{resource_id}")


@lru_cache(maxsize=65536)
def conditional_pseudonym(key: bytes, resource_type: str, query: str) -> str:
    """Returns the pseudonym of a conditional reference ``<Type>?<query>``.

    Args:
        key: The HMAC key.
        resource_type: The type before the ``?``.
        query: The search query after the ``?`` (it usually carries an identifier).

    Returns:
        ``HMAC-SHA256(key, "<Type>?<query>")`` hex.
    """
    return hmac_hex(key, f"{resource_type}?{query}")


def pseudonymous_uid(key: bytes, uid: str) -> str:
    """Maps a DICOM/OID UID to a stable ``2.25.<decimal>`` UID derived from the key.

    ``2.25`` is the UUID-derived OID arc (ISO/IEC 9834-8) DICOM allows for generated UIDs; 128
    bits of the HMAC give at most 39 digits, within the 64-character UID limit.

    Args:
        key: The HMAC key.
        uid: The original UID.

    Returns:
        The replacement UID; the same key and UID always give the same output.
    """
    return "2.25." + str(int(hmac_hex(key, f"uid:{uid}")[:32], 16))


@lru_cache(maxsize=65536)
def date_offset_days(key: bytes, patient_id: str) -> int:
    """Returns the patient's date shift, a whole number of days in [-365, -1] or [1, 365].

    The offset comes from ``HMAC-SHA256(key, "date-shift:Patient/<original id>")``: its first 8
    bytes as an unsigned integer modulo 730 select one of the 730 non-zero offsets, so every
    resource of the patient (and, later, every DICOM study) shifts by the same amount.

    Args:
        key: The HMAC key.
        patient_id: The patient's original logical id.

    Returns:
        The offset in days; never 0.
    """
    digest = hmac.new(key, f"date-shift:Patient/{patient_id}".encode(), hashlib.sha256).digest()
    slot = int.from_bytes(digest[:8], "big") % (2 * MAX_SHIFT_DAYS)
    return slot - MAX_SHIFT_DAYS if slot < MAX_SHIFT_DAYS else slot - MAX_SHIFT_DAYS + 1
