"""Synthetic people and providers, and their FHIR Patient/Organization/Practitioner resources.

Every Patient carries the PHI Synthea fills (names incl. maiden name, narrative, telecom, address
with geolocation, MRN/SSN/driver's license/passport identifiers, birth and death dates, marital
status, multiple birth, language, race/ethnicity/birth sex/mother's maiden name/birthplace
extensions, DALY/QALY), so de-identification has something real to remove.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from clinflow.synthetic import vocab
from clinflow.synthetic.clock import BIRTH_FIRST, BIRTH_LAST, REFERENCE_END, YEAR, iso_date, iso_datetime

SYNTHEA_ID_SYSTEM = "https://github.com/synthetichealth/synthea"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
MRN_SYSTEM = "http://hospital.smarthealthit.org"
PASSPORT_SYSTEM = "http://standardhealthrecord.org/fhir/StructureDefinition/passportNumber"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition"
FHIR_EXT = "http://hl7.org/fhir/StructureDefinition"
SYNTHEA_EXT = "http://synthetichealth.github.io/synthea"


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_id(rng: random.Random) -> str:
    """Draws a UUID-shaped id (version 4 layout) from the seeded RNG."""
    h = rng.randbytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def coding(code: vocab.Code) -> dict[str, str]:
    """Builds a FHIR Coding."""
    return {"system": code.system, "code": code.code, "display": code.display}


_CONCEPTS: dict[int, tuple[vocab.Code, dict[str, Any]]] = {}


def concept(code: vocab.Code) -> dict[str, Any]:
    """Returns the FHIR CodeableConcept of a code (one coding and its text), built once per code.

    The cache is keyed by object identity (the codes are module constants); the returned dict is
    shared, so callers must not modify it.
    """
    entry = _CONCEPTS.get(id(code))
    if entry is None or entry[0] is not code:
        entry = _CONCEPTS[id(code)] = (code, {"coding": [coding(code)], "text": code.display})
    return entry[1]


@dataclass(frozen=True)
class Address:
    """A postal address with coordinates.

    Attributes:
        line: Street line.
        city: The city (with state, ZIP prefix, coordinates, time zone).
        postal_code: Five-digit ZIP code.
        latitude: Latitude near the city centre.
        longitude: Longitude near the city centre.
    """

    line: str
    city: vocab.City
    postal_code: str
    latitude: float
    longitude: float

    def resource(self, geolocation: bool) -> dict[str, Any]:
        """Renders the FHIR Address, optionally with the ``geolocation`` extension."""
        address: dict[str, Any] = {}
        if geolocation:
            address["extension"] = [
                {
                    "url": f"{FHIR_EXT}/geolocation",
                    "extension": [
                        {"url": "latitude", "valueDecimal": self.latitude},
                        {"url": "longitude", "valueDecimal": self.longitude},
                    ],
                }
            ]
        address.update(
            {
                "line": [self.line],
                "city": self.city.name,
                "state": self.city.state,
                "postalCode": self.postal_code,
                "country": "US",
            }
        )
        return address


def random_address(rng: random.Random, city: vocab.City) -> Address:
    """Draws a street address in ``city``."""
    line = f"{rng.randint(1, 9999)} {rng.choice(vocab.STREET_NAMES)} {rng.choice(vocab.STREET_SUFFIXES)}"
    if rng.random() < 0.15:
        line += f" Unit {rng.randint(1, 40)}"
    return Address(
        line=line,
        city=city,
        postal_code=f"{city.zip_prefix}{rng.randint(0, 99):02d}",
        latitude=round(city.latitude + rng.uniform(-0.12, 0.12), 6),
        longitude=round(city.longitude + rng.uniform(-0.12, 0.12), 6),
    )


def phone(rng: random.Random) -> str:
    """Draws a fictional 555 phone number."""
    return f"555-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"


# --------------------------------------------------------------------------- providers


@dataclass(frozen=True)
class Practitioner:
    """A clinician.

    Attributes:
        id: Resource id.
        npi: National Provider Identifier (fictional, starts with 9999).
        given: Given name.
        family: Family name.
        gender: ``female`` or ``male``.
        address: Practice address.
        email: Work e-mail.
    """

    id: str
    npi: str
    given: str
    family: str
    gender: str
    address: Address
    email: str

    @property
    def display(self) -> str:
        """The name as Synthea shows it in references (``Dr. Given Family``)."""
        return f"Dr. {self.given} {self.family}"

    @cached_property
    def reference(self) -> dict[str, str]:
        """A Reference to this practitioner with its display (shared: do not modify)."""
        return {"reference": f"Practitioner/{self.id}", "display": self.display}

    def resource(self) -> dict[str, Any]:
        """Renders the FHIR Practitioner."""
        return {
            "resourceType": "Practitioner",
            "id": self.id,
            "meta": {"profile": [f"{US_CORE}/us-core-practitioner"]},
            "identifier": [{"system": NPI_SYSTEM, "value": self.npi}],
            "active": True,
            "name": [{"family": self.family, "given": [self.given], "prefix": ["Dr."]}],
            "telecom": [
                {
                    "extension": [
                        {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-direct", "valueBoolean": True}
                    ],
                    "system": "email",
                    "value": self.email,
                    "use": "work",
                }
            ],
            "address": [self.address.resource(geolocation=False)],
            "gender": self.gender,
        }


@dataclass(frozen=True)
class Organization:
    """A hospital or clinic.

    Attributes:
        id: Resource id.
        npi: Organization NPI (fictional).
        name: Organization name.
        hospital: True when it has an emergency department and inpatient beds.
        address: Street address.
        phone: Main phone number.
        practitioners: Clinicians working there.
    """

    id: str
    npi: str
    name: str
    hospital: bool
    address: Address
    phone: str
    practitioners: tuple[Practitioner, ...] = field(default=())

    @cached_property
    def reference(self) -> dict[str, str]:
        """A Reference to this organization with its name (shared: do not modify)."""
        return {"reference": f"Organization/{self.id}", "display": self.name}

    def resource(self) -> dict[str, Any]:
        """Renders the FHIR Organization."""
        return {
            "resourceType": "Organization",
            "id": self.id,
            "meta": {"profile": [f"{US_CORE}/us-core-organization"]},
            "identifier": [
                {"system": SYNTHEA_ID_SYSTEM, "value": self.id},
                {"system": NPI_SYSTEM, "value": self.npi},
            ],
            "active": True,
            "type": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                            "code": "prov",
                            "display": "Healthcare Provider",
                        }
                    ],
                    "text": "Healthcare Provider",
                }
            ],
            "name": self.name,
            "telecom": [{"system": "phone", "value": self.phone}],
            "address": [self.address.resource(geolocation=False)],
        }


@dataclass(frozen=True)
class ProviderPool:
    """All organizations, split by kind.

    Attributes:
        hospitals: Organizations with emergency and inpatient care.
        clinics: Primary-care organizations.
    """

    hospitals: tuple[Organization, ...]
    clinics: tuple[Organization, ...]

    @property
    def organizations(self) -> tuple[Organization, ...]:
        """Every organization, hospitals first."""
        return self.hospitals + self.clinics


def _practitioner(rng: random.Random, number: int, address: Address) -> Practitioner:
    """Draws one clinician working at ``address``."""
    gender = "female" if rng.random() < 0.5 else "male"
    given = rng.choice(vocab.GIVEN_FEMALE if gender == "female" else vocab.GIVEN_MALE)
    family = rng.choice(vocab.FAMILY)
    email = f"{given}.{family}{number}@{rng.choice(vocab.EMAIL_DOMAINS)}".lower().replace("'", "")
    return Practitioner(
        id=new_id(rng),
        npi=f"9999{number:06d}",
        given=given,
        family=family,
        gender=gender,
        address=address,
        email=email,
    )


def build_provider_pool(rng: random.Random, patients: int) -> ProviderPool:
    """Draws the organizations and practitioners that serve ``patients`` people.

    About one organization per 25 patients (at least 4, at most 400); a third are hospitals;
    each has three practitioners.

    Args:
        rng: The seeded RNG for providers.
        patients: Number of patients to serve.

    Returns:
        The provider pool.
    """
    count = max(4, min(400, patients // 25 + 4))
    hospitals: list[Organization] = []
    clinics: list[Organization] = []
    practitioner_number = 0
    for index in range(count):
        hospital = index % 3 == 0
        city = rng.choice(vocab.CITIES)
        suffixes = vocab.ORGANIZATION_SUFFIXES_HOSPITAL if hospital else vocab.ORGANIZATION_SUFFIXES_CLINIC
        prefix = rng.choice((city.name, rng.choice(vocab.STREET_NAMES), rng.choice(vocab.FAMILY)))
        address = random_address(rng, city)
        staff = []
        for _ in range(3):
            practitioner_number += 1
            staff.append(_practitioner(rng, practitioner_number, address))
        organization = Organization(
            id=new_id(rng),
            npi=f"99{index + 1:08d}",
            name=f"{prefix} {rng.choice(suffixes)}",
            hospital=hospital,
            address=address,
            phone=phone(rng),
            practitioners=tuple(staff),
        )
        (hospitals if hospital else clinics).append(organization)
    return ProviderPool(hospitals=tuple(hospitals), clinics=tuple(clinics))


# --------------------------------------------------------------------------- people


@dataclass(frozen=True)
class Person:
    """One synthetic patient's identity and demographics.

    Attributes:
        id: Patient resource id.
        gender: FHIR administrative gender (``female``, ``male`` or ``other``).
        birth_sex: ``F`` or ``M`` (US Core birth sex).
        birth: Birth instant, Unix seconds.
        given: Given names.
        family: Current family name.
        maiden_family: Family name before marriage, when it differs.
        prefix: Name prefix (``Mr.``, ``Mrs.``, ``Ms.``) or empty for children.
        suffix: Name suffix (``Jr.``, ``PhD`` ...) or empty.
        marital: v3 MaritalStatus code.
        address: Home address.
        birthplace: City of birth.
        phones: Home (and maybe mobile) phone numbers.
        email: Personal e-mail, or empty for young children.
        mrn: Medical record number.
        ssn: Social security number (``999-xx-xxxx``, never a real one).
        drivers_license: Driver's license number, or empty under 16.
        passport: Passport number, or empty.
        race: OMB race category.
        hispanic: Ethnicity.
        language: BCP-47 language code.
        mothers_maiden_name: Mother's maiden name (given and family).
        multiple_birth: Birth order for twins, 0 for single births.
        clinic: Primary-care organization.
        pcp: Primary-care practitioner.
        hospital: The hospital used for emergency and inpatient care.
    """

    id: str
    gender: str
    birth_sex: str
    birth: int
    given: tuple[str, ...]
    family: str
    maiden_family: str
    prefix: str
    suffix: str
    marital: str
    address: Address
    birthplace: vocab.City
    phones: tuple[str, ...]
    email: str
    mrn: str
    ssn: str
    drivers_license: str
    passport: str
    race: vocab.Code
    hispanic: bool
    language: str
    mothers_maiden_name: str
    multiple_birth: int
    clinic: Organization
    pcp: Practitioner
    hospital: Organization

    @property
    def utc_offset(self) -> int:
        """Hours from UTC of the home city, used for all of this person's timestamps."""
        return self.address.city.utc_offset

    def age_at(self, seconds: float) -> float:
        """Age in years at a Unix time."""
        return (seconds - self.birth) / YEAR


def _weighted(rng: random.Random, options: tuple[tuple[vocab.Code, float], ...]) -> vocab.Code:
    """Picks a code with the given weights."""
    codes = [code for code, _ in options]
    weights = [weight for _, weight in options]
    return rng.choices(codes, weights=weights)[0]


def _marital(rng: random.Random, age: float) -> str:
    """Draws a marital status for an age at the reference date."""
    if age < 18:
        return "S"
    widowed = min(0.4, max(0.0, (age - 55) / 80))
    roll = rng.random()
    if roll < widowed:
        return "W"
    return rng.choices(("M", "S", "D"), weights=(0.55, 0.28, 0.17))[0]


def _gender(rng: random.Random) -> tuple[str, str]:
    """Draws administrative gender and birth sex."""
    roll = rng.random()
    if roll < 0.505:
        return "female", "F"
    if roll < 0.99:
        return "male", "M"
    return "other", "F" if rng.random() < 0.5 else "M"


def _names(rng: random.Random, gender: str, birth_sex: str, age: float, marital: str) -> dict[str, Any]:
    """Draws given, family, maiden family, prefix and suffix."""
    female_names = gender == "female" or (gender == "other" and birth_sex == "F")
    pool = vocab.GIVEN_FEMALE if female_names else vocab.GIVEN_MALE
    given = (rng.choice(pool),) if rng.random() < 0.3 else (rng.choice(pool), rng.choice(pool))
    birth_family = rng.choice(vocab.FAMILY)
    family, maiden = birth_family, ""
    if gender == "female" and marital in {"M", "W", "D"} and rng.random() < 0.8:
        family = rng.choice(vocab.FAMILY)
        maiden = birth_family if family != birth_family else ""
    prefix = ""
    if age >= 18:
        prefix = {"female": "Mrs." if marital == "M" else "Ms.", "male": "Mr."}.get(gender, "Mx.")
    suffix = ""
    if age >= 18 and rng.random() < 0.05:
        suffix = rng.choice(("Jr.", "Sr.", "III", "PhD", "MD", "JD"))
    return {"given": given, "family": family, "maiden_family": maiden, "prefix": prefix, "suffix": suffix}


def make_person(rng: random.Random, pool: ProviderPool) -> Person:
    """Draws one patient's identity, demographics and providers.

    Args:
        rng: This patient's seeded RNG.
        pool: The providers to choose from.

    Returns:
        The person.
    """
    patient_id = new_id(rng)
    gender, birth_sex = _gender(rng)
    birth = rng.randint(BIRTH_FIRST, BIRTH_LAST)
    age = (REFERENCE_END - birth) / YEAR
    marital = _marital(rng, age)
    names = _names(rng, gender, birth_sex, age, marital)
    city = rng.choice(vocab.CITIES)
    birthplace = city if rng.random() < 0.5 else rng.choice(vocab.CITIES)
    hispanic = rng.random() < 0.18
    language = (
        "es" if hispanic and rng.random() < 0.35 else rng.choices(tuple(vocab.LANGUAGES), (0.9, 0.04, 0.03, 0.03))[0]
    )
    phones = (phone(rng),) if rng.random() < 0.6 else (phone(rng), phone(rng))
    local = f"{names['given'][0]}.{names['family']}{rng.randint(1, 999)}".lower().replace("'", "")
    email = f"{local}@{rng.choice(vocab.EMAIL_DOMAINS)}" if age >= 13 else ""
    clinic = rng.choice(pool.clinics)
    return Person(
        id=patient_id,
        gender=gender,
        birth_sex=birth_sex,
        birth=birth,
        marital=marital,
        address=random_address(rng, city),
        birthplace=birthplace,
        phones=phones,
        email=email,
        mrn=f"{rng.randint(10_000_000, 99_999_999)}",
        ssn=f"999-{rng.randint(10, 99)}-{rng.randint(0, 9999):04d}",
        drivers_license=f"S999{rng.randint(10_000, 99_999)}" if age >= 16 else "",
        passport=f"X{rng.randint(10_000_000, 99_999_999)}X" if age >= 18 and rng.random() < 0.6 else "",
        race=_weighted(rng, vocab.RACES),
        hispanic=hispanic,
        language=language,
        mothers_maiden_name=f"{rng.choice(vocab.GIVEN_FEMALE)} {rng.choice(vocab.FAMILY)}",
        multiple_birth=rng.choice((1, 2)) if rng.random() < 0.03 else 0,
        clinic=clinic,
        pcp=rng.choice(clinic.practitioners),
        hospital=rng.choice(pool.hospitals),
        **names,
    )


# --------------------------------------------------------------------------- Patient resource


def _identifier(code: str, display: str, system: str, value: str) -> dict[str, Any]:
    """Builds a typed identifier (v2-0203 type code)."""
    return {
        "type": {"coding": [{"system": V2_0203, "code": code, "display": display}], "text": display},
        "system": system,
        "value": value,
    }


def _human_name(person: Person, use: str, family: str) -> dict[str, Any]:
    """Builds one HumanName entry."""
    name: dict[str, Any] = {"use": use, "family": family, "given": list(person.given)}
    if person.prefix:
        name["prefix"] = [person.prefix]
    if person.suffix:
        name["suffix"] = [person.suffix]
    return name


def _omb_extension(kind: str, code: vocab.Code) -> dict[str, Any]:
    """Builds a US Core race/ethnicity extension."""
    return {
        "url": f"{US_CORE}/us-core-{kind}",
        "extension": [
            {"url": "ombCategory", "valueCoding": coding(code)},
            {"url": "text", "valueString": code.display},
        ],
    }


def _extensions(person: Person, daly: float) -> list[dict[str, Any]]:
    """Builds the Patient extensions Synthea writes."""
    age = person.age_at(REFERENCE_END)
    return [
        _omb_extension("race", person.race),
        _omb_extension("ethnicity", vocab.HISPANIC if person.hispanic else vocab.NOT_HISPANIC),
        {"url": f"{FHIR_EXT}/patient-mothersMaidenName", "valueString": person.mothers_maiden_name},
        {"url": f"{US_CORE}/us-core-birthsex", "valueCode": person.birth_sex},
        {
            "url": f"{FHIR_EXT}/patient-birthPlace",
            "valueAddress": {
                "city": person.birthplace.name,
                "state": person.birthplace.state_name,
                "country": "US",
            },
        },
        {"url": f"{SYNTHEA_EXT}/disability-adjusted-life-years", "valueDecimal": round(daly, 6)},
        {"url": f"{SYNTHEA_EXT}/quality-adjusted-life-years", "valueDecimal": round(max(age - daly, 0.0), 6)},
    ]


def _identifiers(person: Person) -> list[dict[str, Any]]:
    """Builds the Patient identifiers (Synthea id, MRN, SSN, driver's license, passport)."""
    identifiers = [
        {"system": SYNTHEA_ID_SYSTEM, "value": person.id},
        _identifier("MR", "Medical Record Number", MRN_SYSTEM, person.mrn),
        _identifier("SS", "Social Security Number", SSN_SYSTEM, person.ssn),
    ]
    if person.drivers_license:
        system = f"urn:oid:2.16.840.1.113883.4.3.{int(person.address.city.dl_oid)}"
        identifiers.append(_identifier("DL", "Driver's license number", system, person.drivers_license))
    if person.passport:
        identifiers.append(_identifier("PPN", "Passport Number", PASSPORT_SYSTEM, person.passport))
    return identifiers


def _narrative(person: Person, death: int | None) -> str:
    """Builds the XHTML narrative, which repeats name, birth date, address and MRN."""
    name = " ".join(filter(None, (person.prefix, *person.given, person.family, person.suffix)))
    died = f", died {iso_date(death, person.utc_offset)}" if death is not None else ""
    return (
        '<div xmlns="http://www.w3.org/1999/xhtml">'
        f"{name}, {person.gender}, born {iso_date(person.birth, person.utc_offset)}{died}. "
        f"{person.address.line}, {person.address.city.name}, {person.address.city.state} "
        f"{person.address.postal_code}. Phone {person.phones[0]}. MRN {person.mrn}.</div>"
    )


def patient_resource(person: Person, death: int | None, daly: float) -> dict[str, Any]:
    """Renders the FHIR Patient with every PHI field Synthea fills.

    Args:
        person: The person.
        death: Death instant (Unix seconds), or None when alive at the reference date.
        daly: Disability-adjusted life years lost, from the simulated history.

    Returns:
        The Patient resource.
    """
    names = [_human_name(person, "official", person.family)]
    if person.maiden_family:
        names.append(_human_name(person, "maiden", person.maiden_family))
    telecom: list[dict[str, str]] = [{"system": "phone", "value": person.phones[0], "use": "home"}]
    telecom += [{"system": "phone", "value": number, "use": "mobile"} for number in person.phones[1:]]
    if person.email:
        telecom.append({"system": "email", "value": person.email, "use": "home"})
    marital = vocab.MARITAL[person.marital]
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": person.id,
        "meta": {"profile": [f"{US_CORE}/us-core-patient"]},
        "text": {"status": "generated", "div": _narrative(person, death)},
        "extension": _extensions(person, daly),
        "identifier": _identifiers(person),
        "name": names,
        "telecom": telecom,
        "gender": person.gender,
        "birthDate": iso_date(person.birth, person.utc_offset),
    }
    if death is not None:
        resource["deceasedDateTime"] = iso_datetime(death, person.utc_offset)
    resource["address"] = [person.address.resource(geolocation=True)]
    resource["maritalStatus"] = {
        "coding": [{"system": vocab.MARITAL_SYSTEM, "code": person.marital, "display": marital}],
        "text": marital,
    }
    if person.multiple_birth:
        resource["multipleBirthInteger"] = person.multiple_birth
    else:
        resource["multipleBirthBoolean"] = False
    language = vocab.LANGUAGES[person.language]
    resource["communication"] = [
        {
            "language": {
                "coding": [{"system": "urn:ietf:bcp:47", "code": person.language, "display": language}],
                "text": language,
            }
        }
    ]
    return resource
