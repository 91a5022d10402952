"""Cross-session wall/cpu verdicts that cancel the machine's drift.

A shared machine drifts 1.6-2.5x between sessions, so every test of a later session can
read slower with no code changed. The suite itself measures that drift: for each test,
``r = median(this session's rounds) / median(the baseline's rounds)``; the median of the
``r`` over all tests is the session's *factor* -- a few regressed tests barely move it.

The rule (``--perfpilot-compare`` on ``wall``/``cpu``, with at least :data:`MIN_TESTS`
tests in the baseline and this session; ``perfpilot_measure`` subjects and other metrics
are judged as before, see :mod:`perfpilot.pytest_plugin.compare`):

1. A test's *relative ratio* is ``q = r / factor``: how much it moved against the machine.
2. The suite's spread of relative ratios is the real noise of a cross-session comparison
   (the tests mostly did not change): ``spread = 1.4826 * MAD(log q)`` over the tests
   whose baseline median is above the metric's noise floor (all tests if fewer than
   :data:`MIN_TESTS` are). The *limit* is ``max(1 + threshold, exp(SPREAD_K * spread))``.
3. A test is a *suspect* when ``q`` exceeds the limit and its median exceeds
   ``factor * baseline median`` by more than the noise floor (200 us per test).
   No rank test, no p-value: a test's rounds run back to back, so a burst hits them all
   and they are not independent samples; only the medians are used.
4. A suspect is run again at the end of the session (at most ``--perfpilot-remeasure``
   of them, worst first, :data:`MAX_REMEASURE` by default) -- after whatever burst hit it
   has likely passed -- and fails only if that re-measurement's ``q`` (against the same
   factor) is still a suspect's. Suspects beyond the cap fail on their first measurement.

Because the factor needs the whole suite, a test's timing verdict is provisional until
the session's main loop has ended; the final one is given then (a failed report is logged
for the test, see :mod:`perfpilot.pytest_plugin.settle`). With fewer tests, under
pytest-xdist, or under valgrind, the engine's per-test verdict in the call phase stands.

What it cannot tell apart: a test that really got slower by less than the suite's spread,
and a machine whose speed changed between the main loop and the re-measurement (the
re-measurement is judged against the main loop's factor).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

MIN_TESTS = 5  # fewer tests cannot tell a machine's drift from their own changes
METRICS = ("wall", "cpu")
SPREAD_K = 3.0  # a limit of three robust standard deviations of log(q) across the suite
MAX_REMEASURE = 10  # suspects re-run at the end of a session, worst first (--perfpilot-remeasure)


def _median_of(entry: Mapping[str, Any] | None, metric: str) -> float | None:
    values = ((entry or {}).get("rounds") or {}).get(metric)
    return statistics.median(values) if values else None


def per_test_ratios(base_tests: Mapping[str, Any], records: Iterable[Any], metric: str) -> dict[str, float]:
    """``{nodeid: this session's median / the baseline's median}`` for tests that have both."""
    out = {}
    for record in records:
        base = _median_of(base_tests.get(record.nodeid), metric)
        current = record.rounds.get(metric)
        if base and current and base > 0:
            out[record.nodeid] = statistics.median(current) / base
    return out


def session_factor(base_tests: Mapping[str, Any], records: Iterable[Any], metric: str) -> tuple[float, int] | None:
    """``(median of per-test ratios, tests)`` for ``metric``, or None with fewer than MIN_TESTS tests."""
    ratios = list(per_test_ratios(base_tests, records, metric).values())
    if len(ratios) < MIN_TESTS:
        return None
    return statistics.median(ratios), len(ratios)


@dataclass
class Drift:
    """One metric's session factor and the limit a test's relative ratio is held to."""

    metric: str
    factor: float
    tests: int
    spread: float  # robust standard deviation of log(relative ratio) across the suite
    limit: float  # a relative ratio above this (and above the noise floor) is a suspect
    threshold: float
    floor: float

    def to_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "tests": self.tests, "spread": self.spread, "limit": self.limit,
                "threshold": self.threshold, "floor": self.floor}

    def relative(self, base_median: float, current_median: float) -> float:
        return current_median / base_median / self.factor

    def suspect(self, base_median: float, current_median: float) -> bool:
        excess = current_median - self.factor * base_median
        return self.relative(base_median, current_median) > self.limit and excess > self.floor


def estimate(base_tests: Mapping[str, Any], records: Iterable[Any], metric: str, *, threshold: float,
             floor: float) -> Drift | None:
    """The metric's :class:`Drift`, or None with fewer than MIN_TESTS tests to estimate it from."""
    records = list(records)
    ratios = per_test_ratios(base_tests, records, metric)
    if len(ratios) < MIN_TESTS:
        return None
    factor = statistics.median(ratios.values())
    logs = {nodeid: math.log(r / factor) for nodeid, r in ratios.items() if r > 0}
    steady = [v for nodeid, v in logs.items() if (_median_of(base_tests.get(nodeid), metric) or 0.0) > floor]
    sample = steady if len(steady) >= MIN_TESTS else list(logs.values())
    centre = statistics.median(sample)
    spread = 1.4826 * statistics.median(abs(v - centre) for v in sample)
    limit = max(1.0 + threshold, math.exp(SPREAD_K * spread))
    return Drift(metric, factor, len(ratios), spread, limit, threshold, floor)


def verdict(drift: Drift, base_rounds: list[float], rounds: list[float]) -> dict[str, Any]:
    """A finding's verdict dict under the drift rule (keys shared with the engine's where they mean the same)."""
    a, b = statistics.median(base_rounds), statistics.median(rounds)
    return {"rule": "drift", "ratio": drift.relative(a, b), "raw_ratio": b / a, "factor": drift.factor,
            "limit": drift.limit, "spread": drift.spread, "threshold": drift.threshold, "median_a": a,
            "median_b": b, "runs_a": len(base_rounds), "runs_b": len(rounds),
            "regressed": drift.suspect(a, b)}


def factors(base_tests: Mapping[str, Any], records: Iterable[Any]) -> dict[str, dict[str, float]]:
    records = list(records)
    out = {}
    for metric in METRICS:
        found = session_factor(base_tests, records, metric)
        if found is not None:
            out[metric] = {"factor": found[0], "tests": found[1]}
    return out


def note(found: Mapping[str, Mapping[str, float]], *, divided: bool = False) -> str | None:
    if not found:
        return None
    parts = ", ".join(f"{metric} x{f['factor']:.2f}" for metric, f in found.items())
    tests = max(int(f["tests"]) for f in found.values())
    if divided:
        return (f"this session's speed against the baseline, median of {tests} tests' ratios: {parts} "
                "(divided out before judging each test)")
    return (f"this session's speed against the baseline, median of {tests} tests' ratios: {parts} "
            "(not divided out before judging: a test whose ratio is near this moved with the machine)")
