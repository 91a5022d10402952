"""The session's speed against its baseline, estimated from the suite itself.

A shared machine drifts 1.6-2.5x between sessions, so every test of a later session can
read slower with no code changed. The median over tests of (this session's median / the
baseline's median) estimates that whole-session factor: one regressed test, or a few,
barely move it. It is shown in the summary and the JSON report, so a reader can tell a
test that moved with the machine from one that moved against it.

Not done yet (README says so): dividing the factor out before judging each test (a test
is judged in its own call phase, before most of the suite has run), and re-measuring a
suspect later in the session.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Mapping

MIN_TESTS = 5  # fewer tests cannot tell a machine's drift from their own changes
METRICS = ("wall", "cpu")


def session_factor(base_tests: Mapping[str, Any], records: Iterable[Any], metric: str) -> tuple[float, int] | None:
    """``(median of per-test ratios, tests)`` for ``metric``, or None with fewer than MIN_TESTS tests."""
    ratios = []
    for record in records:
        base = (base_tests.get(record.nodeid) or {}).get("rounds", {}).get(metric)
        current = record.rounds.get(metric)
        if base and current and statistics.median(base) > 0:
            ratios.append(statistics.median(current) / statistics.median(base))
    if len(ratios) < MIN_TESTS:
        return None
    return statistics.median(ratios), len(ratios)


def factors(base_tests: Mapping[str, Any], records: Iterable[Any]) -> dict[str, dict[str, float]]:
    records = list(records)
    out = {}
    for metric in METRICS:
        found = session_factor(base_tests, records, metric)
        if found is not None:
            out[metric] = {"factor": found[0], "tests": found[1]}
    return out


def note(found: Mapping[str, Mapping[str, float]]) -> str | None:
    if not found:
        return None
    parts = ", ".join(f"{metric} x{f['factor']:.2f}" for metric, f in found.items())
    tests = max(int(f["tests"]) for f in found.values())
    return (f"this session's speed against the baseline, median of {tests} tests' ratios: {parts} "
            "(not divided out before judging: a test whose ratio is near this moved with the machine)")
