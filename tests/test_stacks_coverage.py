"""Stack coverage through a launcher that execs Python, on a loaded machine, with the real
py-spy: every run covered, and as many samples as py-spy alone takes on the same command
(interleaved in this test). benchmarks/stack_coverage.py runs the 20-pair study."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _benchmark():
    spec = importlib.util.spec_from_file_location("stack_coverage_benchmark", ROOT / "benchmarks" / "stack_coverage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_launcher_exec_under_load_is_covered_like_py_spy_alone(tmp_path) -> None:
    bench = _benchmark()
    cmd = bench.command(work=10_000_000)  # ~1.9 s on an idle core, longer under the busy loops
    with bench.busy_loops():
        ours, alone = bench.study(3, False, cmd, verbose=False)
        with_imports = [bench.run_perfpilot(cmd, tmp_path, imports=True) for _ in range(3)]
    for run in ours + with_imports:
        assert run.wall_s >= 1.0, run
        # Of the run's wall time, the launcher's own work included; and of the time Python ran.
        assert run.coverage_pct >= 95.0, (run, ours, with_imports)
        assert run.python_coverage_pct >= 95.0, run
        assert run.note is None, run
    # the 80-column terminal report prints the hottest function's qualified name whole
    hottest = "SyntheticTokenizer.fold_every_statement_of_the_workload"
    assert len(hottest) > 40
    assert all(hottest in run.terminal for run in ours + with_imports), ours[0].terminal
    for runs in (ours, with_imports):
        figures = bench.summary(runs, alone)
        assert 0.85 <= figures["rate_ratio"] <= 1.15, (figures, runs, alone)
