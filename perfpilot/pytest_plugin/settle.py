"""The final wall/cpu verdicts of a comparing session, given after its main loop.

A test's timing is judged against the whole suite's drift (:mod:`perfpilot.pytest_plugin.drift`),
which is known only once every test has run. So during the main loop a timing regression is
*provisional* (recorded, the test passes); after it, :func:`settle` estimates the session's
factor, re-judges every test with it divided out, runs the suspects again (pytest's own
``runtestprotocol``, unlogged, as pytest-rerunfailures re-runs flaky tests; the plugin measures
that run), and logs a failed ``call`` report for each test whose re-measurement is still a
suspect's. That report replaces the passed one in the terminal's counts, so the exit status,
``--lf`` and the summary see the failure; junitxml shows the test twice (passed, then failed),
and ``-x`` cannot stop at it (it fails after the loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from perfpilot.pytest_plugin import drift
from perfpilot.pytest_plugin.compare import NOISE_FLOOR, Finding

if TYPE_CHECKING:
    from perfpilot.pytest_plugin.report import TestRecord
    from perfpilot.pytest_plugin.session import PerfpilotSession


def metrics_to_settle(plugin: PerfpilotSession, items: list[pytest.Item]) -> tuple[tuple[str, ...], str]:
    """The timing metrics judged at the end of this session, or ``()`` and why not."""
    metrics = tuple(m for m in drift.METRICS if m in plugin.options.thresholds)
    if plugin.baseline is None or not metrics:
        return (), ""
    if plugin.xdist_workers():
        return (), "under pytest-xdist each test's timing is judged alone (the session factor is not divided out)"
    if plugin.counting is not None and plugin.counting.under_valgrind:
        return (), ""
    known = sum(1 for item in items if item.nodeid in plugin.baseline.tests)
    if known < drift.MIN_TESTS:
        return (), (f"{known} test(s) in the baseline, fewer than {drift.MIN_TESTS}: each test's timing is judged "
                    "alone (the session factor is not divided out)")
    return metrics, ""


def settle(plugin: PerfpilotSession, session: pytest.Session) -> None:
    """Final verdicts for ``plugin.settle_metrics`` (see the module doc); fills ``plugin.settled``."""
    assert plugin.baseline is not None
    base_tests = plugin.baseline.tests
    records = [r for r in plugin.records.values() if r.rounds]
    section: dict[str, Any] = {"applied": [], "metrics": {}, "remeasured": [],
                               "max_remeasure": plugin.options.remeasure}
    suspects: dict[str, float] = {}  # nodeid -> worst relative ratio
    for metric in plugin.settle_metrics:
        found = drift.estimate(base_tests, records, metric, threshold=plugin.options.thresholds[metric],
                               floor=NOISE_FLOOR[metric])
        if found is None:
            plugin.notes.append(f"{metric}: fewer than {drift.MIN_TESTS} tests measured against the baseline: "
                                "each test's timing was judged alone (the session factor is not divided out)")
            continue
        section["applied"].append(metric)
        section["metrics"][metric] = found.to_dict()
        for record in records:
            finding = _judge(record, base_tests.get(record.nodeid), found)
            if finding is not None and finding.kind == "regression":
                suspects[record.nodeid] = max(suspects.get(record.nodeid, 0.0), finding.verdict["ratio"])
    chosen = sorted(suspects, key=lambda n: -suspects[n])[:max(0, plugin.options.remeasure)]
    again = _remeasure(plugin, session, chosen)
    for record in records:
        _confirm(plugin, record, section, again.get(record.nodeid), record.nodeid in chosen)
    for record in records:  # a metric without a factor keeps its call-phase verdict, now final
        for finding in record.findings:
            finding.pop("provisional", None)
    plugin.settled = section
    failed = [r for r in records if r.outcome == "passed" and _regressions(r)]
    _announce(session, section, len(suspects), failed)
    items = {item.nodeid: item for item in session.items}
    for record in failed:
        _fail_late(plugin, session, items.get(record.nodeid), record)


def _judge(record: TestRecord, base: dict[str, Any] | None, found: drift.Drift) -> Finding | None:
    """Replace the record's call-phase finding for ``found.metric`` with one under the drift rule."""
    base_rounds = ((base or {}).get("rounds") or {}).get(found.metric)
    rounds = record.rounds.get(found.metric)
    if not base_rounds or not rounds or record.measure:  # perfpilot_measure subjects keep the engine's verdict
        return None
    verdict = drift.verdict(found, base_rounds, rounds)
    ratio = verdict["ratio"]
    divided = f"x{found.factor:.2f} of the session divided out (raw {verdict['raw_ratio']:.2f}x)"
    if verdict["regressed"]:
        kind, reason = "regression", f"{divided}; above the x{found.limit:.2f} limit"
    elif ratio > 1 + found.threshold:
        kind, reason = "noise", f"{divided}; within the suite's spread (limit x{found.limit:.2f}) or the noise floor"
    elif ratio < 1 / found.limit and verdict["median_a"] * found.factor - verdict["median_b"] > found.floor:
        kind, reason = "improved", divided
    else:
        kind, reason = "unchanged", divided
    mine = [f for f in record.findings if f["metric"] == found.metric and not f.get("subject")]
    if mine:  # what judging the test alone against its baseline said in its call phase, for comparison
        verdict["call_phase"] = mine[0]["kind"]
    finding = Finding(record.nodeid, found.metric, kind, verdict, reason)
    record.findings = [f for f in record.findings if f not in mine]
    record.findings.append(finding.to_dict())
    return finding


def _remeasure(plugin: PerfpilotSession, session: pytest.Session, nodeids: list[str]) -> dict[str, TestRecord]:
    """Run each suspect once more (fixtures set up and torn down again), measured like the first time."""
    from _pytest.runner import runtestprotocol

    items = {item.nodeid: item for item in session.items}
    plugin.remeasuring = {}
    try:
        for nodeid in nodeids:
            item = items.get(nodeid)
            if item is not None:
                runtestprotocol(item, nextitem=None, log=False)
        return plugin.remeasuring
    finally:
        plugin.remeasuring = None


def _confirm(plugin: PerfpilotSession, record: TestRecord, section: dict[str, Any], again: TestRecord | None,
             chosen: bool) -> None:
    """A suspect stays a regression only if its re-measurement is still a suspect's."""
    for finding in _regressions(record):
        if finding.get("verdict", {}).get("rule") != "drift":
            continue
        metric, verdict = finding["metric"], finding["verdict"]
        found = drift.Drift(metric, verdict["factor"], 0, verdict["spread"], verdict["limit"], verdict["threshold"],
                            NOISE_FLOOR[metric])
        if not chosen:
            finding["reason"] += f"; not re-measured (at most {plugin.options.remeasure} suspects are)"
            continue
        rounds = (again.rounds.get(metric) if again is not None and again.outcome == "passed" else None)
        if not rounds:
            why = again.outcome if again is not None else "not run"
            finding["reason"] += f"; its re-measurement failed ({why}): judged on its first measurement"
            continue
        second = drift.verdict(found, plugin.baseline.tests[record.nodeid]["rounds"][metric], rounds)
        verdict["remeasured"] = {k: second[k] for k in ("ratio", "raw_ratio", "median_b", "runs_b", "regressed")}
        section["remeasured"].append({"nodeid": record.nodeid, "metric": metric, "first": verdict["ratio"],
                                      "again": second["ratio"], "regressed": second["regressed"]})
        if second["regressed"]:
            finding["reason"] += f"; re-measured at the end of the session: x{second['ratio']:.2f} again"
        else:
            finding["kind"] = "noise"
            finding["reason"] += (f"; re-measured at the end of the session: x{second['ratio']:.2f}, so a burst "
                                  "during its run, not failed")


def _regressions(record: TestRecord) -> list[dict[str, Any]]:
    return [f for f in record.findings if f["kind"] == "regression"]


def _announce(session: pytest.Session, section: dict[str, Any], suspects: int, failed: list[TestRecord]) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not section["applied"]:
        return
    factors = ", ".join(f"{m} x{section['metrics'][m]['factor']:.2f}" for m in section["applied"])
    reporter.ensure_newline()
    reporter.write_line(f"perfpilot: timings judged with the session's speed divided out ({factors}): "
                        f"{suspects} suspect(s), {len(section['remeasured'])} re-measured, {len(failed)} failed")


def _fail_late(plugin: PerfpilotSession, session: pytest.Session, item: pytest.Item | None,
               record: TestRecord) -> None:
    """Turn a test that passed in the loop into a failed one: a failed ``call`` report replaces its passed one."""
    from _pytest.reports import TestReport

    assert plugin.baseline is not None
    keys = ("nodeid", "metric", "kind", "verdict", "reason", "subject")
    for finding in _regressions(record):
        text = Finding(**{k: finding[k] for k in keys}).describe()
        record.failures.append(f"perfpilot: significant regression vs baseline ({plugin.baseline.describe()}): {text}")
    record.outcome = "failed"
    if item is None or item.get_closest_marker("xfail") is not None:
        return  # an xfail test's outcome is pytest's to give; the finding is reported
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:  # the passed report no longer counts
        passed = reporter.stats.get("passed", [])
        passed[:] = [r for r in passed if not (getattr(r, "nodeid", None) == item.nodeid and r.when == "call")]
    report = TestReport(item.nodeid, item.location, {name: 1 for name in item.keywords}, "failed",
                        "\n".join(record.failures), "call", user_properties=item.user_properties)
    item.ihook.pytest_runtest_logreport(report=report)
