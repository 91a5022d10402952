"""`instructions` through the CLI: profile --instructions, compare --metric instructions, plugins."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from perfpilot.profilers import metrics

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "examples" / "compare"

needs_valgrind = pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
# The few-runs rule for deterministic metrics is the verdict engine's (profilers/stats.py).
needs_rule = pytest.mark.skipif(not hasattr(metrics, "is_deterministic"),
                                reason="the engine's rule for deterministic metrics has not landed yet")


def test_plugins_lists_both_sources_and_why_not(perfpilot_cli) -> None:
    result = perfpilot_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout) if row["kind"] == "instructions"}
    assert set(rows) == {"pmu", "valgrind"}
    for row in rows.values():
        assert row["reason"] and "\n" not in row["reason"]
    assert rows["valgrind"]["available"] == (shutil.which("valgrind") is not None)


@needs_valgrind
@pytest.mark.slow
def test_profile_instructions_adds_a_labelled_count(perfpilot_cli, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = perfpilot_cli("profile", "--instructions", "--no-stacks", "-o", str(out), "--",
                           sys.executable, "-S", "-c", "print(sum(range(1000)))")
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["instructions_source"] == "valgrind" and summary["instructions"] > 1_000_000
    assert "wall_s" in summary  # the timed run's own figure, from a separate run
    assert f"{summary['instructions']:,} instructions (valgrind, PYTHONHASHSEED=0)" in result.stderr


def _compare(perfpilot_cli, tmp_path: Path, a: str, b: str, *more: str) -> dict:
    out = tmp_path / "verdict.json"
    # No warm-up: the example imports no module of its own, so no bytecode is written on a first run.
    result = perfpilot_cli("compare", "--metric", "instructions", "--warmup", "0", "-q", "--json", str(out), *more,
                           "--", a, b, cwd=COMPARE, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


@needs_valgrind
@needs_rule
@pytest.mark.slow
def test_compare_instructions_decides_slow_fast_in_three_runs_and_aa_is_no_change(perfpilot_cli, tmp_path) -> None:
    python = Path(sys.executable)
    # -S: no site import, to keep valgrind's start-up short (the example needs the standard library only)
    slow = f"{python} -S workload.py 1000"
    faster = _compare(perfpilot_cli, tmp_path, slow, f"{python} -S workload_fast.py 1000", "--save",
                      str(tmp_path / "runs"))
    verdict = faster["verdicts"]["instructions"]
    assert faster["runs"] <= 3 and verdict["verdict"] == "smaller", verdict
    assert verdict["ratio"] < 0.99
    same = _compare(perfpilot_cli, tmp_path, slow, slow)
    assert same["runs"] <= 3 and same["verdicts"]["instructions"]["verdict"] == "no change", same["verdicts"]
    # A counting run's wall time means nothing: none is reported.
    saved = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").rglob("*.json"))]
    assert len(saved) == 2 * faster["runs"]
    assert all("wall_s" not in p["summary"] and p["summary"]["instructions_source"] == "valgrind" for p in saved)


def test_profile_instructions_without_any_source_is_one_line_before_the_run(perfpilot_cli, tmp_path: Path) -> None:
    if instructions_pmu_ok():
        pytest.skip("hardware counters here: a source is always available")
    out = tmp_path / "run.json"
    result = perfpilot_cli("profile", "--instructions", "--no-stacks", "-o", str(out), "--",
                           sys.executable, "-c", "open('ran', 'w')", cwd=tmp_path, env={"PATH": str(tmp_path)})
    assert result.returncode == 125, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot count instructions here" in lines[0] and "valgrind" in lines[0], lines
    assert not (tmp_path / "ran").exists() and not out.exists()  # refused before the timed run


def instructions_pmu_ok() -> bool:
    from perfpilot.profilers.instructions import pmu_status

    return pmu_status()[0]
