"""A standalone HTML evaluation report (inline CSS, no scripts) for the KFP UI."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.pass { color: #17692f; font-weight: bold; } .fail { color: #b3261e; font-weight: bold; }
.banner { padding: 0.6em 1em; border-radius: 4px; display: inline-block; }
.banner.pass { background: #e3f4e8; } .banner.fail { background: #fbe5e3; }
.warn { background: #fff6d6; padding: 0.5em 1em; } .muted { color: #666; }
"""


def fmt(value: Any, digits: int = 3) -> str:
    """Formats a cell: floats rounded, None as an em dash, everything escaped.

    Args:
        value: The value.
        digits: Decimal places for floats.

    Returns:
        HTML-safe text.
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Renders an HTML table.

    Args:
        headers: Column titles.
        rows: Cell values (formatted with ``fmt`` unless already ``str`` HTML from ``verdict``).

    Returns:
        The table markup.
    """
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, _Html) else fmt(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Html(str):
    """Markup that ``table`` must not escape."""


def verdict(passed: bool) -> _Html:
    """A coloured PASS/FAIL cell.

    Args:
        passed: The outcome.

    Returns:
        Markup for the cell.
    """
    return _Html('<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>')


def _fairness_section(fairness: dict[str, Any]) -> str:
    """Per-group alert and probability metrics, with between-group difference and ratio."""
    alerts, probs = fairness["alerts"], fairness["probabilities"]
    names = list(alerts["overall"]) + list(probs["overall"])
    rows = [["overall", *alerts["overall"].values(), *probs["overall"].values()]]
    for group, values in alerts["by_group"].items():
        rows.append([group, *values.values(), *probs["by_group"][group].values()])
    for summary in ("difference", "ratio"):
        rows.append([f"{summary} (between groups)", *alerts[summary].values(), *probs[summary].values()])
    eligible = ", ".join(fairness["recall_difference_groups"]) or "none"
    return (
        f"<h2>Fairness by {html.escape(str(fairness['group_column']))} (fairlearn MetricFrame)</h2>"
        f"<p class='muted'>Alert metrics at threshold {fmt(fairness['threshold'])}. Recall gap for the gate: "
        f"{fmt(fairness['recall_difference'])} over groups with ≥ {fairness['min_group_positives']} "
        f"positives ({html.escape(eligible)}).</p>" + table(["group", *names], rows)
    )


def render_report(evaluation: dict[str, Any], model: dict[str, Any]) -> str:
    """Renders the evaluation as one HTML page.

    Args:
        evaluation: The output of ``evaluate_predictions`` plus context.
        model: Model path, version and metadata summary.

    Returns:
        The HTML document.
    """
    metrics, threshold = evaluation["metrics"], evaluation["threshold"]
    passed = evaluation["passed"]
    warnings = "".join(f"<p class='warn'>⚠ {html.escape(w)}</p>" for w in evaluation["warnings"])
    gates = table(
        ["gate", "metric", "value", "passing range", "result", "why"],
        [
            [g["name"], g["metric"], g["value"], g["bounds"], verdict(g["passed"]), g["rationale"]]
            for g in evaluation["gates"]
        ],
    )
    metric_rows = [[name, value] for name, value in metrics.items()]
    metric_rows += [[f"{name} at threshold", value] for name, value in evaluation["rates"].items()]
    (tn, fp), (fn, tp) = evaluation["confusion_matrix"]["rows"]
    confusion = table(
        ["", "predicted: no alert", "predicted: alert"], [["actual: no event", tn, fp], ["actual: event", fn, tp]]
    )
    calibration = table(
        ["probability bin", "rows", "mean predicted", "observed rate"],
        [
            [f"{b['lower']:.1f}–{b['upper']:.1f}", b["count"], b["mean_predicted"], b["observed_rate"]]
            for b in evaluation["calibration"]["curve"]
        ],
    )
    banner = "pass" if passed else "fail"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>clinflow model evaluation</title><style>{_STYLE}</style></head>
<body>
<h1>Model evaluation</h1>
<p class="banner {banner}">Promotion gates: {"all passed" if passed else "FAILED"}</p>
<p class="muted">Model {fmt(model.get("version") or "(unversioned)")} at {fmt(model.get("path"))};
held-out rows: {metrics["rows"]} ({metrics["positives"]} positive). Target: {fmt(model.get("target"))}.</p>
{warnings}
<h2>Promotion gates</h2>{gates}
<h2>Metrics</h2>{table(["metric", "value"], metric_rows)}
<h2>Decision threshold</h2>
<p>Alert when probability ≥ {fmt(threshold["value"], 4)} — {fmt(threshold["method"])}
(Youden's J {fmt(threshold["youden_j"])}).</p>{confusion}
<h2>Calibration</h2>
<p>Slope {fmt(metrics["calibration_slope"])}, intercept {fmt(metrics["calibration_intercept"])}
({fmt(evaluation["calibration"]["method"])}); Brier {fmt(metrics["brier"])}.</p>{calibration}
{_fairness_section(evaluation["fairness"])}
</body></html>
"""
