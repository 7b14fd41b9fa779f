"""The de-identification policy as data: which FHIR elements go, which stay, which are rewritten.

Policy version ``POLICY_VERSION`` is recorded in every report. Changing any set below changes
what leaves the stage, so bump the version with it.

The walk (``components.deidentify.transform``) is **fail closed**: every string leaf must be
positively classified (a code/token in ``CODE_KEYS`` or ``TOKEN_KEYS``, a Coding ``display``, a
CodeableConcept ``text``, a date, a reference, a resource id); anything else is removed and
counted under ``unclassified`` with its element path. Numbers and booleans are kept (quantities,
sequence numbers, flags); ``null`` is removed and counted.
"""

from __future__ import annotations

POLICY_VERSION = "fhir-foundation-1"

# Report categories (counts only, never values).
NAMES = "names"
TELECOM = "telecom"
ADDRESSES = "addresses"
IDENTIFIERS = "identifiers"
NARRATIVES = "narratives"
FREE_TEXT = "free_text"
EXTENSIONS = "extensions"
PERSONAL = "photos_contacts_links"
DATES_SHIFTED = "dates_shifted"
DATES_REMOVED = "dates_removed"
REFERENCES_REKEYED = "references_rekeyed"
REFERENCES_REMOVED = "references_removed"
IDS_PSEUDONYMISED = "ids_pseudonymised"
UIDS_REKEYED = "uids_rekeyed"
POSTAL_CODES_GENERALISED = "postal_codes_generalised"
AGES_CAPPED = "ages_capped"
UNCLASSIFIED = "unclassified"

REMOVAL_CATEGORIES = (
    NAMES,
    TELECOM,
    ADDRESSES,
    IDENTIFIERS,
    NARRATIVES,
    FREE_TEXT,
    EXTENSIONS,
    PERSONAL,
    DATES_REMOVED,
    REFERENCES_REMOVED,
    UNCLASSIFIED,
)
REWRITE_CATEGORIES = (
    IDS_PSEUDONYMISED,
    REFERENCES_REKEYED,
    DATES_SHIFTED,
    UIDS_REKEYED,
    POSTAL_CODES_GENERALISED,
    AGES_CAPPED,
)

# Elements removed wherever they occur, with the category they are counted under.
REMOVED_ELEMENTS: dict[str, str] = {
    "identifier": IDENTIFIERS,
    "distinctIdentifier": IDENTIFIERS,
    "serialNumber": IDENTIFIERS,
    "lotNumber": IDENTIFIERS,
    "udiCarrier": IDENTIFIERS,
    "accessionIdentifier": IDENTIFIERS,
    "telecom": TELECOM,
    "position": ADDRESSES,
    "alias": NAMES,
    "photo": PERSONAL,
    "contact": PERSONAL,
    "link": PERSONAL,
    "note": FREE_TEXT,
    "comment": FREE_TEXT,
    "data": FREE_TEXT,
    "url": FREE_TEXT,
    "title": FREE_TEXT,
}

# Elements that keep a string value as it is: codes, URIs and canonical URLs (never date-checked).
CODE_KEYS = frozenset({"system", "code", "valueCode", "version", "profile", "valueUri", "valueCanonical"})

# Elements whose string values are FHIR ``code`` tokens or units (kept unless they look like a date).
TOKEN_KEYS = frozenset(
    {
        "status",
        "use",
        "unit",
        "currency",
        "intent",
        "gender",
        "type",
        "category",
        "criticality",
        "severity",
        "mode",
        "contentType",
        "periodUnit",
        "durationUnit",
        "outcome",
        "lifecycleStatus",
        "priority",
        "language",
        "comparator",
        "kind",
        "dayOfWeek",
        "when",
    }
)

# String elements that are free text unless they sit in a coded element (Coding.display,
# CodeableConcept.text); counted under FREE_TEXT when removed.
FREE_TEXT_KEYS = frozenset({"display", "text", "description", "valueString", "valueMarkdown"})

# Extensions kept (US Core race/ethnicity/birth sex) and the sub-extensions allowed inside them.
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
ALLOWED_EXTENSIONS: dict[str, frozenset[str]] = {
    US_CORE + "us-core-race": frozenset({"ombCategory", "detailed", "text"}),
    US_CORE + "us-core-ethnicity": frozenset({"ombCategory", "detailed", "text"}),
    US_CORE + "us-core-birthsex": frozenset(),
}

# Patient.address keeps only these parts (postalCode reduced to ZIP3).
PATIENT_ADDRESS_KEPT = frozenset({"use", "type", "state", "country"})

# HIPAA Safe Harbor: ZIP3 areas with 20,000 or fewer people (2000 Census) are reported as 000.
RESTRICTED_ZIP3 = frozenset(
    {
        "036",
        "059",
        "063",
        "102",
        "203",
        "556",
        "692",
        "790",
        "821",
        "823",
        "830",
        "831",
        "878",
        "879",
        "884",
        "890",
        "893",
    }
)

AGE_CAP_YEARS = 90

# Dates excluded from the "end of data" used for the age cap (they may lie in the future).
END_OF_DATA_EXCLUDED_KEYS = frozenset({"expirationDate"})
