"""The de-identification policy as code: a versioned YAML file, validated on load, hashed.

Policies live in ``components/deidentify/policies/`` (default ``safe-harbor-v1.yaml``). Loading
validates the document against ``POLICY_SCHEMA`` (jsonschema) and raises a ``UserError`` naming the
offending field; the sha256 of the exact file bytes is the policy's content hash. Every output
resource and the report carry ``policy_id``, ``version`` and that hash.

The walk (``components.deidentify.transform``) is **fail closed**: every string leaf must be
positively classified (a code/token key of the policy, a Coding ``display``, a CodeableConcept
``text``, a date, a reference, a resource id, or a free-text element that goes through the
redactor); anything else is removed and counted under ``unclassified`` with its element path.
Numbers and booleans are kept (quantities, sequence numbers, flags); ``null`` is removed and counted.

Module constants are the report's counting categories (the 18 HIPAA Safe Harbor categories plus
the stage's own), never values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinflow.errors import UserError

POLICY_DIR = Path(__file__).parent / "policies"
DEFAULT_POLICY = POLICY_DIR / "safe-harbor-v1.yaml"
POLICY_TAG_SYSTEM = "https://clinflow.dev/fhir/CodeSystem/deid-policy"
POLICY_HASH_TAG_SYSTEM = "https://clinflow.dev/fhir/CodeSystem/deid-policy-sha256"
SECURITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"

# The 18 HIPAA Safe Harbor identifier categories, 45 CFR 164.514(b)(2)(i)(A)-(R).
SAFE_HARBOR_CATEGORIES = (
    "names",
    "geographic",
    "dates",
    "telephone",
    "fax",
    "email",
    "ssn",
    "mrn",
    "health_plan_beneficiary",
    "account_numbers",
    "certificate_license",
    "vehicle_identifiers",
    "device_identifiers",
    "urls",
    "ip_addresses",
    "biometric",
    "photos",
    "other_unique",
)
ACTIONS = ("remove", "pseudonymise", "generalise", "shift", "redact")

# Stage categories (counted besides the Safe Harbor ones).
NARRATIVES = "narratives"
FREE_TEXT = "free_text"
EXTENSIONS = "extensions"
UNCLASSIFIED = "unclassified"
DATES_SHIFTED = "dates_shifted"
DATES_GENERALISED = "dates_generalised_to_year"
DATES_REMOVED = "dates_removed"
REFERENCES_REKEYED = "references_rekeyed"
REFERENCES_RESOLVED = "conditional_references_resolved"
REFERENCES_REMOVED = "references_removed"
IDS_PSEUDONYMISED = "ids_pseudonymised"
IDENTIFIERS_PSEUDONYMISED = "identifiers_pseudonymised"
UIDS_REKEYED = "uids_rekeyed"
POSTAL_CODES_GENERALISED = "postal_codes_generalised"
AGES_CAPPED = "ages_capped"
FREE_TEXT_REDACTED = "free_text_redacted"
ATTACHMENTS_REDACTED = "attachments_redacted"

# Kept for callers that predate the YAML policy: the same values as the default file.
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"

REWRITE_CATEGORIES = (
    IDS_PSEUDONYMISED,
    IDENTIFIERS_PSEUDONYMISED,
    REFERENCES_REKEYED,
    REFERENCES_RESOLVED,
    DATES_SHIFTED,
    DATES_GENERALISED,
    UIDS_REKEYED,
    POSTAL_CODES_GENERALISED,
    AGES_CAPPED,
    FREE_TEXT_REDACTED,
    ATTACHMENTS_REDACTED,
)
REMOVAL_CATEGORIES = (
    *SAFE_HARBOR_CATEGORIES,
    NARRATIVES,
    FREE_TEXT,
    EXTENSIONS,
    DATES_REMOVED,
    REFERENCES_REMOVED,
    UNCLASSIFIED,
)

_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}
_CATEGORY = {"enum": list(SAFE_HARBOR_CATEGORIES)}
POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["policy_id", "version", "description", "reidentification_map", "fhir", "dicom", "device_logs"],
    "additionalProperties": False,
    "properties": {
        "policy_id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "description": {"type": "string", "minLength": 1},
        "reidentification_map": {"type": "boolean"},
        "dicom": {"type": "object"},
        "device_logs": {"type": "object"},
        "k_anonymity": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "quasi_identifiers": {
                    "type": "array",
                    "items": {"enum": ["age_band", "gender", "zip3", "race", "ethnicity"]},
                },
                "age_band_years": {"type": "integer", "minimum": 1, "maximum": 50},
                "target_k": {"type": "integer", "minimum": 1},
            },
        },
        "residual_scan": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "bloom_bits": {"type": "integer", "minimum": 1024, "maximum": 2**34},
                "bloom_bits_per_resource": {"type": "integer", "minimum": 8, "maximum": 4096},
                "bloom_hashes": {"type": "integer", "minimum": 1, "maximum": 20},
                "min_token_chars": {"type": "integer", "minimum": 1, "maximum": 8},
            },
        },
        "fhir": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "safe_harbor",
                "remove",
                "telecom",
                "identifiers",
                "addresses",
                "zip3",
                "dates",
                "ages",
                "free_text",
                "extensions",
                "code_keys",
                "token_keys",
            ],
            "properties": {
                "safe_harbor": {
                    "type": "object",
                    "required": list(SAFE_HARBOR_CATEGORIES),
                    "additionalProperties": False,
                    "properties": {
                        name: {
                            "type": "object",
                            "required": ["action", "elements"],
                            "additionalProperties": False,
                            "properties": {"action": {"enum": list(ACTIONS)}, "elements": _STRINGS},
                        }
                        for name in SAFE_HARBOR_CATEGORIES
                    },
                },
                "remove": {"type": "object", "additionalProperties": _CATEGORY},
                "keep_name_paths": _STRINGS,
                "telecom": {
                    "type": "object",
                    "required": ["action"],
                    "additionalProperties": False,
                    "properties": {
                        "action": {"enum": ["remove", "keep"]},
                        "category_by_system": {"type": "object", "additionalProperties": _CATEGORY},
                    },
                },
                "identifiers": {
                    "type": "object",
                    "required": ["action"],
                    "additionalProperties": False,
                    "properties": {
                        "action": {"enum": ["remove", "pseudonymise"]},
                        "category_by_type": {"type": "object", "additionalProperties": _CATEGORY},
                        "category_by_system": {"type": "object", "additionalProperties": _CATEGORY},
                        "default_category": _CATEGORY,
                    },
                },
                "ids": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"action": {"enum": ["pseudonymise"]}},
                },
                "references": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "conditional": {"enum": ["resolve", "pseudonymise"]},
                        "display": {"enum": ["remove", "redact"]},
                    },
                },
                "narrative": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"action": {"enum": ["remove"]}},
                },
                "addresses": {
                    "type": "object",
                    "required": ["default"],
                    "additionalProperties": {
                        "type": "array",
                        "items": {"enum": ["use", "type", "state", "country", "postalCode"]},
                    },
                },
                "zip3": {
                    "type": "object",
                    "required": ["restricted_prefixes", "replacement"],
                    "additionalProperties": False,
                    "properties": {
                        "restricted_prefixes": {"type": "array", "items": {"type": "string", "pattern": r"^\d{3}$"}},
                        "replacement": {"type": "string", "pattern": r"^\d{3}$"},
                    },
                },
                "dates": {
                    "type": "object",
                    "required": ["mode"],
                    "additionalProperties": False,
                    "properties": {
                        "mode": {"enum": ["shift", "year"]},
                        "without_patient": {"enum": ["remove", "year"]},
                    },
                },
                "ages": {
                    "type": "object",
                    "required": ["aggregate_over", "reported_as"],
                    "additionalProperties": False,
                    "properties": {
                        "aggregate_over": {"type": "integer", "minimum": 1, "maximum": 89},
                        "reported_as": {"type": "integer", "minimum": 2, "maximum": 90},
                    },
                },
                "free_text": {
                    "type": "object",
                    "required": ["action", "elements"],
                    "additionalProperties": False,
                    "properties": {
                        "action": {"enum": ["redact", "remove"]},
                        "elements": _STRINGS,
                        "attachment_data": {"enum": ["redact", "remove"]},
                    },
                },
                "extensions": {
                    "type": "object",
                    "required": ["keep"],
                    "additionalProperties": False,
                    "properties": {
                        "keep": {"type": "object", "additionalProperties": _STRINGS},
                        "category_by_url": {"type": "object", "additionalProperties": _CATEGORY},
                    },
                },
                "code_keys": _STRINGS,
                "token_keys": _STRINGS,
                "conditional_reference_targets": _STRINGS,
            },
        },
    },
}


@dataclass(frozen=True)
class Policy:
    """A loaded, validated de-identification policy (see ``policies/safe-harbor-v1.yaml``).

    Attributes:
        policy_id: The policy's id.
        version: Its semantic version.
        sha256: sha256 of the exact YAML bytes.
        source: The file name it came from.
        document: The parsed YAML (read-only by convention).
    """

    policy_id: str
    version: str
    sha256: str
    source: str
    document: Mapping[str, Any] = field(repr=False)

    @property
    def fhir(self) -> Mapping[str, Any]:
        """The ``fhir:`` section."""
        return self.document["fhir"]

    @property
    def label(self) -> str:
        """``<policy_id>@<version>``."""
        return f"{self.policy_id}@{self.version}"


@dataclass(frozen=True)
class FhirRules:
    """The ``fhir:`` section turned into fast lookup sets for the element walk."""

    removed_elements: Mapping[str, str]
    keep_name_paths: tuple[str, ...]
    telecom_remove: bool
    telecom_category: Mapping[str, str]
    identifiers_pseudonymise: bool
    identifier_category: Mapping[str, str]
    identifier_system_category: Mapping[str, str]
    identifier_default_category: str
    conditional_resolve: bool
    reference_display_redact: bool
    address_parts: Mapping[str, frozenset[str]]
    restricted_zip3: frozenset[str]
    zip3_replacement: str
    date_mode: str
    dates_without_patient: str
    age_over: int
    age_reported: int
    free_text_redact: bool
    free_text_keys: frozenset[str]
    attachment_redact: bool
    allowed_extensions: Mapping[str, frozenset[str]]
    extension_category: Mapping[str, str]
    code_keys: frozenset[str]
    token_keys: frozenset[str]
    conditional_targets: frozenset[str]


def rules_of(policy: Policy) -> FhirRules:
    """Builds the walk's lookup tables from a policy."""
    fhir = policy.fhir
    telecom = fhir["telecom"]
    identifiers = fhir["identifiers"]
    references = fhir.get("references", {})
    free_text = fhir["free_text"]
    extensions = fhir["extensions"]
    return FhirRules(
        removed_elements=dict(fhir["remove"]),
        keep_name_paths=tuple("." + path for path in fhir.get("keep_name_paths", [])),
        telecom_remove=telecom["action"] == "remove",
        telecom_category=dict(telecom.get("category_by_system", {})),
        identifiers_pseudonymise=identifiers["action"] == "pseudonymise",
        identifier_category=dict(identifiers.get("category_by_type", {})),
        identifier_system_category=dict(identifiers.get("category_by_system", {})),
        identifier_default_category=identifiers.get("default_category", "other_unique"),
        conditional_resolve=references.get("conditional", "resolve") == "resolve",
        reference_display_redact=references.get("display", "remove") == "redact",
        address_parts={kind: frozenset(parts) for kind, parts in fhir["addresses"].items()},
        restricted_zip3=frozenset(fhir["zip3"]["restricted_prefixes"]),
        zip3_replacement=fhir["zip3"]["replacement"],
        date_mode=fhir["dates"]["mode"],
        dates_without_patient=fhir["dates"].get("without_patient", "remove"),
        age_over=int(fhir["ages"]["aggregate_over"]),
        age_reported=int(fhir["ages"]["reported_as"]),
        free_text_redact=free_text["action"] == "redact",
        free_text_keys=frozenset(free_text["elements"]),
        attachment_redact=free_text.get("attachment_data", "remove") == "redact",
        allowed_extensions={url: frozenset(parts) for url, parts in extensions["keep"].items()},
        extension_category=dict(extensions.get("category_by_url", {})),
        code_keys=frozenset(fhir["code_keys"]),
        token_keys=frozenset(fhir["token_keys"]),
        conditional_targets=frozenset(fhir.get("conditional_reference_targets", [])),
    )


def _field_path(error: Any) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    return path or "<top level>"


def parse_policy(data: bytes, source: str) -> Policy:
    """Parses and validates policy YAML bytes.

    Args:
        data: The exact file bytes (hashed as they are).
        source: A name for error messages.

    Returns:
        The policy.

    Raises:
        UserError: Not YAML, or a field fails validation (the message names the field).
    """
    import jsonschema
    import yaml

    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as error:
        raise UserError(f"--policy {source}: not valid YAML ({type(error).__name__}); fix the file") from None
    validator = jsonschema.Draft202012Validator(POLICY_SCHEMA)
    errors = sorted(validator.iter_errors(document), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
    if errors:
        first = errors[0]
        reason = first.message if len(first.message) < 200 else first.message[:200] + "..."
        raise UserError(
            f"--policy {source}: invalid field '{_field_path(first)}': {reason}; "
            f"see components/deidentify/policies/safe-harbor-v1.yaml for a valid policy"
        )
    ages = document["fhir"]["ages"]
    if ages["reported_as"] <= ages["aggregate_over"]:
        raise UserError(f"--policy {source}: invalid field 'fhir.ages.reported_as': must exceed aggregate_over")
    return Policy(
        policy_id=document["policy_id"],
        version=document["version"],
        sha256=hashlib.sha256(data).hexdigest(),
        source=source,
        document=document,
    )


def load_policy(path: str | Path | None = None) -> Policy:
    """Loads a policy file (the shipped ``safe-harbor-v1.yaml`` by default).

    Raises:
        UserError: The file is missing or invalid.
    """
    file = Path(path) if path is not None else DEFAULT_POLICY
    try:
        data = file.read_bytes()
    except OSError as error:
        raise UserError(
            f"--policy {file}: cannot read the policy file ({error.strerror}); pass a policy YAML"
        ) from None
    return parse_policy(data, file.name)


def code_sha256() -> str:
    """sha256 over the stage's de-identification sources (``components/deidentify/**/*.py``, sorted)."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
