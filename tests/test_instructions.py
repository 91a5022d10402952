"""Instruction counts of real process trees (valgrind here; hardware counters where the PMU allows)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from perfpilot.errors import ConfigError
from perfpilot.profilers import instructions
from perfpilot.profilers.instructions import CountingFailed, InstructionsUnavailable

needs_valgrind = pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")

# A Python child that runs a Python grandchild (os.spawnv: fork + exec, no subprocess
# import, to keep valgrind's ~50x slowdown affordable); both do `n` rounds of work.
TREE = """\
import os, sys
n = int(sys.argv[1])
s = 0
for i in range(n):
    s += i * i
if sys.argv[2:] == ["spawn"]:
    sys.exit(os.spawnv(os.P_WAIT, sys.executable, [sys.executable, "-S", __file__, str(n)]))
"""


@pytest.fixture(scope="module")
def tree_counts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[instructions.InstructionCount]]:
    """Two counting runs at n = 4000 with one at 10% more work between them."""
    program = tmp_path_factory.mktemp("tree") / "tree.py"
    program.write_text(TREE)
    counts: dict[int, list[instructions.InstructionCount]] = {4000: [], 4400: []}
    for n in (4000, 4400, 4000):
        counts[n].append(instructions.count_command([sys.executable, "-S", str(program), str(n), "spawn"],
                                                    source="valgrind", timeout=300))
    return counts


@needs_valgrind
@pytest.mark.slow
def test_valgrind_counts_the_child_and_the_grandchild(tree_counts) -> None:
    for count in tree_counts[4000]:
        assert count.source == "valgrind" and count.exit_code == 0
        assert len(count.processes) == 2, count.processes
        child, grandchild = sorted(count.processes, key=lambda p: p["pid"])
        assert "spawn" in child["command"] and "spawn" not in grandchild["command"]
        # Both did the same loop after a start-up of tens of millions of instructions.
        assert child["instructions"] > 10_000_000 and grandchild["instructions"] > 10_000_000
        assert count.instructions == child["instructions"] + grandchild["instructions"]
        assert count.pinned_env == {"PYTHONHASHSEED": "0"}


@needs_valgrind
@pytest.mark.slow
def test_two_runs_agree_within_a_thousandth_and_more_work_reads_higher_every_time(tree_counts) -> None:
    first, second = (c.instructions for c in tree_counts[4000])
    assert abs(first - second) / first < 0.001, (first, second)
    for more in tree_counts[4400]:
        for base in tree_counts[4000]:
            # 10% more loop work: the rise must clear the run-to-run spread by far.
            assert more.instructions > base.instructions * 1.001, (more.instructions, base.instructions)


def test_pmu_refusal_is_one_line_and_valgrind_takes_over() -> None:
    ok, reason = instructions.pmu_status()
    if ok:
        pytest.skip("this machine exposes hardware counters; see test_pmu_counts_children")
    assert reason and "\n" not in reason and "perf_event_open" in reason
    if shutil.which("valgrind"):
        assert instructions.choose_source("auto") == "valgrind"
    with pytest.raises(InstructionsUnavailable, match="pmu is unavailable"):
        instructions.choose_source("pmu")


def test_pmu_counts_children(tmp_path: Path) -> None:
    ok, reason = instructions.pmu_status()
    if not ok:
        pytest.skip(f"no hardware counters here: {reason}")
    program = tmp_path / "tree.py"
    program.write_text(TREE)
    alone = instructions.count_command([sys.executable, "-S", str(program), "200000"], source="pmu")
    tree = instructions.count_command([sys.executable, "-S", str(program), "200000", "spawn"], source="pmu")
    assert alone.source == "pmu" and alone.instructions > 1_000_000
    assert tree.instructions > alone.instructions * 1.7  # the grandchild's loop counted too


def test_unknown_source_and_missing_command_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown instructions source"):
        instructions.choose_source("papi")
    if shutil.which("valgrind") or instructions.pmu_status()[0]:
        with pytest.raises(CountingFailed, match="command not found: no-such-program-xyz"):
            instructions.count_command(["no-such-program-xyz"])


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_launchers_resolve_to_the_real_interpreter(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}
    script = _script(tmp_path / "tool", "#!/usr/bin/env python3\nprint('hi')\n")
    argv, _notes = instructions.resolve_command(["tool", "--flag"], env, str(tmp_path))
    assert argv[1:] == [str(script), "--flag"]
    assert Path(argv[0]).name.startswith("python")
    if instructions._shebang(shutil.which(argv[0], path=env["PATH"]) or argv[0]) is not None:
        assert any("pyenv" in note for note in _notes)  # an unresolvable shim is said, not hidden
    # A shell wrapper posing as python is kept, and the note says valgrind would count the shell.
    _script(tmp_path / "python9", "#!/bin/sh\nexec python3 \"$@\"\n")
    argv, notes = instructions.resolve_command(["python9", "x.py"], env, str(tmp_path))
    assert argv == ["python9", "x.py"] and "counts the shell too" in notes[0]


@pytest.mark.skipif(shutil.which("pyenv") is None, reason="no pyenv here")
def test_pyenv_shim_resolves_to_what_it_would_run() -> None:
    shim = next((p for p in (shutil.which("python3"), shutil.which("python")) if p and "/shims/" in p), None)
    if shim is None:
        pytest.skip("python3 on PATH is not a pyenv shim")
    argv, notes = instructions.resolve_command([Path(shim).name, "-c", "pass"], dict(os.environ))
    assert "/shims/" not in argv[0] and os.path.isfile(argv[0]) and instructions._shebang(argv[0]) is None
    assert notes and "resolved pyenv shim" in notes[0]


@needs_valgrind
@pytest.mark.slow
def test_a_counting_profile_has_instructions_and_no_wall_time(tmp_path: Path) -> None:
    profile = instructions.counting_profile([sys.executable, "-S", "-c", "import sys; sys.exit(3)"],
                                            source="valgrind", timeout=120)
    assert profile.exit_code == 3
    assert isinstance(profile.summary["instructions"], int) and profile.summary["instructions_source"] == "valgrind"
    assert "wall_s" not in profile.summary
    assert profile.annotations["instructions"]["pinned_env"] == {"PYTHONHASHSEED": "0"}


def test_optimising_instructions_keeps_a_wall_guard_unless_told_otherwise() -> None:
    assert instructions.default_guards("instructions", {}) == {"wall": instructions.DEFAULT_WALL_GUARD}
    assert instructions.default_guards("instructions", {"peak_rss": "+5%"}) == {"peak_rss": "+5%", "wall": "+10%"}
    assert instructions.default_guards("instructions", {"wall": "+25%"}) == {"wall": "+25%"}
    assert instructions.default_guards("instructions", {"wall": "off"}) == {}
    assert instructions.default_guards("cpu", {"peak_rss": "+5%"}) == {"peak_rss": "+5%"}


def test_measured_run_counts_only_when_instructions_is_asked_for() -> None:
    from perfpilot.profilers.profile import Profile

    timed = Profile(summary={"wall_s": 1.0}, target={"exit_code": 0})
    assert instructions.measured_run(["wall", "cpu"], ["true"], timed=lambda: timed) is timed
    failed = Profile(summary={"wall_s": 1.0}, target={"exit_code": 2})
    # A failed timed run is not counted: the comparison reports the failure instead.
    assert "instructions" not in instructions.measured_run(["instructions", "wall"], ["false"],
                                                           timed=lambda: failed).summary


@needs_valgrind
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
@pytest.mark.slow
def test_a_sandboxed_command_is_counted_inside_its_sandbox(tmp_path: Path) -> None:
    from perfpilot.agent.sandbox import Sandbox

    sandbox = Sandbox.create("auto")
    if not sandbox.active:
        pytest.skip(f"no working sandbox here: {sandbox.note}")
    (tmp_path / "work.py").write_text("print(sum(i * i for i in range(2000)))\n")
    argv = sandbox.wrap([sys.executable, "-S", "work.py"], tmp_path)
    count = instructions.count_command(argv, cwd=str(tmp_path), source="valgrind", timeout=300, capture_output=True)
    # valgrind ran inside the sandbox (outside, it cannot follow bwrap): the one process counted is Python.
    assert count.exit_code == 0 and len(count.processes) == 1, (count.processes, count.notes)
    assert count.processes[0]["command"].split()[0] == sys.executable and count.instructions > 10_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work.py"]  # its files went, and were removed
