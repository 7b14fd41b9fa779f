"""Deterministic synthetic clinical PDFs with realistic fake PHI, including scanned pages.

Each patient gets a discharge summary (text layer, fpdf2 core fonts) naming the patient, MRN,
birth date, phone, address and visit dates, so de-identification has something to redact. Every
``scanned_every``-th patient also gets a scanned clinical note: a page that is only a Pillow-drawn
image of text, so the ingest lane has to OCR it. Same inputs and seed give byte-identical files.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont

from clinflow.synthetic.device_logs import load_patients, patient_mrn

FIXED_CREATION = datetime(2024, 1, 1, tzinfo=timezone.utc)
SCAN_DPI = 150
SCAN_SIZE = (int(8.5 * SCAN_DPI), 11 * SCAN_DPI)
DIAGNOSES = (
    ("Community-acquired pneumonia", "amoxicillin-clavulanate 875 mg twice daily for 5 days"),
    ("Congestive heart failure exacerbation", "furosemide 40 mg daily; daily weights"),
    ("Type 2 diabetes with hyperglycemia", "metformin 1000 mg twice daily; glucose log"),
    ("COPD exacerbation", "prednisone 40 mg daily for 5 days; tiotropium inhaler"),
    ("Cellulitis of the left leg", "cephalexin 500 mg four times daily for 7 days"),
    ("Atrial fibrillation with rapid ventricular response", "metoprolol 50 mg twice daily; apixaban 5 mg"),
)


@dataclass(frozen=True)
class PatientFacts:
    """The PHI a document mentions, taken from a FHIR Patient resource."""

    name: str
    mrn: str
    birth_date: str
    phone: str
    address: str


def patient_facts(resource: dict[str, Any]) -> PatientFacts | None:
    """Extracts name, MRN, birth date, phone and address from a Patient resource (None without an MRN)."""
    mrn = patient_mrn(resource)
    if mrn is None:
        return None
    names = resource.get("name") or [{}]
    name = " ".join([*names[0].get("given", []), names[0].get("family", "")]).strip() or "Unknown Patient"
    phone = next((t["value"] for t in resource.get("telecom", []) if t.get("system") == "phone"), "555-000-0000")
    addresses = resource.get("address") or [{}]
    first = addresses[0]
    address = ", ".join(
        part
        for part in (
            " ".join(first.get("line", [])),
            first.get("city", ""),
            f"{first.get('state', '')} {first.get('postalCode', '')}".strip(),
        )
        if part
    )
    return PatientFacts(name, mrn, str(resource.get("birthDate", "")), phone, address)


def _latin1(text: str) -> str:
    """Core PDF fonts are Latin-1 only."""
    return text.encode("latin-1", "replace").decode("latin-1")


def _visit(rng: random.Random) -> tuple[date, date]:
    """An admission and discharge date."""
    admitted = date(2023, 1, 1) + timedelta(days=rng.randrange(0, 540))
    return admitted, admitted + timedelta(days=rng.randrange(1, 9))


def _new_pdf() -> FPDF:
    """An FPDF document with a fixed creation date (reproducible bytes)."""
    pdf = FPDF(format="letter")
    pdf.set_creation_date(FIXED_CREATION)
    pdf.set_auto_page_break(auto=True, margin=18)
    return pdf


def discharge_summary_lines(facts: PatientFacts, rng: random.Random) -> list[str]:
    """The text of a discharge summary."""
    admitted, discharged = _visit(rng)
    diagnosis, plan = rng.choice(DIAGNOSES)
    physician = rng.choice(("Dr. Alice Moreno", "Dr. Samuel Ortiz", "Dr. Priya Natarajan", "Dr. John Becker"))
    return [
        f"Patient: {facts.name}",
        f"MRN: {facts.mrn}",
        f"Date of birth: {facts.birth_date}",
        f"Phone: {facts.phone}",
        f"Address: {facts.address}",
        f"Admission date: {admitted.isoformat()}    Discharge date: {discharged.isoformat()}",
        f"Attending physician: {physician}",
        "",
        f"Principal diagnosis: {diagnosis}.",
        f"Hospital course: {facts.name} was admitted on {admitted:%B %d, %Y} and treated for {diagnosis.lower()}. "
        "Symptoms improved with treatment and the patient was ambulating independently at discharge.",
        f"Discharge medications: {plan}.",
        f"Follow-up: primary care within 7 days of {discharged:%m/%d/%Y}; call {facts.phone} with questions.",
    ]


def write_discharge_summary(path: Path, facts: PatientFacts, rng: random.Random) -> None:
    """Writes a discharge summary with a text layer."""
    pdf = _new_pdf()
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 10, "Springfield General Hospital - Discharge Summary", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=11)
    for line in discharge_summary_lines(facts, rng):
        pdf.multi_cell(0, 6, _latin1(line), new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


def scanned_page_image(lines: Sequence[str]) -> Image.Image:
    """Draws text on a white page image, as a scanner would deliver it."""
    image = Image.new("L", SCAN_SIZE, 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=26)
    y = 90
    for line in lines:
        draw.text((90, y), line, fill=0, font=font)
        y += 44
    return image


def write_scanned_note(path: Path, facts: PatientFacts, rng: random.Random) -> None:
    """Writes a one-page PDF whose only content is an image of a clinical note (needs OCR)."""
    visit, _ = _visit(rng)
    lines = [
        "CLINIC PROGRESS NOTE (scanned)",
        f"Patient: {facts.name}",
        f"MRN: {facts.mrn}",
        f"DOB: {facts.birth_date}   Phone: {facts.phone}",
        f"Visit date: {visit.isoformat()}",
        "Blood pressure well controlled on current regimen.",
        "Continue lisinopril 10 mg daily. Recheck labs in 3 months.",
    ]
    buffer = io.BytesIO()
    scanned_page_image(lines).save(buffer, format="PNG")
    buffer.seek(0)
    pdf = _new_pdf()
    pdf.add_page()
    pdf.image(buffer, x=0, y=0, w=pdf.w, h=pdf.h)
    pdf.output(str(path))


def generate_documents(
    output_dir: str | os.PathLike[str],
    patients: str | os.PathLike[str] | Iterable[dict[str, Any]],
    seed: int,
    scanned_every: int = 10,
    max_patients: int | None = None,
) -> list[Path]:
    """Writes deterministic PDFs: a discharge summary per patient and scanned notes for some.

    Args:
        output_dir: Directory for the PDFs (created if missing).
        patients: A Patient NDJSON file or export directory, or Patient resources.
        seed: Random seed; the same inputs and seed give byte-identical files.
        scanned_every: Every n-th patient (starting with the first) also gets a scanned note.
        max_patients: Stop after this many patients (None for all).

    Returns:
        The written files (``discharge_summary.000.pdf``, ``scanned_note.000.pdf``, ...).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resources = load_patients(patients) if isinstance(patients, (str, os.PathLike)) else list(patients)
    facts_list = [facts for facts in map(patient_facts, resources) if facts is not None]
    if max_patients is not None:
        facts_list = facts_list[:max_patients]
    written: list[Path] = []
    for index, facts in enumerate(facts_list):
        rng = random.Random(f"clinflow-synthetic/{seed}/document/{index}")
        summary = out / f"discharge_summary.{index:03d}.pdf"
        write_discharge_summary(summary, facts, rng)
        written.append(summary)
        if scanned_every > 0 and index % scanned_every == 0:
            scanned = out / f"scanned_note.{index:03d}.pdf"
            write_scanned_note(scanned, facts, rng)
            written.append(scanned)
    return written
