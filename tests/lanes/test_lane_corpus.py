"""Every bad input ends quarantined or rejected with its expected reason code, and nothing raises."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_corpus.builder import CASE_LIMITS, EXPECTED

from components.ingest.lanes import count_outcomes, route
from components.ingest.limits import DEFAULT_LIMITS

# Identifier-like values planted in the corpus; none may appear in a reason sentence.
PLANTED_VALUES = ("MRN-0", "MRN-1", "CORPUS^TEST", "caf", "cmd.exe", "app.alert")


def test_corpus_has_at_least_40_cases_across_every_lane() -> None:
    assert len(EXPECTED) >= 40
    lanes = {expected.lane for expected in EXPECTED.values()}
    assert {"fhir", "dicom", "device_logs", "pdf", "unrouted"} <= lanes
    assert all(expected.outcome in ("quarantine", "reject") for expected in EXPECTED.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_case_gets_expected_verdict(bad_corpus: dict[str, Path], name: str) -> None:
    verdict = route(bad_corpus[name], CASE_LIMITS.get(name, DEFAULT_LIMITS))
    expected = EXPECTED[name]
    assert (verdict.lane, verdict.outcome, verdict.reason_code) == (
        expected.lane,
        expected.outcome,
        expected.reason_code,
    ), verdict.reason
    assert verdict.file == name
    assert name in verdict.reason
    assert verdict.extracted is None
    assert not any(value in verdict.reason for value in PLANTED_VALUES), verdict.reason
    assert verdict.reason_code.replace("_", "").isalpha() and verdict.reason_code.islower()


def test_corpus_counts_add_up(bad_corpus: dict[str, Path]) -> None:
    verdicts = [route(path, CASE_LIMITS.get(name, DEFAULT_LIMITS)) for name, path in bad_corpus.items()]
    counts = count_outcomes(verdicts)
    assert counts["received"] == len(bad_corpus) == counts["promote"] + counts["quarantine"] + counts["reject"]
    assert counts["promote"] == 0
    assert counts["reject"] == sum(1 for e in EXPECTED.values() if e.outcome == "reject")
