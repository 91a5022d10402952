"""Per-region instruction counts inside one process under callgrind (what per-test counts rest on)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perfpilot.profilers import instruction_regions

PROGRAM = """\
import json
from perfpilot.profilers.instruction_regions import region_counter

counter, why = region_counter()

def work(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

counts = []
for n in (2000, 2200, 2000, 2200):
    counter.start()
    work(n)
    counts.append(counter.stop(f"work {n}"))
print(json.dumps({"source": counter.source, "counts": counts}))
"""


def _run(program: Path, tmp_path: Path, name: str) -> dict:
    folder = tmp_path / name
    folder.mkdir()
    command, env = instruction_regions.valgrind_command([sys.executable, str(program)], folder, dict(os.environ))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("gcc") is None, reason="needs valgrind and gcc")
@pytest.mark.slow
def test_regions_count_only_their_code_and_repeat_exactly_across_processes(tmp_path: Path) -> None:
    program = tmp_path / "regions.py"
    program.write_text(PROGRAM)
    first, second = _run(program, tmp_path, "one"), _run(program, tmp_path, "two")
    assert first["source"] == "valgrind"
    counts = first["counts"]
    # Only the region: 2000 loop rounds are ~1M instructions, far below the interpreter's start-up (>20M).
    assert all(500_000 < c < 5_000_000 for c in counts), counts
    assert counts[1] > counts[0] * 1.05 and counts[3] > counts[2] * 1.05  # 10% more work reads higher
    # Across processes (sessions), the same regions give the same counts, exactly or nearly.
    for a, b in zip(counts, second["counts"]):
        assert abs(a - b) / a < 0.001, (counts, second["counts"])


def test_helper_build_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc, no cc
    with pytest.raises(instruction_regions.HelperBuildFailed, match="needs a C compiler"):
        instruction_regions.build_helper(tmp_path)


def test_no_region_counter_without_valgrind_or_pmu_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(instruction_regions.HELPER_ENV, raising=False)
    counter, why = instruction_regions.region_counter()
    if counter is None:
        assert why and "\n" not in why
    else:
        assert counter.source == "pmu"
