"""What a CI job needs from the pytest plugin: no silent passes, no leaked warnings, no stray files in git."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import pytest

from perfpilot.pytest_plugin.compare import judge

pytest_plugins = ["pytester"]

SUITE = """
def test_one():
    assert sum(range(1000)) == 499500
"""


def test_the_engines_numpy_warnings_never_reach_the_users_filters() -> None:
    # Rounds like these (peak RSS growth of 0 B in some rounds) made numpy warn "invalid
    # value encountered in subtract"; under `filterwarnings = error` that failed the user's test.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdict = judge([0.0, 1048576.0, 4096.0], [0.0, 4096.0, 1048576.0, 1048576.0, 4096.0],
                        metric="peak_rss", threshold=0.2, source="measured")
    assert verdict.verdict in {"inconclusive", "no change", "larger", "smaller"}


def test_comparing_without_a_baseline_is_loud_and_can_fail(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=SUITE)
    quiet = pytester.runpytest_subprocess("--perfpilot-compare", "--perfpilot-rounds", "1")
    assert quiet.ret == 0
    quiet.stdout.fnmatch_lines(["*perfpilot: NOT COMPARED: no baseline for this machine*--perfpilot-require-baseline*"])
    strict = pytester.runpytest_subprocess("--perfpilot-compare", "--perfpilot-rounds", "1",
                                           "--perfpilot-require-baseline")
    assert strict.ret == 1
    strict.stdout.fnmatch_lines(["*NOT COMPARED*the session fails*", "*1 passed*"])


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_baselines_folder_tells_git_to_ignore_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=SUITE)
    subprocess.run(["git", "init", "-q"], cwd=pytester.path, check=True)
    result = pytester.runpytest_subprocess("--perfpilot-save", "--perfpilot-rounds", "1")
    assert result.ret == 0
    assert (pytester.path / ".perfpilot" / ".gitignore").read_text().splitlines()[-1] == "*"
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=pytester.path,
                            capture_output=True, text=True, check=True).stdout
    assert ".perfpilot" not in status and "test_a.py" in status


def test_the_sessions_speed_factor_is_the_median_of_per_test_ratios() -> None:
    from perfpilot.pytest_plugin import drift
    from perfpilot.pytest_plugin.report import TestRecord

    base = {f"t{i}": {"rounds": {"wall": [0.010, 0.011, 0.010]}} for i in range(6)}
    records = [TestRecord(f"t{i}", rounds={"wall": [0.016, 0.016, 0.017]}) for i in range(5)]
    records.append(TestRecord("t5", rounds={"wall": [0.090, 0.090, 0.091]}))  # one real 9x regression
    found = drift.factors(base, records)
    assert abs(found["wall"]["factor"] - 1.6) < 0.01 and found["wall"]["tests"] == 6
    assert "wall x1.60" in (drift.note(found) or "")
    assert drift.factors(base, records[:4]) == {}  # too few tests to tell drift from change
