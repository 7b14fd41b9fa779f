"""Promotion gates as data: the one place where the thresholds a model must meet live.

A gate whose metric is null (not computable, e.g. AUROC on a one-class eval set)
fails: a model is promoted only on evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Groups (values of ``sex``) with fewer positives than this in the eval set are
# reported but left out of the between-group recall gap: their recall is too noisy.
MIN_GROUP_POSITIVES = 10


@dataclass(frozen=True)
class Gate:
    """One promotion criterion on one metric.

    Attributes:
        name: Short identifier.
        metric: Key in the evaluation metrics.
        minimum: Lowest passing value (inclusive), or None.
        maximum: Highest passing value (inclusive), or None.
        rationale: Why the gate exists, shown in the report.
    """

    name: str
    metric: str
    minimum: float | None
    maximum: float | None
    rationale: str

    def bounds(self) -> str:
        """Returns the passing range as text, e.g. ``">= 0.6"`` or ``"in [0.7, 1.3]"``."""
        if self.minimum is not None and self.maximum is not None:
            return f"in [{self.minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f">= {self.minimum:g}"
        return f"<= {self.maximum:g}"

    def passes(self, value: float | None) -> bool:
        """Tells whether a metric value meets the gate (a null value never does).

        Args:
            value: The metric value, or None when it could not be computed.

        Returns:
            True when the value is within the bounds.
        """
        if value is None:
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        return self.maximum is None or value <= self.maximum


GATES: tuple[Gate, ...] = (
    Gate("min_auroc", "auroc", 0.6, None, "The model must rank patients clearly better than chance."),
    Gate("max_brier", "brier", None, 0.25, "Probabilities must be accurate overall (0.25 = always predicting 0.5)."),
    Gate(
        "calibration_slope",
        "calibration_slope",
        0.7,
        1.3,
        "Risks must be neither too extreme (slope < 1) nor too timid (slope > 1).",
    ),
    Gate(
        "max_recall_difference_sex",
        "recall_difference_sex",
        None,
        0.2,
        f"Equal opportunity: recall at the threshold may differ by at most 0.2 between sexes "
        f"(groups with at least {MIN_GROUP_POSITIVES} positives).",
    ),
)


def evaluate_gates(values: Mapping[str, float | None], gates: Sequence[Gate] = GATES) -> list[dict[str, Any]]:
    """Checks every gate.

    Args:
        values: Metric name to value (None when not computable).
        gates: The gates to apply.

    Returns:
        One JSON-ready record per gate: name, metric, value, bounds, passed, rationale.
    """
    return [
        {
            "name": gate.name,
            "metric": gate.metric,
            "value": values.get(gate.metric),
            "minimum": gate.minimum,
            "maximum": gate.maximum,
            "bounds": gate.bounds(),
            "passed": gate.passes(values.get(gate.metric)),
            "rationale": gate.rationale,
        }
        for gate in gates
    ]
