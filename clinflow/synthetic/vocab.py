"""Built-in word lists and clinical code tables for the synthetic FHIR generator.

Everything here is fictional or public vocabulary (common first/last names, US city names,
SNOMED CT / LOINC / RxNorm codes). The generator draws from these lists with a seeded RNG,
so the same seed always gives the same people.
"""

from __future__ import annotations

from dataclasses import dataclass

GIVEN_FEMALE: tuple[str, ...] = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Lisa", "Nancy", "Betty", "Margaret", "Sandra", "Ashley", "Kimberly", "Emily", "Donna",
    "Michelle", "Carol", "Amanda", "Dorothy", "Melissa", "Deborah", "Stephanie", "Rebecca", "Sharon",
    "Laura", "Cynthia", "Kathleen", "Amy", "Angela", "Shirley", "Anna", "Brenda", "Pamela", "Emma",
    "Nicole", "Helen", "Samantha", "Katherine", "Christine", "Debra", "Rachel", "Carolyn", "Janet",
    "Catherine", "Maria", "Heather", "Diane", "Ruth", "Julie", "Olivia", "Joyce", "Virginia", "Lucia",
    "Sofia", "Camila", "Mei", "Aiko", "Priya", "Fatima", "Amara", "Ingrid", "Rosa", "Yolanda",
)  # fmt: skip

GIVEN_MALE: tuple[str, ...] = (
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Charles", "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul",
    "Andrew", "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward", "Jason",
    "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry", "Justin",
    "Scott", "Brandon", "Benjamin", "Samuel", "Gregory", "Alexander", "Frank", "Patrick", "Raymond",
    "Jack", "Dennis", "Jerry", "Tyler", "Aaron", "Jose", "Adam", "Nathan", "Henry", "Douglas", "Carlos",
    "Luis", "Hiroshi", "Wei", "Rahul", "Omar", "Kwame", "Lars", "Diego", "Mateo", "Dmitri",
)  # fmt: skip

FAMILY: tuple[str, ...] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez",
    "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen",
    "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell",
    "Carter", "Roberts", "Gomez", "Phillips", "Evans", "Turner", "Diaz", "Parker", "Cruz", "Edwards",
    "Collins", "Reyes", "Stewart", "Morris", "Morales", "Murphy", "Cook", "Rogers", "Gutierrez",
    "Ortiz", "Morgan", "Cooper", "Peterson", "Bailey", "Reed", "Kelly", "Howard", "Ramos", "Kim",
    "Cox", "Ward", "Richardson", "Watson", "Brooks", "Chavez", "Wood", "James", "Bennett", "Gray",
    "Mendoza", "Ruiz", "Hughes", "Price", "Alvarez", "Castillo", "Sanders", "Patel", "Myers", "Long",
    "Ross", "Foster", "Jimenez", "Okafor", "Tanaka", "Kowalski", "Schmidt", "O'Brien", "Haddad",
)  # fmt: skip

STREET_NAMES: tuple[str, ...] = (
    "Oak", "Maple", "Cedar", "Pine", "Elm", "Washington", "Lake", "Hill", "Park", "Walnut", "Sunset",
    "Ridge", "Meadow", "River", "Spring", "Church", "Highland", "Forest", "Jackson", "Lincoln",
    "Mill", "Willow", "Cherry", "Chestnut", "Franklin", "Madison", "Prairie", "Orchard", "Valley",
)  # fmt: skip

STREET_SUFFIXES: tuple[str, ...] = (
    "Street", "Avenue", "Road", "Lane", "Drive", "Court", "Way", "Boulevard", "Place", "Terrace",
)  # fmt: skip

EMAIL_DOMAINS: tuple[str, ...] = ("example.com", "example.org", "example.net", "mail.example")


@dataclass(frozen=True)
class City:
    """A US city the generator places people and providers in.

    Attributes:
        name: City name.
        state: Two-letter state code.
        state_name: Full state name (used in ``patient-birthPlace`` like Synthea).
        zip_prefix: First three digits of its ZIP codes.
        latitude: Approximate latitude.
        longitude: Approximate longitude.
        utc_offset: Standard-time UTC offset in hours, used for every timestamp of its residents.
        dl_oid: The state's driver's-license identifier system suffix (FIPS code).
    """

    name: str
    state: str
    state_name: str
    zip_prefix: str
    latitude: float
    longitude: float
    utc_offset: int
    dl_oid: str


CITIES: tuple[City, ...] = (
    City("Boston", "MA", "Massachusetts", "021", 42.36, -71.06, -5, "25"),
    City("Worcester", "MA", "Massachusetts", "016", 42.26, -71.80, -5, "25"),
    City("Springfield", "MA", "Massachusetts", "011", 42.10, -72.59, -5, "25"),
    City("Lowell", "MA", "Massachusetts", "018", 42.64, -71.32, -5, "25"),
    City("Providence", "RI", "Rhode Island", "029", 41.82, -71.41, -5, "44"),
    City("Hartford", "CT", "Connecticut", "061", 41.76, -72.68, -5, "09"),
    City("Albany", "NY", "New York", "122", 42.65, -73.76, -5, "36"),
    City("Buffalo", "NY", "New York", "142", 42.89, -78.88, -5, "36"),
    City("Pittsburgh", "PA", "Pennsylvania", "152", 40.44, -79.99, -5, "42"),
    City("Columbus", "OH", "Ohio", "432", 39.96, -83.00, -5, "39"),
    City("Detroit", "MI", "Michigan", "482", 42.33, -83.05, -5, "26"),
    City("Indianapolis", "IN", "Indiana", "462", 39.77, -86.16, -5, "18"),
    City("Atlanta", "GA", "Georgia", "303", 33.75, -84.39, -5, "13"),
    City("Miami", "FL", "Florida", "331", 25.76, -80.19, -5, "12"),
    City("Chicago", "IL", "Illinois", "606", 41.88, -87.63, -6, "17"),
    City("Milwaukee", "WI", "Wisconsin", "532", 43.04, -87.91, -6, "55"),
    City("Minneapolis", "MN", "Minnesota", "554", 44.98, -93.27, -6, "27"),
    City("Wichita", "KS", "Kansas", "672", 37.69, -97.34, -6, "20"),
    City("Topeka", "KS", "Kansas", "666", 39.05, -95.68, -6, "20"),
    City("Omaha", "NE", "Nebraska", "681", 41.26, -95.93, -6, "31"),
    City("Dallas", "TX", "Texas", "752", 32.78, -96.80, -6, "48"),
    City("San Antonio", "TX", "Texas", "782", 29.42, -98.49, -6, "48"),
    City("Houston", "TX", "Texas", "770", 29.76, -95.37, -6, "48"),
    City("New Orleans", "LA", "Louisiana", "701", 29.95, -90.07, -6, "22"),
    City("Nashville", "TN", "Tennessee", "372", 36.16, -86.78, -6, "47"),
    City("Denver", "CO", "Colorado", "802", 39.74, -104.99, -7, "08"),
    City("Albuquerque", "NM", "New Mexico", "871", 35.08, -106.65, -7, "35"),
    City("Phoenix", "AZ", "Arizona", "850", 33.45, -112.07, -7, "04"),
    City("Salt Lake City", "UT", "Utah", "841", 40.76, -111.89, -7, "49"),
    City("Boise", "ID", "Idaho", "837", 43.62, -116.20, -7, "16"),
    City("Seattle", "WA", "Washington", "981", 47.61, -122.33, -8, "53"),
    City("Portland", "OR", "Oregon", "972", 45.52, -122.68, -8, "41"),
    City("Sacramento", "CA", "California", "958", 38.58, -121.49, -8, "06"),
    City("Fresno", "CA", "California", "937", 36.74, -119.79, -8, "06"),
    City("San Diego", "CA", "California", "921", 32.72, -117.16, -8, "06"),
    City("Reno", "NV", "Nevada", "895", 39.53, -119.81, -8, "32"),
)


@dataclass(frozen=True)
class Code:
    """A coded concept.

    Attributes:
        system: Code system URI.
        code: The code.
        display: Human-readable display text.
    """

    system: str
    code: str
    display: str


SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
OMB_RACE_ETHNICITY = "urn:oid:2.16.840.1.113883.6.238"

RACES: tuple[tuple[Code, float], ...] = (
    (Code(OMB_RACE_ETHNICITY, "2106-3", "White"), 0.62),
    (Code(OMB_RACE_ETHNICITY, "2054-5", "Black or African American"), 0.13),
    (Code(OMB_RACE_ETHNICITY, "2028-9", "Asian"), 0.07),
    (Code(OMB_RACE_ETHNICITY, "1002-5", "American Indian or Alaska Native"), 0.02),
    (Code(OMB_RACE_ETHNICITY, "2076-8", "Native Hawaiian or Other Pacific Islander"), 0.01),
    (Code(OMB_RACE_ETHNICITY, "2131-1", "Other Race"), 0.15),
)
HISPANIC = Code(OMB_RACE_ETHNICITY, "2135-2", "Hispanic or Latino")
NOT_HISPANIC = Code(OMB_RACE_ETHNICITY, "2186-5", "Not Hispanic or Latino")

MARITAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
MARITAL: dict[str, str] = {
    "M": "Married",
    "S": "Never Married",
    "D": "Divorced",
    "W": "Widowed",
}

LANGUAGES: dict[str, str] = {
    "en-US": "English (United States)",
    "es": "Spanish",
    "zh": "Chinese",
    "vi": "Vietnamese",
}


@dataclass(frozen=True)
class ChronicDisease:
    """A chronic condition the latent-risk model knows about.

    Attributes:
        key: Short name used inside the simulation.
        code: The SNOMED CT concept written to ``Condition.code``.
        base_logit: Log-odds of ever developing it by ``typical_age`` for an average person.
        typical_age: Median onset age in years.
        spread: Standard deviation of the onset age in years.
        acute_weight: Added to the log of the monthly acute-encounter rate while active.
        medication: The RxNorm medication ordered for it at follow-up visits.
    """

    key: str
    code: Code
    base_logit: float
    typical_age: float
    spread: float
    acute_weight: float
    medication: Code


CHRONIC_DISEASES: tuple[ChronicDisease, ...] = (
    ChronicDisease(
        "hypertension",
        Code(SNOMED, "59621000", "Essential hypertension (disorder)"),
        -0.4,
        52,
        12,
        0.20,
        Code(RXNORM, "314076", "lisinopril 10 MG Oral Tablet"),
    ),
    ChronicDisease(
        "diabetes",
        Code(SNOMED, "44054006", "Diabetes mellitus type 2 (disorder)"),
        -1.6,
        55,
        12,
        0.35,
        Code(RXNORM, "860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ),
    ChronicDisease(
        "copd",
        Code(SNOMED, "13645005", "Chronic obstructive lung disease (disorder)"),
        -2.6,
        62,
        9,
        0.60,
        Code(RXNORM, "896188", "fluticasone propionate 0.25 MG/ACTUAT / salmeterol 0.05 MG/ACTUAT"),
    ),
    ChronicDisease(
        "asthma",
        Code(SNOMED, "195967001", "Asthma (disorder)"),
        -2.2,
        14,
        10,
        0.35,
        Code(RXNORM, "2123111", "NDA020503 200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ),
    ChronicDisease(
        "heart_failure",
        Code(SNOMED, "88805009", "Chronic congestive heart failure (disorder)"),
        -3.0,
        70,
        9,
        0.85,
        Code(RXNORM, "200031", "carvedilol 6.25 MG Oral Tablet"),
    ),
    ChronicDisease(
        "ckd",
        Code(SNOMED, "433144002", "Chronic kidney disease stage 3 (disorder)"),
        -2.7,
        66,
        10,
        0.50,
        Code(RXNORM, "197361", "amlodipine 5 MG Oral Tablet"),
    ),
)

# Conditions that are not risk drivers: they make ``active_conditions`` noisier, like real data.
BACKGROUND_CONDITIONS: tuple[Code, ...] = (
    Code(SNOMED, "15777000", "Prediabetes (finding)"),
    Code(SNOMED, "162864005", "Body mass index 30+ - obesity (finding)"),
    Code(SNOMED, "55822004", "Hyperlipidemia (disorder)"),
    Code(SNOMED, "40055000", "Chronic sinusitis (disorder)"),
    Code(SNOMED, "35489007", "Depressive disorder (disorder)"),
    Code(SNOMED, "271737000", "Anemia (disorder)"),
)

# Short self-limiting problems seen at sick visits; each gets an abatement date.
MINOR_ACUTE_CONDITIONS: tuple[tuple[Code, Code | None], ...] = (
    (Code(SNOMED, "444814009", "Viral sinusitis (disorder)"), None),
    (
        Code(SNOMED, "10509002", "Acute bronchitis (disorder)"),
        Code(RXNORM, "313782", "Acetaminophen 325 MG Oral Tablet"),
    ),
    (
        Code(SNOMED, "195662009", "Acute viral pharyngitis (disorder)"),
        Code(RXNORM, "308182", "Amoxicillin 250 MG Oral Capsule"),
    ),
    (Code(SNOMED, "44465007", "Sprain of ankle (disorder)"), Code(RXNORM, "310965", "Ibuprofen 200 MG Oral Tablet")),
    (
        Code(SNOMED, "43878008", "Streptococcal sore throat (disorder)"),
        Code(RXNORM, "834061", "Penicillin V Potassium 250 MG Oral Tablet"),
    ),
    (Code(SNOMED, "68496003", "Polyp of colon (disorder)"), None),
)

# Reasons for emergency/inpatient encounters that are not a chronic exacerbation.
ACUTE_EVENT_CONDITIONS: tuple[tuple[Code, Code], ...] = (
    (
        Code(SNOMED, "233604007", "Pneumonia (disorder)"),
        Code(RXNORM, "308182", "Amoxicillin 250 MG Oral Capsule"),
    ),
    (
        Code(SNOMED, "68566005", "Urinary tract infectious disease (disorder)"),
        Code(RXNORM, "311989", "Nitrofurantoin 5 MG/ML Oral Suspension"),
    ),
    (
        Code(SNOMED, "29857009", "Chest pain (finding)"),
        Code(RXNORM, "243670", "aspirin 81 MG Oral Tablet"),
    ),
    (
        Code(SNOMED, "65966004", "Fracture of forearm (disorder)"),
        Code(RXNORM, "313782", "Acetaminophen 325 MG Oral Tablet"),
    ),
    (
        Code(SNOMED, "230690007", "Cerebrovascular accident (disorder)"),
        Code(RXNORM, "855332", "Warfarin Sodium 5 MG Oral Tablet"),
    ),
    (
        Code(SNOMED, "22298006", "Myocardial infarction (disorder)"),
        Code(RXNORM, "705129", "Nitroglycerin 0.4 MG/ACTUAT Mucosal Spray"),
    ),
)

ENCOUNTER_TYPES: dict[str, Code] = {
    "wellness": Code(SNOMED, "410620009", "Well child visit (procedure)"),
    "checkup": Code(SNOMED, "162673000", "General examination of patient (procedure)"),
    "followup": Code(SNOMED, "390906007", "Follow-up encounter (procedure)"),
    "diagnosis": Code(SNOMED, "185347001", "Encounter for problem (procedure)"),
    "sick": Code(SNOMED, "185345009", "Encounter for symptom (procedure)"),
    "EMER": Code(SNOMED, "50849002", "Emergency room admission (procedure)"),
    "IMP": Code(SNOMED, "32485007", "Hospital admission (procedure)"),
}

ORGANIZATION_SUFFIXES_HOSPITAL: tuple[str, ...] = (
    "General Hospital", "Medical Center", "Regional Hospital", "Community Hospital", "Memorial Hospital",
)  # fmt: skip
ORGANIZATION_SUFFIXES_CLINIC: tuple[str, ...] = (
    "Family Practice", "Primary Care Associates", "Health Center", "Internal Medicine Group", "Clinic",
)  # fmt: skip
