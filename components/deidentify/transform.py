"""De-identify one FHIR resource: a fail-closed walk over every element.

The walk, for each ``key: value`` of an object (resource, contained resource or element):

1. ``resourceType`` at a resource root is kept. ``id`` at the top resource root becomes
   ``HMAC("<Type>/<id>")``; a contained resource keeps its local id (``#x`` references point to
   it); element ids are removed.
2. ``extension``/``modifierExtension``: only US Core race, ethnicity and birth sex survive (with
   their ``ombCategory``/``detailed``/``text`` parts); every other extension is removed.
3. Elements in ``policy.REMOVED_ELEMENTS`` (identifiers, telecom, notes, attachment data/url/
   title, photo/contact/link, geolocation) are removed wherever they occur; ``name`` is removed
   everywhere except ``Device.deviceName.name``; a ``text`` object (Narrative) is removed.
4. ``address``: on the Patient it keeps ``use``/``type``/``state``/``country`` and the ZIP3 of
   ``postalCode`` (restricted ZIP3 -> ``000``); everywhere else it is removed.
5. ``reference`` is rewritten (``components.deidentify.references``); ``uid`` becomes a
   ``2.25.<n>`` UID derived from the key.
6. Objects and lists recurse; objects or lists left empty are dropped.
7. String leaves: codes/URIs (``CODE_KEYS``) stay; any value matching a FHIR date/dateTime/
   instant is shifted by the patient's offset (removed for resources without a patient); tokens
   (``TOKEN_KEYS``), Coding ``display`` and CodeableConcept ``text`` stay; every other string is
   removed and counted (free text or unclassified, with its element path).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from components.deidentify import policy
from components.deidentify.dates import cap_birth_date, looks_like_date, parse_day, shift_date
from components.deidentify.keys import date_offset_days, pseudonym, pseudonymous_uid
from components.deidentify.references import resource_patient_id, rewrite_reference

REMOVED: Any = object()  # sentinel: drop this element
ZIP3_RE = re.compile(r"^\s*(\d{3})")
SAFE_PATH_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

# Keys handled by ``_element`` before the generic recursion in ``_value``.
SPECIAL_KEYS = frozenset(
    {"resourceType", "id", "extension", "modifierExtension", "name", "text", "address", "reference", "uid"}
    | {"contained"}
    | set(policy.REMOVED_ELEMENTS)
)

REMOVED_PREFIX = "removed\t"
REWRITTEN_PREFIX = "rewritten\t"
UNCLASSIFIED_PATH_PREFIX = "unclassified_path\t"


@dataclass
class WalkContext:
    r"""State for de-identifying one resource.

    Attributes:
        key: The HMAC key.
        resource_type: The top-level resource type.
        offset: The patient's date offset in days; None when the resource has no patient.
        stats: Counters to add to (``removed\t<category>``, ``rewritten\t<category>``,
            ``unclassified_path\t<path>``).
        latest_day: The latest original ``YYYY-MM-DD`` prefix of any shifted date (for the
            end of data used by the age cap); ``""`` when none.
    """

    key: bytes
    resource_type: str
    offset: int | None
    stats: Counter[str] = field(default_factory=Counter)
    latest_day: str = ""

    def removed(self, category: str, count: int = 1) -> None:
        """Counts removed elements of a category."""
        self.stats[REMOVED_PREFIX + category] += count

    def rewritten(self, category: str) -> None:
        """Counts one rewritten value of a category."""
        self.stats[REWRITTEN_PREFIX + category] += 1

    def unclassified(self, path: str, count: int = 1) -> None:
        """Counts removed values the policy does not know, by element path."""
        self.removed(policy.UNCLASSIFIED, count)
        self.stats[UNCLASSIFIED_PATH_PREFIX + path] += count


def _size(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


@lru_cache(maxsize=4096)
def _path_key(key: str) -> str:
    return key if SAFE_PATH_KEY_RE.match(key) else "<invalid-key>"


def _path(path: str, key: str) -> str:
    """Extends an element path; keys that are not element-like names are not echoed (no PHI)."""
    return path + "." + _path_key(key)


def deidentify_resource(resource: dict[str, Any], key: bytes, stats: Counter[str]) -> tuple[dict[str, Any], str]:
    """De-identifies one non-Patient resource (Patients go through ``deidentify_patient``).

    Args:
        resource: The parsed resource (not modified).
        key: The HMAC key.
        stats: Counters to add to.

    Returns:
        The de-identified resource and the latest original day among its shifted dates.
    """
    patient_id = resource_patient_id(resource)
    offset = date_offset_days(key, patient_id) if patient_id else None
    ctx = WalkContext(key, str(resource["resourceType"]), offset, stats)
    return _walk_object(resource, ctx.resource_type, ctx, root="resource"), ctx.latest_day


def deidentify_patient(resource: dict[str, Any], key: bytes, stats: Counter[str], end_of_data: str) -> dict[str, Any]:
    """De-identifies a Patient and caps ages over 89.

    The patient's reference day is its death (``deceasedDateTime``) or else the end of data,
    whichever is earlier. When the age on that day is 90 or more, the shifted ``birthDate`` gets
    the year that makes the age on the shifted reference day exactly 90 (a full date is kept).

    Args:
        resource: The parsed Patient (must have an ``id``).
        key: The HMAC key.
        stats: Counters to add to.
        end_of_data: ``YYYY-MM-DD`` of the latest (original) date in the export; ``""`` means
            today.

    Returns:
        The de-identified Patient.
    """
    offset = date_offset_days(key, str(resource["id"]))
    ctx = WalkContext(key, "Patient", offset, stats)
    out = _walk_object(resource, "Patient", ctx, root="resource")
    birth = parse_day(resource.get("birthDate")) if isinstance(resource.get("birthDate"), str) else None
    if birth is None or "birthDate" not in out:
        return out
    reference = parse_day(end_of_data) or dt.date.today()
    deceased = resource.get("deceasedDateTime")
    death = parse_day(deceased) if isinstance(deceased, str) else None
    if death is not None and death < reference:
        reference = death
    age = reference.year - birth.year - ((reference.month, reference.day) < (birth.month, birth.day))
    if age >= policy.AGE_CAP_YEARS:
        out["birthDate"] = cap_birth_date(out["birthDate"], reference + dt.timedelta(days=offset), policy.AGE_CAP_YEARS)
        ctx.rewritten(policy.AGES_CAPPED)
    return out


def _walk_object(obj: dict[str, Any], path: str, ctx: WalkContext, root: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key in SPECIAL_KEYS or value is None:
            new = _element(key, value, obj, path, ctx, root)
        else:
            new = _value(key, value, obj, _path(path, key), ctx)
        if new is not REMOVED:
            out[key] = new
    return out


def _element(key: str, value: Any, parent: dict[str, Any], path: str, ctx: WalkContext, root: str | None) -> Any:
    """Applies the policy to one element (steps 1-6 of the module docstring)."""
    if value is None:
        ctx.unclassified(_path(path, key))
        return REMOVED
    if key == "resourceType" and root:
        return value
    if key == "id":
        return _resource_id(value, ctx, root, path)
    if key in ("extension", "modifierExtension"):
        return _extensions(value, _path(path, key), ctx, parent_url=None)
    category = policy.REMOVED_ELEMENTS.get(key)
    if category is not None:
        ctx.removed(category, _size(value))
        return REMOVED
    if key == "name" and not path.endswith(".deviceName"):
        ctx.removed(policy.NAMES, _size(value))
        return REMOVED
    if key == "text" and isinstance(value, dict):
        ctx.removed(policy.NARRATIVES)
        return REMOVED
    if key == "address":
        return _address(value, ctx, patient_root=root == "resource" and ctx.resource_type == "Patient")
    if key == "reference" and isinstance(value, str):
        return _reference(value, parent, path, ctx)
    if key == "uid" and isinstance(value, str):
        ctx.rewritten(policy.UIDS_REKEYED)
        return pseudonymous_uid(ctx.key, value)
    if key == "contained" and isinstance(value, list):
        return _drop_empty([_contained(item, _path(path, key), ctx) for item in value])
    return _value(key, value, parent, _path(path, key), ctx)


def _value(key: str, value: Any, parent: dict[str, Any], path: str, ctx: WalkContext) -> Any:
    """Recurses into objects and lists; classifies scalars."""
    kind = type(value)
    if kind is str:
        return _string(key, value, parent, path, ctx)
    if kind is dict:
        walked = _walk_object(value, path, ctx)
        return walked if walked else REMOVED
    if kind is list:
        items = []
        for item in value:
            if type(item) is list or item is None:
                ctx.unclassified(path)
                continue
            new = _value(key, item, parent, path, ctx)
            if new is not REMOVED:
                items.append(new)
        return items if items else REMOVED
    if kind is bool or kind is int or kind is float:
        return value
    ctx.unclassified(path)
    return REMOVED


def _drop_empty(items: list[Any]) -> Any:
    kept = [item for item in items if item is not REMOVED]
    return kept if kept else REMOVED


def _string(key: str, value: str, parent: dict[str, Any], path: str, ctx: WalkContext) -> Any:
    """Classifies one string leaf (step 7)."""
    if key in policy.CODE_KEYS:
        return value
    if looks_like_date(value, key):
        return _date(key, value, ctx)
    if key in policy.TOKEN_KEYS:
        return value
    if key == "display" and ("code" in parent or "system" in parent):
        return value
    if key == "text" and "coding" in parent:
        return value
    if key == "name" and path.endswith(".deviceName.name"):
        return value  # a device model name, not a person's
    if key == "valueString" and parent.get("url") == "text" and path.endswith(".extension.valueString"):
        return value  # US Core race/ethnicity text; only reachable inside an allowed extension
    if key in policy.FREE_TEXT_KEYS:
        ctx.removed(policy.FREE_TEXT)
    else:
        ctx.unclassified(path)
    return REMOVED


def _date(key: str, value: str, ctx: WalkContext) -> Any:
    if ctx.offset is None:
        ctx.removed(policy.DATES_REMOVED)
        return REMOVED
    shifted = shift_date(value, ctx.offset)
    if shifted is None:
        ctx.removed(policy.DATES_REMOVED)
        return REMOVED
    if key not in policy.END_OF_DATA_EXCLUDED_KEYS and value[:10] > ctx.latest_day:
        ctx.latest_day = value[:10]
    ctx.rewritten(policy.DATES_SHIFTED)
    return shifted


def _resource_id(value: Any, ctx: WalkContext, root: str | None, path: str) -> Any:
    if root == "resource" and isinstance(value, str) and value:
        ctx.rewritten(policy.IDS_PSEUDONYMISED)
        return pseudonym(ctx.key, ctx.resource_type, value)
    if root == "contained" and isinstance(value, str) and value:
        return value
    ctx.removed(policy.IDENTIFIERS)
    return REMOVED


def _reference(value: str, holder: dict[str, Any], path: str, ctx: WalkContext) -> Any:
    element = path.rsplit(".", 1)[-1]
    rewritten = rewrite_reference(ctx.key, value, holder, element)
    if rewritten is None:
        ctx.removed(policy.REFERENCES_REMOVED)
        return REMOVED
    if rewritten != value:
        ctx.rewritten(policy.REFERENCES_REKEYED)
    return rewritten


def _contained(item: Any, path: str, ctx: WalkContext) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("resourceType"), str):
        ctx.unclassified(path)
        return REMOVED
    return _walk_object(item, _path(path, str(item["resourceType"])), ctx, root="contained")


def _extensions(value: Any, path: str, ctx: WalkContext, parent_url: str | None) -> Any:
    """Keeps the allowed (US Core race/ethnicity/birth sex) extensions, removes the rest."""
    if not isinstance(value, list):
        ctx.removed(policy.EXTENSIONS)
        return REMOVED
    kept = []
    for extension in value:
        url = extension.get("url") if isinstance(extension, dict) else None
        allowed = (
            url in policy.ALLOWED_EXTENSIONS[parent_url] if parent_url is not None else url in policy.ALLOWED_EXTENSIONS
        )
        if not allowed:
            ctx.removed(policy.EXTENSIONS)
            continue
        kept.append(_allowed_extension(extension, path, ctx, url if parent_url is None else None))
    return _drop_empty(kept)


def _allowed_extension(extension: dict[str, Any], path: str, ctx: WalkContext, own_url: str | None) -> Any:
    out: dict[str, Any] = {"url": extension["url"]}
    for key, value in extension.items():
        if key == "url":
            continue
        if key == "extension" and own_url is not None:
            new = _extensions(value, _path(path, key), ctx, parent_url=own_url)
        elif key in ("extension", "id"):
            ctx.removed(policy.EXTENSIONS if key == "extension" else policy.IDENTIFIERS, _size(value))
            new = REMOVED
        else:
            new = _value(key, value, extension, _path(path, key), ctx)
        if new is not REMOVED:
            out[key] = new
    return out if len(out) > 1 else REMOVED


def _address(value: Any, ctx: WalkContext, patient_root: bool) -> Any:
    """Generalises Patient addresses to state/ZIP3/country; removes every other address."""
    if not patient_root:
        ctx.removed(policy.ADDRESSES, _size(value))
        return REMOVED
    addresses = value if isinstance(value, list) else [value]
    kept = [_patient_address(address, ctx) for address in addresses]
    result = _drop_empty(kept)
    return result if isinstance(value, list) or result is REMOVED else result[0]


def _patient_address(address: Any, ctx: WalkContext) -> Any:
    if not isinstance(address, dict):
        ctx.removed(policy.ADDRESSES)
        return REMOVED
    out: dict[str, Any] = {}
    removed = False
    for key, value in address.items():
        if key in policy.PATIENT_ADDRESS_KEPT and isinstance(value, str):
            out[key] = value
        elif key == "postalCode" and isinstance(value, str) and ZIP3_RE.match(value):
            zip3 = ZIP3_RE.match(value).group(1)  # type: ignore[union-attr]
            out[key] = "000" if zip3 in policy.RESTRICTED_ZIP3 else zip3
            ctx.rewritten(policy.POSTAL_CODES_GENERALISED)
        else:
            removed = True
    if removed:
        ctx.removed(policy.ADDRESSES)
    return out if out else REMOVED
