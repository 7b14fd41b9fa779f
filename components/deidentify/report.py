"""The de-identification report: ``deid_report.json``, an HTML view for the KFP UI, metrics.

Everything here is built from counts, category names, element paths and file names; no value
from any resource reaches the report.
"""

from __future__ import annotations

import hashlib
import html
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.deidentify import pipeline, policy
from components.deidentify.keys import MAX_SHIFT_DAYS
from components.deidentify.phi_scan import PHI_CATEGORIES
from components.deidentify.transform import REMOVED_PREFIX, REWRITTEN_PREFIX, UNCLASSIFIED_PATH_PREFIX

OUTPUT_NAMING = "<ResourceType>.<nnn>.ndjson (FHIR Bulk export style; nnn = 000, 001, ... per written shard)"
DATE_RULE = (
    f"every date/dateTime/instant of a patient's resources moves by one per-patient offset in "
    f"[-{MAX_SHIFT_DAYS}, -1] or [1, {MAX_SHIFT_DAYS}] days from HMAC(key, 'date-shift:Patient/<id>'), "
    "keeping precision, time of day and zone; dates of resources without a patient are removed"
)
AGE_RULE = (
    "age >= 90 at death or end of data: birthDate keeps its shifted month/day and gets the year that "
    "makes the age exactly 90 on the shifted reference day"
)


def code_sha256() -> str:
    """Hashes this stage's source files (sorted by name) so a report names the exact code that ran."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _by_prefix(counts: Mapping[str, int], prefix: str) -> dict[str, int]:
    return {name[len(prefix) :]: value for name, value in sorted(counts.items()) if name.startswith(prefix)}


def build_report(
    stats: Mapping[str, int],
    scan: Mapping[str, int],
    input_files: list[str],
    skipped_files: list[str],
    runner: str,
) -> dict[str, Any]:
    """Assembles the report document from the two pipelines' counts.

    Args:
        stats: Counts from the de-identify pipeline.
        scan: Counts from the residual-PHI scan pipeline.
        input_files: Input file names read.
        skipped_files: Input file names recorded and skipped (bulk-export logs).
        runner: The Beam runner name.

    Returns:
        The JSON-serialisable report.
    """
    resources_in = _by_prefix(stats, pipeline.IN_PREFIX)
    resources_out = _by_prefix(stats, pipeline.OUT_PREFIX)
    dead = _by_prefix(stats, pipeline.DEAD_PREFIX)
    read_back = _by_prefix(scan, "lines\t")
    dead_lines = read_back.pop("dead_letter", 0)
    hits = Counter[str]()
    hits_by_type = Counter[str]()
    for name, value in _by_prefix(scan, "hits\t").items():
        kind, category = name.split("\t", 1)
        hits[category] += value
        hits_by_type[kind] += value
    totals = {
        "in": sum(resources_in.values()),
        "out": sum(resources_out.values()),
        "dead_letter": sum(dead.values()),
        "out_read_back": sum(read_back.values()),
        "dead_letter_read_back": dead_lines,
        "blank_lines_skipped": stats.get(pipeline.BLANK_LINES, 0),
    }
    return {
        "stage": "deidentify",
        "policy_version": policy.POLICY_VERSION,
        "code_sha256": code_sha256(),
        "runner": runner,
        "output_naming": OUTPUT_NAMING,
        "date_rule": DATE_RULE,
        "age_rule": AGE_RULE,
        "inputs": {"files": input_files, "skipped_files": skipped_files},
        "resources": {
            "in": resources_in,
            "out": resources_out,
            "out_read_back": read_back,
            "dead_letter_reasons": dead,
            "totals": totals,
            "balanced": totals["in"] == totals["out"] + totals["dead_letter"]
            and totals["out"] == totals["out_read_back"]
            and totals["dead_letter"] == dead_lines,
        },
        "removed": {name: stats.get(REMOVED_PREFIX + name, 0) for name in policy.REMOVAL_CATEGORIES},
        "rewritten": {name: stats.get(REWRITTEN_PREFIX + name, 0) for name in policy.REWRITE_CATEGORIES},
        "unclassified_paths": _by_prefix(stats, UNCLASSIFIED_PATH_PREFIX),
        "residual_phi_scan": {
            "patients_indexed": stats.get(pipeline.IN_PREFIX + "Patient", 0),
            "values_indexed": {c: scan.get("indexed\t" + c, 0) for c in PHI_CATEGORIES},
            "values_too_short_to_search": {c: scan.get("skipped\t" + c, 0) for c in PHI_CATEGORIES},
            "lines_scanned": sum(read_back.values()) + dead_lines,
            "hits": {c: hits.get(c, 0) for c in PHI_CATEGORIES},
            "hits_by_file_type": dict(sorted(hits_by_type.items())),
            "single_words_in_coded_vocabulary": scan.get("vocabulary_matches", 0),
            "total_hits": sum(hits.values()),
            "passed": sum(hits.values()) == 0,
        },
    }


def metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics shown in the KFP UI."""
    totals = report["resources"]["totals"]
    values: dict[str, float] = {
        "resources_in": totals["in"],
        "resources_out": totals["out"],
        "dead_letter": totals["dead_letter"],
        "resource_types": len(report["resources"]["out"]),
        "patients": report["residual_phi_scan"]["patients_indexed"],
        "residual_phi_hits": report["residual_phi_scan"]["total_hits"],
    }
    values.update({f"removed_{name}": count for name, count in report["removed"].items()})
    values.update({f"rewritten_{name}": count for name, count in report["rewritten"].items()})
    return {name: float(value) for name, value in values.items()}


def _table(title: str, rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body or '<tr><td>none</td></tr>'}</table>"


def _fmt(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def render_html(report: Mapping[str, Any]) -> str:
    """Renders the report as one self-contained HTML page (no scripts, inline CSS)."""
    resources = report["resources"]
    scan = report["residual_phi_scan"]
    kinds = sorted(set(resources["in"]) | set(resources["out"]))
    verdict = "PASSED" if scan["passed"] else "FAILED"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>De-identification report</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eee}"
        ".ok{color:#060}.bad{color:#a00}</style></head><body>",
        "<h1>De-identification report</h1>",
        f"<p>Policy <b>{html.escape(report['policy_version'])}</b>, code sha256 "
        f"<code>{html.escape(report['code_sha256'][:16])}</code>, runner {html.escape(report['runner'])}.</p>",
        f"<p class='{'ok' if scan['passed'] else 'bad'}'>Residual-PHI scan: <b>{verdict}</b> "
        f"({_fmt(scan['total_hits'])} hits in {_fmt(scan['lines_scanned'])} output lines; "
        f"{_fmt(scan['single_words_in_coded_vocabulary'])} single-word names/places seen only inside kept "
        "coded vocabulary, not counted as hits).</p>",
        _table(
            "Resources",
            [(k, resources["in"].get(k, 0), resources["out"].get(k, 0)) for k in kinds]
            + [("total", resources["totals"]["in"], resources["totals"]["out"])],
            ("resource type", "in", "out"),
        ),
        _table("Dead letter (by reason)", sorted(resources["dead_letter_reasons"].items()), ("reason", "records")),
        _table("Removed elements (by category)", list(report["removed"].items()), ("category", "count")),
        _table("Rewritten values (by category)", list(report["rewritten"].items()), ("category", "count")),
        _table(
            "Unclassified elements removed (fail closed)", list(report["unclassified_paths"].items()), ("path", "count")
        ),
        _table(
            "Residual-PHI scan (values of input Patients searched in every output byte)",
            [
                (c, scan["values_indexed"][c], scan["values_too_short_to_search"][c], scan["hits"][c])
                for c in PHI_CATEGORIES
            ],
            ("category", "values searched", "too short to search", "hits"),
        ),
        f"<h2>Rules</h2><ul><li>Output files: {html.escape(report['output_naming'])}</li>"
        f"<li>Dates: {html.escape(report['date_rule'])}</li><li>Ages: {html.escape(report['age_rule'])}</li></ul>",
        "</body></html>",
    ]
    return "\n".join(parts)
