"""Cross-session wall/cpu verdicts with the session's speed divided out (issue 11 item 4).

Real pytest sessions (pytester, subprocesses): one baseline, then comparisons where a whole-
machine slowdown is simulated deterministically -- every test does ``SCALE`` times its work --
so the session factor is ~SCALE, whatever this VM's own drift adds on top. Judged on CPU time
(steadier than wall here) with a 50% threshold against 4x and 6x changes: no timed assertion.
"""

from __future__ import annotations

import json

import pytest

from perfpilot.pytest_plugin import drift
from perfpilot.pytest_plugin.report import TestRecord

pytest_plugins = ["pytester"]

SUITE = '''
import os
import pytest

SCALE = int(os.environ.get("SCALE", "1"))  # the whole machine, simulated: every test does SCALE x the work
SLOW_ONE = int(os.environ.get("SLOW_ONE", "1"))  # test_3's own code change
SETUPS = {"burst": 0}

def work(n):
    total = 0
    for i in range(n * SCALE):
        total += i * i % 7
    return total

@pytest.fixture
def burst(request):
    # a burst during test_work[5]'s first run only: its re-run sets the fixture up again
    if request.node.callspec.params["i"] != 5:
        return 1
    SETUPS["burst"] += 1
    return 6 if os.environ.get("BURST") and SETUPS["burst"] == 1 else 1

@pytest.mark.parametrize("i", range(10))
def test_work(i, burst):
    factor = SLOW_ONE if i == 3 else 1
    work(60_000 * factor * burst)
'''

OPTIONS = ["--perfpilot-rounds=5", "--perfpilot-compare-fail=cpu:100%", "--perfpilot-json", "out.json"]


def _findings(pytester: pytest.Pytester) -> tuple[dict, dict[str, dict]]:
    doc = json.loads((pytester.path / "out.json").read_text())
    return doc, {f["nodeid"].split("[")[1].rstrip("]"): f for f in doc["findings"] if f["metric"] == "cpu"}


@pytest.mark.slow
def test_a_whole_session_slowdown_passes_and_a_test_slower_than_the_rest_fails(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest_subprocess("--perfpilot-save", "--perfpilot-rounds=5").assert_outcomes(passed=10)

    # every test 3x slower: the machine, not the code (beyond the 100% threshold: judged per test
    # against the baseline alone, as before, this session would fail every test)
    monkeypatch.setenv("SCALE", "3")
    result = pytester.runpytest_subprocess("--perfpilot-compare", *OPTIONS)
    result.assert_outcomes(passed=10)
    result.stdout.fnmatch_lines(["*cpu: this session ran x* the baseline's time (median of 10 tests), divided out*"])
    doc, findings = _findings(pytester)
    factor = doc["meta"]["drift"]["metrics"]["cpu"]["factor"]
    # ~3 from the work, times whatever this VM drifted between the sessions (2x work read 1.3-2.9 here)
    assert 1.8 < factor < 7.0
    raw = sorted(f["verdict"]["raw_ratio"] for f in findings.values())
    assert factor == pytest.approx((raw[4] + raw[5]) / 2)  # the median of the tests' own ratios
    assert all(f["kind"] != "regression" and f["verdict"]["rule"] == "drift" for f in findings.values())

    # the same, and test_3 4x slower than the rest: it alone fails, after its re-measurement
    monkeypatch.setenv("SLOW_ONE", "4")
    result = pytester.runpytest_subprocess("--perfpilot-compare", *OPTIONS)
    result.assert_outcomes(passed=9, failed=1)
    result.stdout.fnmatch_lines(["*1 suspect(s) re-measured*1 still regressed*", "FAILED*test_work[[]3[]]*"])
    doc, findings = _findings(pytester)
    assert [i for i, f in findings.items() if f["kind"] == "regression"] == ["3"]
    slow = findings["3"]["verdict"]
    assert slow["ratio"] > 2.0 and slow["remeasured"]["ratio"] > 2.0 and slow["remeasured"]["regressed"]
    assert doc["meta"]["drift"]["remeasured"][0]["nodeid"].endswith("[3]")
    outcomes = {t["nodeid"].split("[")[1].rstrip("]"): t["outcome"] for t in doc["tests"]}
    assert outcomes.pop("3") == "failed" and set(outcomes.values()) == {"passed"}

    # a burst during test_5's first run: a suspect, re-measured at the end, passes
    monkeypatch.setenv("SLOW_ONE", "1")
    monkeypatch.setenv("BURST", "1")
    result = pytester.runpytest_subprocess("--perfpilot-compare", *OPTIONS)
    result.assert_outcomes(passed=10)
    doc, findings = _findings(pytester)
    burst = findings["5"]
    assert burst["kind"] == "noise" and "a burst during its run" in burst["reason"]
    assert burst["verdict"]["ratio"] > 2.0 and burst["verdict"]["remeasured"]["ratio"] < 2.0
    assert [r["nodeid"][-3:] for r in doc["meta"]["drift"]["remeasured"]] == ["[5]"]

    # without re-measuring, the same burst fails the test: the re-measurement is what passed it
    result = pytester.runpytest_subprocess("--perfpilot-compare", "--perfpilot-remeasure=0", *OPTIONS)
    result.assert_outcomes(passed=9, failed=1)


def test_too_few_tests_keep_each_tests_own_verdict(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_few="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    pytester.runpytest_subprocess("--perfpilot-save", "--perfpilot-rounds=3").assert_outcomes(passed=2)
    result = pytester.runpytest_subprocess("--perfpilot-compare", "--perfpilot-rounds=3")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*2 test(s) in the baseline, fewer than 5: each test's timing is judged alone*"])
    bad = pytester.runpytest_subprocess("--perfpilot-compare", "--perfpilot-remeasure=-1")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR and "Traceback" not in bad.stderr.str()
    bad.stderr.fnmatch_lines(["*perfpilot: --perfpilot-remeasure must be 0 or more, got -1*"])


def test_the_limit_comes_from_the_suites_spread() -> None:
    base = {f"t{i}": {"rounds": {"cpu": [0.010] * 3}} for i in range(9)}
    spread = [1.5, 1.6, 1.7, 1.55, 1.65, 1.6, 1.58, 1.62]  # the machine: ~1.6x, a few % between tests
    records = [TestRecord(f"t{i}", rounds={"cpu": [0.010 * r] * 3}) for i, r in enumerate(spread)]
    records.append(TestRecord("t8", rounds={"cpu": [0.010 * 1.6 * 3] * 3}))  # 3x against the machine
    found = drift.estimate(base, records, "cpu", threshold=0.5, floor=2e-4)
    assert found is not None and found.factor == pytest.approx(1.6) and found.limit == pytest.approx(1.5)
    assert found.suspect(0.010, 0.048) and not found.suspect(0.010, 0.017)
    scattered = [0.8, 1.6, 3.2, 1.2, 2.1, 1.0, 2.6, 1.6]
    noisy = [TestRecord(f"t{i}", rounds={"cpu": [0.010 * r] * 3}) for i, r in enumerate(scattered)]
    wide = drift.estimate(base, noisy, "cpu", threshold=0.5, floor=2e-4)
    assert wide is not None and wide.limit > 3  # a suite this noisy cannot call 3x a regression
    assert drift.estimate(base, records[:4], "cpu", threshold=0.5, floor=2e-4) is None
