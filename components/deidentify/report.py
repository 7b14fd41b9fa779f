"""The de-identification report: ``deid_report.json``, an HTML view for the KFP UI, metrics.

Everything here is built from counts, category names, element paths and file names; no value
from any resource reaches the report.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping
from typing import Any

from components.deidentify import pipeline, policy
from components.deidentify.keys import MAX_SHIFT_DAYS
from components.deidentify.phi_scan import PHI_CATEGORIES
from components.deidentify.policy import Policy
from components.deidentify.transform import (
    FREE_TEXT_PREFIX,
    REMOVED_PREFIX,
    REWRITTEN_PREFIX,
    UNCLASSIFIED_PATH_PREFIX,
)

OUTPUT_NAMING = "<ResourceType>.<nnn>.ndjson (FHIR Bulk export style; nnn = 000, 001, ... per written shard)"
DATE_RULES = {
    "shift": (
        f"every date/dateTime/instant of a patient's resources moves by one per-patient offset in "
        f"[-{MAX_SHIFT_DAYS}, -1] or [1, {MAX_SHIFT_DAYS}] days from HMAC(key, 'date-shift:Patient/<id>'), "
        "keeping precision, time of day and zone"
    ),
    "year": "every date/dateTime/instant is generalised to its year",
}
SMALLEST_CLASSES_SHOWN = 5
CLASS_SIZE_BUCKETS = ((1, 1), (2, 2), (3, 4), (5, 9), (10, 10**12))


def _by_prefix(counts: Mapping[str, int], prefix: str) -> dict[str, int]:
    return {name[len(prefix) :]: value for name, value in sorted(counts.items()) if name.startswith(prefix)}


def k_anonymity(stats: Mapping[str, int], the_policy: Policy) -> dict[str, Any]:
    """k-anonymity of the de-identified Patients over the policy's quasi-identifiers (sizes only)."""
    settings = the_policy.document.get("k_anonymity", {})
    sizes = sorted(_by_prefix(stats, pipeline.QI_PREFIX).values())
    target = int(settings.get("target_k", 5))
    histogram = {
        (f"{low}" if low == high else f"{low}+" if high > 10**9 else f"{low}-{high}"): sum(
            1 for size in sizes if low <= size <= high
        )
        for low, high in CLASS_SIZE_BUCKETS
    }
    k = sizes[0] if sizes else 0
    return {
        "quasi_identifiers": list(settings.get("quasi_identifiers", [])),
        "age_band_years": settings.get("age_band_years", 10),
        "patients": sum(sizes),
        "equivalence_classes": len(sizes),
        "k": k,
        "smallest_class_sizes": sizes[:SMALLEST_CLASSES_SHOWN],
        "class_size_histogram": histogram,
        "patients_in_classes_below_target": sum(size for size in sizes if size < target),
        "target_k": target,
        "meets_target": bool(sizes) and k >= target,
    }


def _lane_counts(stats: Mapping[str, int], inventory: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Per lane (dicom/, device_logs/, documents/): status, in/out/dead-letter and the lane's own counts."""
    from components.deidentify.lanes import LANE_COUNT_PREFIX, LANE_DEAD_PREFIX, LANE_IN_PREFIX, LANE_OUT_PREFIX

    found: dict[str, dict[str, Any]] = {}
    for lane, status in inventory.items():
        entry: dict[str, Any] = {"status": status}
        if lane + "\t" in "".join(f"{name}\t" for name in _by_prefix(stats, LANE_IN_PREFIX)):
            entry["in"] = stats.get(LANE_IN_PREFIX + lane, 0)
            entry["out"] = stats.get(LANE_OUT_PREFIX + lane, 0)
            entry["dead_letter"] = stats.get(LANE_DEAD_PREFIX + lane, 0)
            entry["balanced"] = entry["in"] == entry["out"] + entry["dead_letter"]
            entry["counts"] = _by_prefix(stats, f"{LANE_COUNT_PREFIX}{lane}\t")
        found[lane] = entry
    return found


def _files(stats: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    names = sorted(set(_by_prefix(stats, pipeline.FILE_IN_PREFIX)))
    files = {}
    for name in names:
        counts = {
            "in": stats.get(pipeline.FILE_IN_PREFIX + name, 0),
            "out": stats.get(pipeline.FILE_OUT_PREFIX + name, 0),
            "dead_letter": stats.get(pipeline.FILE_DEAD_PREFIX + name, 0),
        }
        files[name] = {**counts, "balanced": counts["in"] == counts["out"] + counts["dead_letter"]}
    return files


def build_report(
    stats: Mapping[str, int],
    scan: Mapping[str, int],
    input_files: list[str],
    skipped_files: list[str],
    runner: str,
    the_policy: Policy,
    lanes: Mapping[str, Any] | None = None,
    reid_map_written: bool = False,
    timings: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Assembles the report document from the two pipelines' counts.

    Args:
        stats: Counts from the de-identify pipeline.
        scan: Counts from the residual-PHI scan pipeline.
        input_files: Input file names read.
        skipped_files: Input file names recorded and skipped (bulk-export logs).
        runner: The Beam runner name.
        the_policy: The policy that ran.
        lanes: Per input subdirectory (dicom/, device_logs/, documents/): files and status.
        reid_map_written: Whether a re-identification map was written (never its place or content).
        timings: Wall seconds per phase (``deidentify``, ``residual_scan``).

    Returns:
        The JSON-serialisable report.
    """
    resources_in = _by_prefix(stats, pipeline.IN_PREFIX)
    resources_out = _by_prefix(stats, pipeline.OUT_PREFIX)
    dead = _by_prefix(stats, pipeline.DEAD_PREFIX)
    read_back = _by_prefix(scan, "lines\t")
    dead_lines = read_back.pop("dead_letter", 0)
    lane_lines = {lane: read_back.pop(lane) for lane in pipeline.LANE_DIRS if lane in read_back}
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
    files = _files(stats)
    lane_counts = _lane_counts(stats, lanes or {})
    lane_dead = sum(entry.get("dead_letter", 0) for entry in lane_counts.values())
    removed = {name: stats.get(REMOVED_PREFIX + name, 0) for name in policy.REMOVAL_CATEGORIES}
    fhir = the_policy.fhir
    safe_harbor = {
        name: {
            "action": fhir["safe_harbor"][name]["action"],
            "fhir_elements": list(fhir["safe_harbor"][name]["elements"]),
            "removed": removed.get(name, 0),
        }
        for name in policy.SAFE_HARBOR_CATEGORIES
    }
    rewritten = {name: stats.get(REWRITTEN_PREFIX + name, 0) for name in policy.REWRITE_CATEGORIES}
    safe_harbor["dates"]["shifted"] = rewritten[policy.DATES_SHIFTED]
    safe_harbor["dates"]["generalised_to_year"] = rewritten[policy.DATES_GENERALISED]
    safe_harbor["dates"]["ages_aggregated"] = rewritten[policy.AGES_CAPPED]
    safe_harbor["geographic"]["postal_codes_generalised"] = rewritten[policy.POSTAL_CODES_GENERALISED]
    safe_harbor["other_unique"]["pseudonymised"] = (
        rewritten[policy.IDS_PSEUDONYMISED] + rewritten[policy.IDENTIFIERS_PSEUDONYMISED]
    )
    return {
        "stage": "deidentify",
        "policy": {
            "policy_id": the_policy.policy_id,
            "version": the_policy.version,
            "sha256": the_policy.sha256,
            "source": the_policy.source,
            "date_mode": fhir["dates"]["mode"],
            "reidentification_map_allowed": bool(the_policy.document["reidentification_map"]),
        },
        "policy_version": the_policy.label,
        "code_sha256": policy.code_sha256(),
        "runner": runner,
        "timings_seconds": {name: round(seconds, 2) for name, seconds in (timings or {}).items()},
        "output_naming": OUTPUT_NAMING,
        "date_rule": DATE_RULES[fhir["dates"]["mode"]],
        "age_rule": (
            f"ages over {fhir['ages']['aggregate_over']} (at death or end of data; Age quantities) are reported "
            f"as {fhir['ages']['reported_as']}"
        ),
        "inputs": {"files": input_files, "skipped_files": skipped_files},
        "lanes": lane_counts,
        "resources": {
            "in": resources_in,
            "out": resources_out,
            "out_read_back": read_back,
            "dead_letter_reasons": dead,
            "files": files,
            "totals": totals,
            "balanced": totals["in"] == totals["out"] + totals["dead_letter"]
            and totals["out"] == totals["out_read_back"]
            and totals["dead_letter"] + lane_dead == dead_lines
            and all(entry.get("balanced", True) for entry in lane_counts.values())
            and all(entry["balanced"] for entry in files.values()),
        },
        "safe_harbor": safe_harbor,
        "removed": removed,
        "rewritten": rewritten,
        "free_text": {
            "redactions": _by_prefix(stats, FREE_TEXT_PREFIX),
            "resources_joined_with_their_patient": stats.get(pipeline.PENDING_TEXT, 0),
            "resources_whose_patient_was_not_found": stats.get(pipeline.PENDING_WITHOUT_PATIENT, 0),
        },
        "unclassified_paths": _by_prefix(stats, UNCLASSIFIED_PATH_PREFIX),
        "k_anonymity": k_anonymity(stats, the_policy),
        "reidentification_map": {"written": reid_map_written},
        "residual_phi_scan": {
            "resources_indexed": totals["in"],
            "values_indexed": {c: scan.get("indexed\t" + c, 0) for c in PHI_CATEGORIES},
            "values_too_short_to_search": {c: scan.get("skipped\t" + c, 0) for c in PHI_CATEGORIES},
            "bloom_filter": {
                "bits": scan.get("bloom_bits", 0),
                "items": scan.get("bloom_items", 0),
                "estimated_false_positive_ppm": scan.get("bloom_fpr_ppm", 0),
                "candidates_confirmed_exactly": scan.get("bloom_candidates", 0),
            },
            "lines_scanned": sum(read_back.values()) + dead_lines + sum(lane_lines.values()),
            "lane_lines_scanned": lane_lines,
            "hits": {c: hits.get(c, 0) for c in PHI_CATEGORIES},
            "hits_by_file_type": dict(sorted(hits_by_type.items())),
            "single_words_in_coded_vocabulary": scan.get("vocabulary_matches", 0),
            "whole_terminology_codes_equal_to_an_input_value": scan.get("coded_matches", 0),
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
        "patients": report["k_anonymity"]["patients"],
        "residual_phi_hits": report["residual_phi_scan"]["total_hits"],
        "k_anonymity_k": report["k_anonymity"]["k"],
        "free_text_redactions": sum(report["free_text"]["redactions"].values()),
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
    kanon = report["k_anonymity"]
    kinds = sorted(set(resources["in"]) | set(resources["out"]))
    verdict = "PASSED" if scan["passed"] else "FAILED"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>De-identification report</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eee}"
        ".ok{color:#060}.bad{color:#a00}</style></head><body>",
        "<h1>De-identification report</h1>",
        f"<p>Policy <b>{html.escape(report['policy_version'])}</b> (sha256 "
        f"<code>{html.escape(report['policy']['sha256'][:16])}</code>, dates: "
        f"{html.escape(report['policy']['date_mode'])}), code sha256 "
        f"<code>{html.escape(report['code_sha256'][:16])}</code>, runner {html.escape(report['runner'])}.</p>",
        f"<p class='{'ok' if scan['passed'] else 'bad'}'>Residual-PHI scan: <b>{verdict}</b> "
        f"({_fmt(scan['total_hits'])} hits in {_fmt(scan['lines_scanned'])} output lines; "
        f"{_fmt(scan['single_words_in_coded_vocabulary'])} single-word names/places seen only inside kept "
        f"coded vocabulary and {_fmt(scan['whole_terminology_codes_equal_to_an_input_value'])} terminology "
        "codes (SNOMED CT, LOINC, RxNorm, ICD, ...) equal to an input value, not counted as hits).</p>",
        _table(
            "Resources",
            [(k, resources["in"].get(k, 0), resources["out"].get(k, 0)) for k in kinds]
            + [("total", resources["totals"]["in"], resources["totals"]["out"])],
            ("resource type", "in", "out"),
        ),
        _table("Dead letter (by reason)", sorted(resources["dead_letter_reasons"].items()), ("reason", "records")),
        _table(
            "HIPAA Safe Harbor categories",
            [
                (name, entry["action"], ", ".join(entry["fhir_elements"]), entry["removed"])
                for name, entry in report["safe_harbor"].items()
            ],
            ("category", "action", "FHIR elements", "removed"),
        ),
        _table("Removed elements (by category)", list(report["removed"].items()), ("category", "count")),
        _table(
            "Free-text redactions (by category)", list(report["free_text"]["redactions"].items()), ("category", "count")
        ),
        _table(
            "k-anonymity of de-identified Patients",
            [
                ("quasi-identifiers", ", ".join(kanon["quasi_identifiers"])),
                ("k (smallest equivalence class)", kanon["k"]),
                ("equivalence classes", kanon["equivalence_classes"]),
                ("smallest class sizes", ", ".join(str(n) for n in kanon["smallest_class_sizes"])),
                ("patients in classes below target k", kanon["patients_in_classes_below_target"]),
                ("target k / met", f"{kanon['target_k']} / {kanon['meets_target']}"),
            ],
            ("measure", "value"),
        ),
        _table(
            "Other lanes (input subdirectories)",
            [
                (lane, entry["status"], entry.get("in", 0), entry.get("out", 0), entry.get("dead_letter", 0))
                for lane, entry in sorted(report["lanes"].items())
            ],
            ("lane", "status", "in", "out", "dead letter / quarantined"),
        ),
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
