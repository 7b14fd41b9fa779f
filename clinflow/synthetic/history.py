"""One patient's simulated clinical history, driven by a latent risk.

The model, in short:

* Each person gets a latent frailty ``z ~ N(0, 1)`` (never written out), an adult BMI, a blood
  pressure offset, a baseline HbA1c and, for each chronic disease in ``vocab.CHRONIC_DISEASES``,
  maybe an onset age (more likely with frailty, BMI, blood pressure and related diseases).
* From ``HISTORY_START`` (or birth) to ``REFERENCE_END`` (or death), month by month, the number of
  acute encounters (EMER/IMP) is Poisson with a rate whose log rises with age, active chronic
  diseases, high blood pressure/BMI/HbA1c, frailty and a recent acute encounter (self-excitation).
  Deaths follow a monthly hazard with similar drivers.
* Routine care fills the rest: yearly check-ups, follow-ups every 3-5 months while a chronic
  disease is active, sick visits, and a diagnosis visit at each condition onset (also before
  ``HISTORY_START``). Vitals and labs measured at visits are the true latent values plus noise.

So the features of the past (age, chronic conditions, vitals, acute history) predict an acute
encounter in the next 90 days well, but not perfectly (frailty is hidden).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import NamedTuple

from clinflow.synthetic import vocab
from clinflow.synthetic.clock import DAY, HISTORY_START, MONTH, REFERENCE_END, YEAR, month_starts
from clinflow.synthetic.people import Person

# Log monthly acute-encounter rate: intercept and slopes (see ``log_acute_rate``).
ACUTE_INTERCEPT = -4.0
ACUTE_AGE_SLOPE = 0.022  # per year above 30
ACUTE_INFANT_BONUS = 0.5  # under 3 years
ACUTE_FRAILTY = 0.45
ACUTE_SBP_SLOPE = 0.025  # per mmHg above 135
ACUTE_BMI_SLOPE = 0.04  # per kg/m2 above 32
ACUTE_A1C_SLOPE = 0.25  # per % above 7
ACUTE_RECENT_90D = 0.9
ACUTE_RECENT_365D = 0.35
ACUTE_MAX_LOG_RATE = math.log(0.6)  # at most 0.6 acute encounters a month on average
SIMULATED_MONTHS: tuple[int, ...] = tuple(month_starts(HISTORY_START, REFERENCE_END))
INPATIENT_BASE_LOGIT = -1.4
DEATH_INTERCEPT = -13.2
SICK_VISITS_PER_MONTH = 0.04
ROUTINE_CHECKUP_ATTENDANCE = 0.85


@dataclass(frozen=True)
class Episode:
    """A condition with its onset and (maybe) abatement.

    Attributes:
        code: The SNOMED CT concept.
        onset: Onset instant, Unix seconds.
        abatement: Abatement instant, or None while still active.
        disease: The chronic disease it stands for, if any.
    """

    code: vocab.Code
    onset: int
    abatement: int | None
    disease: vocab.ChronicDisease | None = None

    def active_at(self, seconds: float) -> bool:
        """Tells whether the condition is active at a time."""
        return self.onset <= seconds and (self.abatement is None or seconds < self.abatement)


@dataclass
class Visit:
    """One encounter and what happened at it.

    Attributes:
        kind: ``checkup``, ``followup``, ``diagnosis``, ``sick``, ``EMER`` or ``IMP``.
        start: Start instant, Unix seconds.
        end: End instant, Unix seconds.
        reason: Why it happened (a condition code), if anything in particular.
        diagnoses: Conditions first recorded at this visit.
        medications: Medications ordered at this visit.
    """

    kind: str
    start: int
    end: int
    reason: vocab.Code | None = None
    diagnoses: list[Episode] = field(default_factory=list)
    medications: list[vocab.Code] = field(default_factory=list)

    @property
    def acute(self) -> bool:
        """True for emergency and inpatient encounters."""
        return self.kind in {"EMER", "IMP"}


@dataclass(frozen=True)
class Profile:
    """The hidden physiology of one person.

    Attributes:
        frailty: Latent risk, standard normal; never written to FHIR.
        bmi_adult: Adult body mass index, kg/m2.
        sbp_offset: Personal offset of systolic blood pressure, mmHg.
        a1c_base: Baseline HbA1c without diabetes, %.
        a1c_diabetic: Extra HbA1c once diabetic, %.
        height_adult: Adult height, cm.
        chronic: Chronic disease episodes.
        background: Other long-running conditions (no effect on risk).
    """

    frailty: float
    bmi_adult: float
    sbp_offset: float
    a1c_base: float
    a1c_diabetic: float
    height_adult: float
    chronic: tuple[Episode, ...]
    background: tuple[Episode, ...]

    def active_chronic(self, seconds: float) -> list[Episode]:
        """Chronic episodes active at a time."""
        return [e for e in self.chronic if e.active_at(seconds)]


@dataclass
class History:
    """A person's simulated history.

    Attributes:
        profile: The hidden physiology.
        visits: Encounters in start order.
        death: Death instant, or None when alive at ``REFERENCE_END``.
    """

    profile: Profile
    visits: list[Visit]
    death: int | None


def sigmoid(x: float) -> float:
    """The logistic function."""
    return 1.0 / (1.0 + math.exp(-x))


def poisson(rng: random.Random, mean: float) -> int:
    """Draws a Poisson count (Knuth's method; the means used here are small)."""
    limit = math.exp(-mean)
    count, product = 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


# --------------------------------------------------------------------------- physiology


class State(NamedTuple):
    """The true physiology of a person at one instant (a tuple: cheap to build every month).

    Attributes:
        age: Age in years.
        active: Chronic episodes active at that instant.
        bmi: Body mass index, kg/m2.
        sbp: Systolic blood pressure, mmHg.
        a1c: Hemoglobin A1c, %.
        height: Height, cm.
    """

    age: float
    active: tuple[Episode, ...]
    bmi: float
    sbp: float
    a1c: float
    height: float

    def has(self, key: str) -> bool:
        """Tells whether chronic disease ``key`` is active."""
        return any(e.disease is not None and e.disease.key == key for e in self.active)


def state_at(profile: Profile, person: Person, seconds: float) -> State:
    """Computes the true physiology at a time (children grow toward adult BMI and height).

    Args:
        profile: The hidden physiology.
        person: The person (for the birth date).
        seconds: Unix time.

    Returns:
        Age, active chronic episodes, BMI, systolic blood pressure, HbA1c and height.
    """
    age = max((seconds - person.birth) / YEAR, 0.0)
    active = tuple(e for e in profile.chronic if e.onset <= seconds and (e.abatement is None or seconds < e.abatement))
    keys = {e.disease.key for e in active if e.disease is not None}
    if age >= 18:
        bmi = profile.bmi_adult + 0.03 * (age - 40)
        height = profile.height_adult
        sbp = 104 + 0.45 * min(age, 85)
    else:
        bmi = 15.5 + (profile.bmi_adult - 15.5) * age / 18
        height = 50.0 + (profile.height_adult - 50.0) * (age / 18) ** 0.6
        sbp = 95 + age
    sbp += profile.sbp_offset + 0.5 * (bmi - 27) + (14.0 if "hypertension" in keys else 0.0)
    a1c = profile.a1c_base + 0.006 * age + (profile.a1c_diabetic if "diabetes" in keys else 0.0)
    return State(age, active, bmi, sbp, a1c, height)


def log_acute_rate(state: State, frailty: float, seconds: float, last_acute: float | None) -> float:
    """Log of the monthly rate of acute (EMER/IMP) encounters.

    Args:
        state: The true physiology at ``seconds``.
        frailty: The hidden frailty.
        seconds: The time.
        last_acute: Start of the latest acute encounter before ``seconds``, if any.

    Returns:
        The log rate, capped at ``ACUTE_MAX_LOG_RATE``.
    """
    value = ACUTE_INTERCEPT + ACUTE_AGE_SLOPE * max(state.age - 30, 0.0) + ACUTE_FRAILTY * frailty
    if state.age < 3:
        value += ACUTE_INFANT_BONUS
    value += sum(e.disease.acute_weight for e in state.active if e.disease is not None)
    value += ACUTE_SBP_SLOPE * max(state.sbp - 135, 0.0)
    value += ACUTE_BMI_SLOPE * max(state.bmi - 32, 0.0)
    value += ACUTE_A1C_SLOPE * max(state.a1c - 7, 0.0)
    if last_acute is not None:
        elapsed = seconds - last_acute
        if elapsed < 90 * DAY:
            value += ACUTE_RECENT_90D
        elif elapsed < 365 * DAY:
            value += ACUTE_RECENT_365D
    return min(value, ACUTE_MAX_LOG_RATE)


# --------------------------------------------------------------------------- profile


def _disease_logit(
    disease: vocab.ChronicDisease, frailty: float, bmi: float, sbp_offset: float, has: set[str]
) -> float:
    """Log-odds that a person ever develops ``disease``."""
    logit = disease.base_logit + 0.6 * frailty
    if disease.key == "hypertension":
        logit += 0.08 * (bmi - 27) + 0.08 * sbp_offset
    elif disease.key == "diabetes":
        logit += 0.12 * (bmi - 27)
    elif disease.key == "heart_failure":
        logit += 0.8 * ("hypertension" in has) + 0.4 * ("diabetes" in has)
    elif disease.key == "ckd":
        logit += 0.7 * ("diabetes" in has) + 0.5 * ("hypertension" in has)
    return logit


def _chronic_episodes(
    rng: random.Random, person: Person, frailty: float, bmi: float, sbp_offset: float
) -> tuple[Episode, ...]:
    """Draws onsets (and childhood-asthma remissions) of the chronic diseases."""
    episodes: list[Episode] = []
    has: set[str] = set()
    for disease in vocab.CHRONIC_DISEASES:
        if rng.random() >= sigmoid(_disease_logit(disease, frailty, bmi, sbp_offset, has)):
            continue
        onset_age = max(rng.gauss(disease.typical_age, disease.spread), 1.5)
        onset = int(person.birth + onset_age * YEAR)
        if onset > REFERENCE_END:
            continue
        abatement = None
        if disease.key == "asthma" and onset_age < 12 and rng.random() < 0.4:
            abatement = int(person.birth + rng.uniform(max(onset_age + 1, 12), 20) * YEAR)
        episodes.append(Episode(disease.code, onset, abatement, disease))
        has.add(disease.key)
    return tuple(episodes)


def _background_episodes(rng: random.Random, person: Person) -> tuple[Episode, ...]:
    """Draws long-running conditions that do not change the risk."""
    episodes: list[Episode] = []
    for code in vocab.BACKGROUND_CONDITIONS:
        if rng.random() >= 0.12:
            continue
        onset = int(person.birth + rng.uniform(18, 80) * YEAR)
        if onset > REFERENCE_END:
            continue
        abatement = int(onset + rng.uniform(1, 5) * YEAR) if rng.random() < 0.3 else None
        episodes.append(Episode(code, onset, abatement))
    return tuple(episodes)


def make_profile(rng: random.Random, person: Person) -> Profile:
    """Draws the hidden physiology and chronic disease onsets of one person."""
    frailty = rng.gauss(0.0, 1.0)
    bmi = min(max(rng.gauss(27.5 + 1.2 * frailty, 5.0), 17.0), 55.0)
    sbp_offset = rng.gauss(0.0, 9.0)
    mean_height = 162.0 if person.birth_sex == "F" else 176.0
    chronic = _chronic_episodes(rng, person, frailty, bmi, sbp_offset)
    return Profile(
        frailty=frailty,
        bmi_adult=bmi,
        sbp_offset=sbp_offset,
        a1c_base=rng.gauss(5.15, 0.25),
        a1c_diabetic=1.2 + abs(rng.gauss(0.0, 1.0)),
        height_adult=rng.gauss(mean_height, 7.0),
        chronic=chronic,
        background=_background_episodes(rng, person),
    )


# --------------------------------------------------------------------------- visits


def _acute_visit(rng: random.Random, state: State, start: int) -> Visit:
    """Builds an emergency or inpatient encounter and its reason, new condition and medication."""
    active = state.active
    inpatient_logit = INPATIENT_BASE_LOGIT + 0.03 * max(state.age - 50, 0.0) + 0.3 * len(active)
    kind = "IMP" if rng.random() < sigmoid(inpatient_logit) else "EMER"
    length = rng.uniform(1, 9) * DAY if kind == "IMP" else rng.uniform(2, 9) * 3600
    visit = Visit(kind=kind, start=start, end=int(min(start + length, REFERENCE_END)))
    if active and rng.random() < 0.55:
        weights = [e.disease.acute_weight if e.disease else 0.1 for e in active]
        episode = rng.choices(active, weights=weights)[0]
        visit.reason = episode.code
        if episode.disease is not None:
            visit.medications.append(episode.disease.medication)
        return visit
    code, medication = rng.choice(vocab.ACUTE_EVENT_CONDITIONS)
    visit.reason = code
    visit.diagnoses.append(Episode(code, start, int(start + rng.uniform(7, 40) * DAY)))
    visit.medications.append(medication)
    return visit


def _death_hazard(state: State, frailty: float, inpatient: bool) -> float:
    """Monthly probability of death."""
    log_hazard = DEATH_INTERCEPT + 0.09 * state.age + 0.3 * frailty
    log_hazard += 0.35 * len(state.active) + (1.2 if inpatient else 0.0)
    return 1.0 - math.exp(-math.exp(log_hazard))


def simulate_acute(rng: random.Random, profile: Profile, person: Person) -> tuple[list[Visit], int | None]:
    """Runs the monthly acute-encounter process and the death hazard.

    Args:
        rng: This person's RNG.
        profile: The hidden physiology.
        person: The person.

    Returns:
        The acute visits in time order, and the death instant (None when alive at the end).
    """
    visits: list[Visit] = []
    last_acute: float | None = None
    first = max(bisect.bisect_right(SIMULATED_MONTHS, person.birth) - 1, 0)
    for month in SIMULATED_MONTHS[first:]:
        state = state_at(profile, person, month)
        count = poisson(rng, math.exp(log_acute_rate(state, profile.frailty, month, last_acute)))
        new: list[Visit] = []
        if count:
            starts = sorted(int(month + rng.random() * MONTH) for _ in range(count))
            new = [_acute_visit(rng, state, s) for s in starts if person.birth < s <= REFERENCE_END]
            visits.extend(new)
        if new:
            last_acute = new[-1].start
        inpatient = any(v.kind == "IMP" for v in new)
        if rng.random() < _death_hazard(state, profile.frailty, inpatient):
            death = int(max(month + rng.random() * MONTH, max((v.end for v in new), default=month) + 3600))
            return visits, (death if death <= REFERENCE_END else None)
    return visits, None


def _checkups(rng: random.Random, person: Person, first: int, last: int) -> list[Visit]:
    """Yearly check-ups on a personal anniversary (some years skipped)."""
    visits: list[Visit] = []
    offset = rng.uniform(0, YEAR)
    year = 0
    while (start := int(HISTORY_START + year * YEAR + offset)) <= last:
        year += 1
        if start > first and rng.random() < ROUTINE_CHECKUP_ATTENDANCE:
            visits.append(Visit("checkup", start, start + rng.randint(15, 45) * 60))
    return visits


def _followups(rng: random.Random, profile: Profile, first: int, last: int) -> list[Visit]:
    """Chronic-care follow-ups every 3-5 months while a chronic disease is active."""
    visits: list[Visit] = []
    onsets = [e.onset for e in profile.chronic]
    if not onsets:
        return visits
    start = max(min(onsets), first) + int(rng.uniform(30, 150) * DAY)
    while start <= last:
        if profile.active_chronic(start):
            visits.append(Visit("followup", start, start + rng.randint(15, 40) * 60))
        start += int(rng.uniform(90, 150) * DAY)
    return visits


def _sick_visits(rng: random.Random, first: int, last: int) -> list[Visit]:
    """Primary-care visits for short self-limiting problems."""
    visits: list[Visit] = []
    start = first + rng.expovariate(SICK_VISITS_PER_MONTH / MONTH)
    while start <= last:
        code, medication = rng.choice(vocab.MINOR_ACUTE_CONDITIONS)
        begin = int(start)
        visit = Visit("sick", begin, begin + rng.randint(15, 30) * 60, reason=code)
        visit.diagnoses.append(Episode(code, begin, int(begin + rng.uniform(7, 28) * DAY)))
        if medication is not None:
            visit.medications.append(medication)
        visits.append(visit)
        start += rng.expovariate(SICK_VISITS_PER_MONTH / MONTH)
    return visits


def _diagnosis_visits(rng: random.Random, profile: Profile, last: int) -> list[Visit]:
    """One visit at each long-running condition's onset, where it is first recorded."""
    visits: list[Visit] = []
    for episode in profile.chronic + profile.background:
        if episode.onset > last:
            continue
        abatement = episode.abatement if episode.abatement is None or episode.abatement <= last else None
        recorded = Episode(episode.code, episode.onset, abatement, episode.disease)
        visit = Visit("diagnosis", episode.onset, episode.onset + rng.randint(15, 40) * 60, reason=episode.code)
        visit.diagnoses.append(recorded)
        if episode.disease is not None:
            visit.medications.append(episode.disease.medication)
        visits.append(visit)
    return visits


def _chronic_refills(profile: Profile, visits: list[Visit]) -> None:
    """Orders the chronic medications at check-ups and follow-ups."""
    for visit in visits:
        if visit.kind in {"checkup", "followup"}:
            visit.medications.extend(e.disease.medication for e in profile.active_chronic(visit.start) if e.disease)


def simulate(rng: random.Random, person: Person) -> History:
    """Simulates one person's whole history.

    Args:
        rng: This person's RNG (consumed in a fixed order, so the result is deterministic).
        person: The person.

    Returns:
        The history with visits sorted by start time.
    """
    profile = make_profile(rng, person)
    acute, death = simulate_acute(rng, profile, person)
    last = death if death is not None else REFERENCE_END
    first = max(HISTORY_START, person.birth)
    routine = _checkups(rng, person, first, last) + _followups(rng, profile, first, last)
    routine += _sick_visits(rng, first, last)
    _chronic_refills(profile, routine)
    visits = acute + routine + _diagnosis_visits(rng, profile, last)
    visits = [v for v in visits if v.start <= last]
    for visit in visits:
        visit.end = min(visit.end, last)
    visits.sort(key=lambda v: (v.start, v.kind))
    return History(profile=profile, visits=visits, death=death)


def disability_years(history: History, person: Person) -> float:
    """Disability-adjusted life years lost to chronic disease up to the end (like Synthea's DALY)."""
    end = history.death if history.death is not None else REFERENCE_END
    total = 0.0
    for episode in history.profile.chronic:
        if episode.onset > end:
            continue
        stop = min(episode.abatement or end, end)
        total += 0.08 * max(stop - episode.onset, 0) / YEAR
    if history.death is not None:
        total += max(80.0 - person.age_at(history.death), 0.0)
    return total
