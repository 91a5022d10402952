"""pytest --perfpilot-instructions: per-test call-phase instruction counts, saved and compared (real valgrind)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perfpilot.profilers import instructions

SUITE = """\
import os
import pytest

N = int(os.environ.get("WORK", "3000"))


def work(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


@pytest.fixture
def heavy_setup():
    work(40_000)  # setup, not the call: must not be counted
    yield
    work(40_000)  # teardown, likewise


def test_uses_the_library():
    assert work(N) > 0


def test_unrelated():
    assert sorted(range(100, 0, -1))[0] == 1


def test_with_heavy_fixture(heavy_setup):
    assert sorted(range(100, 0, -1))[0] == 1
"""


def _pytest(folder: Path, work: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORK": str(work)}
    env.pop("PYTHONHASHSEED", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--perfpilot-instructions",
                           "--perfpilot-json", "report.json", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("gcc") is None, reason="needs valgrind and gcc")
@pytest.mark.slow
def test_call_phase_counts_are_saved_and_ten_percent_more_work_fails_only_that_test(tmp_path: Path) -> None:
    if instructions.pmu_status()[0]:
        pytest.skip("hardware counters here: the valgrind relaunch is not used")
    (tmp_path / "test_suite.py").write_text(SUITE)
    saved = _pytest(tmp_path, 3000, "--perfpilot-save")
    assert saved.returncode == 0, saved.stdout[-3000:] + saved.stderr[-3000:]
    assert "under valgrind" in saved.stderr  # the relaunch says what it does
    report = json.loads((tmp_path / "report.json").read_text())
    counts = {t["nodeid"].split("::")[1]: t["rounds"]["instructions"] for t in report["tests"]}
    assert all(len(c) == 1 for c in counts.values()), counts  # exact: one call is enough
    assert all("wall" not in t["rounds"] for t in report["tests"])  # time under valgrind means nothing
    # Call phase only: the fixture's 2 x 40,000 rounds (tens of millions) are not in it.
    assert counts["test_with_heavy_fixture"][0] < 2 * counts["test_unrelated"][0]
    assert counts["test_uses_the_library"][0] > 5 * counts["test_unrelated"][0]
    baselines = list((tmp_path / ".perfpilot").rglob("*.json"))
    assert len(baselines) == 1

    # The library does 10% more work: that test fails on instructions, the others do not.
    compared = _pytest(tmp_path, 3300, "--perfpilot-compare")
    assert compared.returncode == 1, compared.stdout[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    kinds = {f["nodeid"].split("::")[1]: f["kind"] for f in report["findings"] if f["metric"] == "instructions"}
    assert kinds == {"test_uses_the_library": "regression", "test_unrelated": "unchanged",
                     "test_with_heavy_fixture": "unchanged"}, kinds
    assert "1 failed, 2 passed" in compared.stdout


def test_an_exact_count_is_judged_by_its_ratio_and_a_missing_count_is_said() -> None:
    from perfpilot.pytest_plugin.instructions import finding

    assert finding("t", [1_000_000], [1_021_000], 0.02).kind == "regression"
    assert finding("t", [1_000_000], [1_019_000], 0.02).kind == "unchanged"
    assert finding("t", [1_000_000], [970_000], 0.02).kind == "improved"
    missing = finding("t", None, [1_000_000], 0.02)
    assert missing.kind == "insufficient" and "baseline has no instruction count" in missing.reason


def test_thresholds_take_instructions() -> None:
    from perfpilot.pytest_plugin.budgets import parse_thresholds

    assert parse_thresholds("instructions:2%,wall:10%") == {"instructions": 0.02, "wall": 0.10}
