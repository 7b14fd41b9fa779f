"""De-identify one FHIR resource: a generic, fail-closed walk over every element, driven by the policy.

For each ``key: value`` of an object (resource, contained resource or element):

1. ``resourceType`` at a resource root is kept. ``id`` at the top resource root becomes
   ``HMAC("<Type>/<id>")``; a contained resource keeps its local id (``#x`` references point to
   it) and is walked with the same rules; element ids are removed.
2. ``extension``/``modifierExtension``: the policy's kept extensions (US Core race, ethnicity,
   birth sex) survive with their allowed parts; every other URL is removed and counted (under its
   Safe Harbor category when the policy names one, else ``extensions``).
3. ``fhir.remove`` elements go wherever they occur, counted under their Safe Harbor category;
   ``telecom`` is counted per ContactPoint system; ``identifier`` is removed or pseudonymised and
   counted per identifier type (SS -> ssn, MR -> mrn, ...); a ``text`` object (Narrative) goes.
4. ``address`` keeps the policy's parts for the resource type; ``postalCode`` becomes ZIP3
   (restricted prefixes -> ``000``).
5. ``reference`` is rewritten (``components.deidentify.references``); conditional references are
   resolved through the identifier crosswalk; ``uid`` becomes a ``2.25.<n>`` UID.
6. Attachments: base64 ``data`` of a text content type is decoded, redacted and re-encoded
   (``size`` recomputed, ``hash`` removed); other data is removed.
7. String leaves: codes/URIs stay; FHIR dates are shifted by the patient's offset (or cut to the
   year); tokens, Coding ``display`` and CodeableConcept ``text`` stay; free-text elements go
   through the redactor with the patient's known identifiers; every other string is removed and
   counted as ``unclassified`` with its element path.
8. Age quantities (``onsetAge``, UCUM ``a``) over the cap become the cap.

Speed: most objects of an export repeat (a CodeableConcept, a Quantity unit, a category). The walk
of an object that neither counted anything nor used the key, the patient's offset, the redactor or
the crosswalk (``WalkContext.touched`` unchanged) depends only on its element path, its content
and the policy; such results are memoised per policy and worker (``SubtreeMemo``), keyed by the
path and the object's serialised bytes, so the next identical object costs one serialisation and
one lookup. Paths whose objects rarely repeat or always touch something stop being tried.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import orjson

from components.deidentify import policy
from components.deidentify.dates import cap_birth_date, looks_like_date, parse_day, shift_date
from components.deidentify.keys import date_offset_days, hmac_hex, pseudonym, pseudonymous_uid
from components.deidentify.policy import FhirRules, Policy
from components.deidentify.references import CONDITIONAL_RE, resource_patient_id, rewrite_reference

REMOVED: Any = object()  # sentinel: drop this element


class _DeferTextError(Exception):
    """Raised at the first free text met while deferring: the walk stops (it is redone with a redactor)."""


ZIP3_RE = re.compile(r"^\s*(\d{3})")
SAFE_PATH_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
TEXT_CONTENT_RE = re.compile(r"^(text/|application/(json|xml|fhir\+json|fhir\+xml))", re.IGNORECASE)
UCUM = "http://unitsofmeasure.org"
AGE_UNITS = frozenset({"a", "yr", "year", "years"})

REMOVED_PREFIX = "removed\t"
REWRITTEN_PREFIX = "rewritten\t"
UNCLASSIFIED_PATH_PREFIX = "unclassified_path\t"
FREE_TEXT_PREFIX = "free_text\t"

# Keys handled by ``_element`` before the generic recursion in ``_value``.
BASE_SPECIAL_KEYS = frozenset(
    {
        "resourceType",
        "id",
        "extension",
        "modifierExtension",
        "name",
        "text",
        "address",
        "reference",
        "uid",
        "contained",
        "telecom",
        "identifier",
        "data",
    }
)


MEMO_MAX_ENTRIES = 20000  # memoised objects per policy and worker (then the memo starts over)
MEMO_TRIAL_ATTEMPTS = 64  # lookups of a path before its hit rate decides whether it stays memoised
MEMO_MIN_HIT_RATE = 0.25


class SubtreeMemo:
    """Per-policy memo of object walks that depend only on the element path and the content.

    Attributes:
        special_keys: Keys ``_walk_object`` hands to ``_element`` (base special keys and the
            policy's removed elements).
        entries: ``(path, serialised object) -> walk result`` (shared: never mutated by callers).
        attempts: Lookups per path.
        hits: Hits per path.
        disabled: Paths no longer memoised (low hit rate, or their objects always touch the context).
        trusted: Paths past their trial with a good hit rate (no longer counted).
    """

    def __init__(self, rules: FhirRules) -> None:
        """Starts empty for one policy's rules."""
        self.special_keys = BASE_SPECIAL_KEYS | frozenset(rules.removed_elements)
        self.entries: dict[tuple[str, bytes], Any] = {}
        self.attempts: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()
        self.disabled: set[str] = set()
        self.trusted: set[str] = set()

    def lookup(self, path: str, blob: bytes) -> Any:
        """The memoised walk of ``blob`` at ``path``, or None (counts the attempt during the trial)."""
        found = self.entries.get((path, blob))
        if path in self.trusted:
            return found
        attempts = self.attempts[path] = self.attempts[path] + 1
        if found is not None:
            self.hits[path] += 1
        if attempts >= MEMO_TRIAL_ATTEMPTS:
            if self.hits[path] < attempts * MEMO_MIN_HIT_RATE:
                self.disabled.add(path)
            else:
                self.trusted.add(path)
        return found

    def store(self, path: str, blob: bytes, walked: Any) -> None:
        """Remembers a walk that touched nothing (the memo starts over when full)."""
        if len(self.entries) >= MEMO_MAX_ENTRIES:
            self.entries.clear()
        self.entries[(path, blob)] = walked


_MEMOS: dict[int, tuple[FhirRules, SubtreeMemo]] = {}  # id(rules) -> (rules kept alive, memo)
MEMO_POLICIES = 16


def memo_for(rules: FhirRules) -> SubtreeMemo:
    """The subtree memo of one policy's rules (one per rules object and worker process)."""
    found = _MEMOS.get(id(rules))
    if found is not None and found[0] is rules:
        return found[1]
    if len(_MEMOS) >= MEMO_POLICIES:
        _MEMOS.clear()
    memo = SubtreeMemo(rules)
    _MEMOS[id(rules)] = (rules, memo)
    return memo


class TextRedactor(Protocol):
    """What the walk needs from ``components.deidentify.free_text.Redactor``."""

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """Returns the redacted text and counts per category."""
        ...


@dataclass
class WalkContext:
    r"""State for de-identifying one resource.

    Attributes:
        key: The HMAC key.
        rules: The policy's FHIR rules.
        resource_type: The top-level resource type.
        offset: The patient's date offset in days; None when the resource has no patient.
        stats: Counters to add to (``removed\t<category>``, ``rewritten\t<category>``,
            ``unclassified_path\t<path>``, ``free_text\t<category>``).
        redactor: The free-text redactor of the resource's patient; None defers (see ``defer_text``).
        defer_text: True when free text must wait for the patient's redactor: the walk only records
            ``needs_text`` and the caller walks the resource again with a redactor.
        crosswalk: ``"<Type>|<system>|<value>" -> original id`` for conditional references.
        provider_redactor: Applied after the patient's redactor: the names, addresses, telecom and
            identifiers of providers (Practitioner, Organization, ...) that free text may mention.
        latest_day: The latest original ``YYYY-MM-DD`` of any shifted date (end of data, age cap).
        needs_text: Set when free text was met while deferring.
        removed_any: Set when anything was removed or redacted (``meta.security`` REDACTED).
        touched: Number of counted events and context uses (key, offset, redactor, crosswalk);
            an object walk that leaves it unchanged may be memoised (``SubtreeMemo``).
        memo: The policy's subtree memo (None: no memoisation).
    """

    key: bytes
    rules: FhirRules
    resource_type: str
    offset: int | None
    stats: Counter[str] = field(default_factory=Counter)
    redactor: TextRedactor | None = None
    defer_text: bool = False
    crosswalk: Mapping[str, str] | None = None
    provider_redactor: TextRedactor | None = None
    latest_day: str = ""
    needs_text: bool = False
    removed_any: bool = False
    touched: int = 0
    memo: SubtreeMemo | None = None

    def removed(self, category: str, count: int = 1) -> None:
        """Counts removed elements of a category."""
        self.stats[REMOVED_PREFIX + category] += count
        self.removed_any = True
        self.touched += 1

    def rewritten(self, category: str, count: int = 1) -> None:
        """Counts rewritten values of a category."""
        self.stats[REWRITTEN_PREFIX + category] += count
        self.touched += 1

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


@dataclass(frozen=True)
class Outcome:
    """The result of de-identifying one resource.

    Attributes:
        resource: The de-identified resource (meta tagged with the policy).
        latest_day: Latest original day among its shifted dates (``""`` when none).
        needs_text: The resource holds free text that waits for its patient's redactor.
        patient_id: The original id of the resource's patient (None when it has none).
    """

    resource: dict[str, Any]
    latest_day: str
    needs_text: bool
    patient_id: str | None


def deidentify_resource(
    resource: dict[str, Any],
    key: bytes,
    stats: Counter[str],
    rules: FhirRules,
    the_policy: Policy,
    redactor: TextRedactor | None = None,
    defer_text: bool = False,
    crosswalk: Mapping[str, str] | None = None,
    provider_redactor: TextRedactor | None = None,
) -> Outcome:
    """De-identifies one non-Patient resource (Patients go through ``deidentify_patient``).

    Args:
        resource: The parsed resource (not modified).
        key: The HMAC key.
        stats: Counters to add to.
        rules: The policy's FHIR rules.
        the_policy: The policy (stamped into ``meta``).
        redactor: The free-text redactor of the resource's patient.
        defer_text: Record ``needs_text`` instead of redacting when ``redactor`` is None.
        crosswalk: Identifier crosswalk for conditional references.
        provider_redactor: Redacts provider values from free text after ``redactor``.

    Returns:
        The outcome. When ``needs_text`` is set, the walk stopped at the first free text (``resource``
        is empty, ``latest_day`` only a lower bound): the resource must be walked again with a
        redactor (its counts are then discarded by the caller passing a scratch ``stats``).
    """
    patient_id = resource_patient_id(resource)
    offset = date_offset_days(key, patient_id) if patient_id else None
    ctx = WalkContext(
        key,
        rules,
        str(resource["resourceType"]),
        offset,
        stats,
        redactor=redactor,
        defer_text=defer_text and redactor is None and patient_id is not None,
        crosswalk=crosswalk,
        provider_redactor=provider_redactor,
        memo=memo_for(rules),
    )
    try:
        out = _walk_object(resource, ctx.resource_type, ctx, root="resource")
    except _DeferTextError:
        # The walk stopped early: the caller walks the resource again with its patient's redactor
        # (``latest_day`` is then only a lower bound; the second walk gives the full value).
        return Outcome({}, ctx.latest_day, True, patient_id)
    _stamp(out, the_policy, ctx)
    return Outcome(out, ctx.latest_day, ctx.needs_text, patient_id)


def deidentify_patient(
    resource: dict[str, Any],
    key: bytes,
    stats: Counter[str],
    end_of_data: str,
    rules: FhirRules,
    the_policy: Policy,
    redactor: TextRedactor | None = None,
    provider_redactor: TextRedactor | None = None,
) -> dict[str, Any]:
    """De-identifies a Patient and aggregates ages over the policy's cap.

    The patient's reference day is its death (``deceasedDateTime``) or else the end of data,
    whichever is earlier. When the age on that day is over ``ages.aggregate_over``, the
    de-identified ``birthDate`` gets the year that makes the age on the (shifted) reference day
    exactly ``ages.reported_as`` (in year mode: reference year minus that age).

    Args:
        resource: The parsed Patient (must have an ``id``).
        key: The HMAC key.
        stats: Counters to add to.
        end_of_data: ``YYYY-MM-DD`` of the latest (original) date in the export; ``""`` = today.
        rules: The policy's FHIR rules.
        the_policy: The policy (stamped into ``meta``).
        redactor: The patient's own free-text redactor.
        provider_redactor: Redacts provider values from free text after ``redactor``.

    Returns:
        The de-identified Patient.
    """
    offset = date_offset_days(key, str(resource["id"]))
    ctx = WalkContext(key, rules, "Patient", offset, stats, redactor=redactor, provider_redactor=provider_redactor)
    ctx.memo = memo_for(rules)
    out = _walk_object(resource, "Patient", ctx, root="resource")
    _stamp(out, the_policy, ctx)
    birth = parse_day(resource.get("birthDate")) if isinstance(resource.get("birthDate"), str) else None
    if birth is None or "birthDate" not in out:
        return out
    reference = reference_day(resource, end_of_data)
    age = reference.year - birth.year - ((reference.month, reference.day) < (birth.month, birth.day))
    if age > rules.age_over:
        if rules.date_mode == "year":
            out["birthDate"] = f"{reference.year - rules.age_reported:04d}"
        else:
            shifted_reference = reference + dt.timedelta(days=offset)
            out["birthDate"] = cap_birth_date(out["birthDate"], shifted_reference, rules.age_reported)
        ctx.rewritten(policy.AGES_CAPPED)
    return out


def reference_day(patient: dict[str, Any], end_of_data: str) -> dt.date:
    """The day ages are measured on: death, or the end of data (today when unknown), whichever is earlier."""
    reference = parse_day(end_of_data) or dt.date.today()
    deceased = patient.get("deceasedDateTime")
    death = parse_day(deceased) if isinstance(deceased, str) else None
    return death if death is not None and death < reference else reference


def _stamp(out: dict[str, Any], the_policy: Policy, ctx: WalkContext) -> None:
    """Records the policy on the resource: ``meta.tag`` (policy and hash) and ``meta.security``.

    ``meta`` and its lists are copied, never extended in place: a walked object may be shared
    with other resources through the subtree memo.
    """
    meta = dict(out.get("meta") or {})
    meta["tag"] = [
        *(meta.get("tag") or []),
        {"system": policy.POLICY_TAG_SYSTEM, "code": the_policy.label},
        {"system": policy.POLICY_HASH_TAG_SYSTEM, "code": the_policy.sha256},
    ]
    security = [*(meta.get("security") or []), {"system": policy.SECURITY_SYSTEM, "code": "PSEUDED"}]
    if ctx.removed_any:
        security.append({"system": policy.SECURITY_SYSTEM, "code": "REDACTED"})
    meta["security"] = security
    out["meta"] = meta


def _walk_object(obj: dict[str, Any], path: str, ctx: WalkContext, root: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    memo = ctx.memo if ctx.memo is not None else memo_for(ctx.rules)
    special = memo.special_keys
    code_keys = ctx.rules.code_keys
    for key, value in obj.items():
        kind = type(value)
        if value is None or key in special:
            new = _element(key, value, obj, path, ctx, root)
        elif kind is str:
            if key in code_keys:
                new = value  # codes, systems, units: kept (the first rule of ``_string``)
            elif looks_like_date(value, key):
                new = _date(key, value, ctx)  # the second rule of ``_string``
            else:
                new = _other_string(key, value, obj, _path(path, key), ctx)
        elif kind is int or kind is float or kind is bool:
            new = value
        else:
            new = _value(key, value, obj, _path(path, key), ctx)
        if new is not REMOVED:
            out[key] = new
    return out


def _memoised_object(key: str, value: dict[str, Any], path: str, ctx: WalkContext) -> Any:
    """Walks an object through the subtree memo (see the module docstring)."""
    memo = ctx.memo
    if memo is None or path in memo.disabled:
        return _walk_dict(key, value, path, ctx)
    blob = orjson.dumps(value)
    found = memo.lookup(path, blob)
    if found is not None:
        return found
    before = ctx.touched
    walked = _walk_dict(key, value, path, ctx)
    if ctx.touched == before:
        memo.store(path, blob, walked)
    return walked


def _walk_dict(key: str, value: dict[str, Any], path: str, ctx: WalkContext) -> Any:
    walked = _walk_object(value, path, ctx)
    if walked and _is_age(key, walked):
        _cap_age(walked, ctx)
    if "data" in walked and "contentType" in walked and "size" in walked:
        walked["size"] = len(base64.b64decode(walked["data"]))
    return walked if walked else REMOVED


def _element(key: str, value: Any, parent: dict[str, Any], path: str, ctx: WalkContext, root: str | None) -> Any:
    """Applies the policy to one element (steps 1-6 of the module docstring)."""
    rules = ctx.rules
    if value is None:
        ctx.unclassified(_path(path, key))
        return REMOVED
    if key == "resourceType" and root:
        return value
    if key == "id":
        return _resource_id(value, ctx, root)
    if key in ("extension", "modifierExtension"):
        return _extensions(value, _path(path, key), ctx, parent_url=None)
    if key == "name" and (path + ".name").endswith(rules.keep_name_paths):
        return _value(key, value, parent, _path(path, key), ctx)
    category = rules.removed_elements.get(key)
    if category is not None:
        ctx.removed(category, _size(value))
        return REMOVED
    if key == "name":
        ctx.removed("names", _size(value))
        return REMOVED
    if key == "text" and isinstance(value, dict):
        ctx.removed(policy.NARRATIVES)
        return REMOVED
    if key == "telecom":
        return _telecom(value, _path(path, key), ctx)
    if key == "identifier":
        return _identifiers(value, _path(path, key), ctx)
    if key == "address":
        return _address(value, ctx, root_type=ctx.resource_type if root else None, path=path)
    if key == "reference" and isinstance(value, str):
        return _reference(value, parent, path, ctx)
    if key == "uid" and isinstance(value, str):
        ctx.rewritten(policy.UIDS_REKEYED)
        return pseudonymous_uid(ctx.key, value)
    if key == "contained" and isinstance(value, list):
        return _drop_empty([_contained(item, _path(path, key), ctx) for item in value])
    if key == "data" and isinstance(value, str) and "contentType" in parent:
        return _attachment_data(value, parent, ctx)
    return _value(key, value, parent, _path(path, key), ctx)


def _value(key: str, value: Any, parent: dict[str, Any], path: str, ctx: WalkContext) -> Any:
    """Recurses into objects and lists; classifies scalars."""
    kind = type(value)
    if kind is str:
        return _string(key, value, parent, path, ctx)
    if kind is dict:
        if len(value) == 1 and type(value.get("reference")) is str:
            # A bare Reference (subject, encounter, ...): what the generic walk does, without its overhead.
            rewritten = _reference(value["reference"], value, path, ctx)
            return REMOVED if rewritten is REMOVED else {"reference": rewritten}
        return _memoised_object(key, value, path, ctx)
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


def _is_age(key: str, quantity: dict[str, Any]) -> bool:
    value = quantity.get("value")
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if key.endswith("Age") or key == "age":
        return True
    return quantity.get("system") == UCUM and (quantity.get("code") in AGE_UNITS or quantity.get("unit") in AGE_UNITS)


def _cap_age(quantity: dict[str, Any], ctx: WalkContext) -> None:
    if quantity["value"] > ctx.rules.age_over:
        quantity["value"] = ctx.rules.age_reported
        ctx.rewritten(policy.AGES_CAPPED)


def _drop_empty(items: list[Any]) -> Any:
    kept = [item for item in items if item is not REMOVED]
    return kept if kept else REMOVED


def _string(key: str, value: str, parent: dict[str, Any], path: str, ctx: WalkContext) -> Any:
    """Classifies one string leaf (step 7)."""
    rules = ctx.rules
    if key in rules.code_keys:
        return value
    if looks_like_date(value, key):
        return _date(key, value, ctx)
    return _other_string(key, value, parent, path, ctx)


def _other_string(key: str, value: str, parent: dict[str, Any], path: str, ctx: WalkContext) -> Any:
    """Classifies a string leaf that is neither a code nor a date (the rest of step 7)."""
    rules = ctx.rules
    if key in rules.token_keys:
        return value
    if key == "display" and ("code" in parent or "system" in parent):
        return value
    if key == "text" and "coding" in parent:
        return value
    if key == "name" and (path).endswith(rules.keep_name_paths):
        return value  # a device model name, not a person's
    if key == "valueString" and parent.get("url") == "text" and path.endswith(".extension.valueString"):
        return value  # US Core race/ethnicity text; only reachable inside an allowed extension
    if key == "display" and "reference" in parent and not rules.reference_display_redact:
        ctx.removed("names")
        return REMOVED
    if key in rules.free_text_keys:
        return _free_text(value, ctx)
    ctx.unclassified(path)
    return REMOVED


def _free_text(value: str, ctx: WalkContext) -> Any:
    """Redacts (or removes, per policy) one free-text string."""
    if not ctx.rules.free_text_redact:
        ctx.removed(policy.FREE_TEXT)
        return REMOVED
    if ctx.redactor is None and ctx.defer_text:
        ctx.needs_text = True
        raise _DeferTextError
    redactor = ctx.redactor if ctx.redactor is not None else patterns_only_redactor()
    redacted, counts = redactor.redact(value)
    if ctx.provider_redactor is not None:
        redacted, more = ctx.provider_redactor.redact(redacted)
        counts.update(more)
    for category, count in counts.items():
        ctx.stats[FREE_TEXT_PREFIX + category] += count
    if counts:
        ctx.removed_any = True
    ctx.rewritten(policy.FREE_TEXT_REDACTED)
    return redacted


@lru_cache(maxsize=1)
def patterns_only_redactor() -> TextRedactor:
    """The redactor for text with no patient (pattern rules only)."""
    from components.deidentify.free_text import Redactor

    return Redactor(None)


def _attachment_data(value: str, attachment: dict[str, Any], ctx: WalkContext) -> Any:
    """Decodes, redacts and re-encodes text attachments; removes binary ones."""
    content_type = attachment.get("contentType")
    if not ctx.rules.attachment_redact or not isinstance(content_type, str) or not TEXT_CONTENT_RE.match(content_type):
        ctx.removed("photos" if str(content_type).startswith("image/") else policy.FREE_TEXT)
        return REMOVED
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        ctx.removed(policy.FREE_TEXT)
        return REMOVED
    redacted = _free_text(text, ctx)
    if redacted is REMOVED:
        return REMOVED
    ctx.rewritten(policy.ATTACHMENTS_REDACTED)
    return base64.b64encode(redacted.encode("utf-8")).decode("ascii")


def _date(key: str, value: str, ctx: WalkContext) -> Any:
    rules = ctx.rules
    if ctx.offset is None and not (rules.date_mode == "year" or rules.dates_without_patient == "year"):
        ctx.removed(policy.DATES_REMOVED)
        return REMOVED
    if rules.date_mode == "year" or ctx.offset is None:
        ctx.rewritten(policy.DATES_GENERALISED)
        _note_latest(key, value, ctx)
        return value[:4]
    shifted = shift_date(value, ctx.offset)
    if shifted is None:
        ctx.removed(policy.DATES_REMOVED)
        return REMOVED
    _note_latest(key, value, ctx)
    ctx.rewritten(policy.DATES_SHIFTED)
    return shifted


def _note_latest(key: str, value: str, ctx: WalkContext) -> None:
    if ctx.offset is not None and key != "expirationDate" and value[:10] > ctx.latest_day:
        ctx.latest_day = value[:10]


def _resource_id(value: Any, ctx: WalkContext, root: str | None) -> Any:
    if root == "resource" and isinstance(value, str) and value:
        ctx.rewritten(policy.IDS_PSEUDONYMISED)
        return pseudonym(ctx.key, ctx.resource_type, value)
    if root == "contained" and isinstance(value, str) and value:
        return value
    ctx.removed("other_unique")
    return REMOVED


def _reference(value: str, holder: dict[str, Any], path: str, ctx: WalkContext) -> Any:
    element = path.rsplit(".", 1)[-1]
    conditional = CONDITIONAL_RE.match(value)
    if conditional and ctx.rules.conditional_resolve and ctx.crosswalk:
        target = ctx.crosswalk.get(conditional_key(conditional.group(1), conditional.group(2)) or "")
        if target is not None:
            ctx.rewritten(policy.REFERENCES_RESOLVED)
            return f"{conditional.group(1)}/{pseudonym(ctx.key, conditional.group(1), target)}"
    rewritten = rewrite_reference(ctx.key, value, holder, element)
    if rewritten is None:
        ctx.removed(policy.REFERENCES_REMOVED)
        return REMOVED
    if rewritten != value:
        ctx.rewritten(policy.REFERENCES_REKEYED)
    return rewritten


def conditional_key(resource_type: str, query: str) -> str | None:
    """The crosswalk key of ``<Type>?identifier=<system>|<value>`` (None for other queries)."""
    if not query.startswith("identifier="):
        return None
    token = query[len("identifier=") :]
    system, _, value = token.rpartition("|")
    return f"{resource_type}|{system}|{value}"


PROVIDER_NAME_ROOTS = frozenset({"Organization", "Location", "HealthcareService", "InsurancePlan"})


def provider_values(resource: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Yields ``(field, value)`` of a provider resource that free text may mention.

    ``field`` is ``names``, ``addresses``, ``telecom`` or ``identifiers`` (KnownIdentifiers fields).
    """
    from components.deidentify.phi_scan import resource_phi

    mapping = {"names": "names", "addresses": "addresses", "telecom": "telecom", "identifiers": "identifiers"}
    for category, value in resource_phi(dict(resource)):
        if category in mapping:
            yield mapping[category], value


def provider_redactor(values: Iterable[tuple[str, str]]) -> TextRedactor | None:
    """A known-values-only redactor of provider values (None when there are none)."""
    from components.deidentify.free_text import KnownIdentifiers, Redactor

    fields: dict[str, list[str]] = {"names": [], "addresses": [], "telecom": [], "identifiers": []}
    for name, value in values:
        fields[name].append(value)
    if not any(fields.values()):
        return None
    known = KnownIdentifiers(**{name: tuple(dict.fromkeys(items)) for name, items in fields.items()})
    return Redactor(known, categories=frozenset())


def crosswalk_entries(resource: dict[str, Any]) -> list[tuple[str, str]]:
    """``(crosswalk key, original id)`` for each identifier of a resource (see ``conditional_key``)."""
    resource_type, resource_id = resource.get("resourceType"), resource.get("id")
    if not isinstance(resource_id, str):
        return []
    entries = []
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            system = identifier.get("system") if isinstance(identifier.get("system"), str) else ""
            entries.append((f"{resource_type}|{system}|{identifier['value']}", resource_id))
            entries.append((f"{resource_type}||{identifier['value']}", resource_id))
    return entries


def _contained(item: Any, path: str, ctx: WalkContext) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("resourceType"), str):
        ctx.unclassified(path)
        return REMOVED
    return _walk_object(item, _path(path, str(item["resourceType"])), ctx, root="contained")


def _telecom(value: Any, path: str, ctx: WalkContext) -> Any:
    if ctx.rules.telecom_remove:
        for point in value if isinstance(value, list) else [value]:
            system = point.get("system") if isinstance(point, dict) else None
            ctx.removed(ctx.rules.telecom_category.get(str(system), "telephone"))
        return REMOVED
    return _value("telecom", value, {}, path, ctx)


def identifier_category(identifier: Any, rules: FhirRules) -> str:
    """The Safe Harbor category of one Identifier, from its v2-0203 type code or else its system."""
    if not isinstance(identifier, dict):
        return rules.identifier_default_category
    if isinstance(identifier.get("type"), dict):
        for coding in identifier["type"].get("coding") or []:
            if isinstance(coding, dict) and coding.get("code") in rules.identifier_category:
                return rules.identifier_category[coding["code"]]
    system = identifier.get("system")
    if isinstance(system, str) and system in rules.identifier_system_category:
        return rules.identifier_system_category[system]
    return rules.identifier_default_category


def _identifiers(value: Any, path: str, ctx: WalkContext) -> Any:
    items = value if isinstance(value, list) else [value]
    if not ctx.rules.identifiers_pseudonymise:
        for identifier in items:
            ctx.removed(identifier_category(identifier, ctx.rules))
        return REMOVED
    kept = []
    for identifier in items:
        if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
            ctx.removed(identifier_category(identifier, ctx.rules))
            continue
        system = identifier.get("system") if isinstance(identifier.get("system"), str) else ""
        out: dict[str, Any] = {"system": system} if system else {}
        if isinstance(identifier.get("type"), dict):
            walked = _value("type", identifier["type"], identifier, _path(path, "type"), ctx)
            if walked is not REMOVED:
                out["type"] = walked
        out["value"] = hmac_hex(ctx.key, f"identifier:{system}|{identifier['value']}")
        ctx.rewritten(policy.IDENTIFIERS_PSEUDONYMISED)
        kept.append(out)
    result = _drop_empty(kept)
    return result if isinstance(value, list) or result is REMOVED else result[0]


def _extensions(value: Any, path: str, ctx: WalkContext, parent_url: str | None) -> Any:
    """Keeps the policy's allowed extensions, removes (and counts) the rest."""
    allowed_map = ctx.rules.allowed_extensions
    if not isinstance(value, list):
        ctx.removed(policy.EXTENSIONS)
        return REMOVED
    kept = []
    for extension in value:
        url = extension.get("url") if isinstance(extension, dict) else None
        allowed = url in allowed_map[parent_url] if parent_url is not None else url in allowed_map
        if not allowed:
            ctx.removed(ctx.rules.extension_category.get(str(url), policy.EXTENSIONS))
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
            ctx.removed(policy.EXTENSIONS if key == "extension" else "other_unique", _size(value))
            new = REMOVED
        else:
            new = _value(key, value, extension, _path(path, key), ctx)
        if new is not REMOVED:
            out[key] = new
    return out if len(out) > 1 else REMOVED


def _address(value: Any, ctx: WalkContext, root_type: str | None, path: str) -> Any:
    """Keeps the policy's address parts for the resource type (at its root); removes the rest."""
    parts = ctx.rules.address_parts
    kept_parts = parts.get(root_type or "", parts["default"]) if path.count(".") == 0 else parts["default"]
    if not kept_parts:
        ctx.removed("geographic", _size(value))
        return REMOVED
    addresses = value if isinstance(value, list) else [value]
    kept = [_one_address(address, ctx, kept_parts) for address in addresses]
    result = _drop_empty(kept)
    return result if isinstance(value, list) or result is REMOVED else result[0]


def _one_address(address: Any, ctx: WalkContext, kept_parts: frozenset[str]) -> Any:
    if not isinstance(address, dict):
        ctx.removed("geographic")
        return REMOVED
    out: dict[str, Any] = {}
    removed = False
    for key, value in address.items():
        if key == "postalCode" and key in kept_parts and isinstance(value, str) and ZIP3_RE.match(value):
            out[key] = zip3(value, ctx.rules)
            ctx.rewritten(policy.POSTAL_CODES_GENERALISED)
        elif key in kept_parts and key != "postalCode" and isinstance(value, str):
            out[key] = value
        else:
            removed = True
    if removed:
        ctx.removed("geographic")
    return out if out else REMOVED


def zip3(postal_code: str, rules: FhirRules) -> str:
    """The Safe Harbor ZIP3 of a US postal code (restricted prefixes -> the replacement)."""
    match = ZIP3_RE.match(postal_code)
    if match is None:
        return rules.zip3_replacement
    prefix = match.group(1)
    return rules.zip3_replacement if prefix in rules.restricted_zip3 else prefix
