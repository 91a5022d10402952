"""``--perfpilot-instructions``: per-test instruction counts of the call phase, for CI runners.

Wall and CPU time drift 1.6-2.5x between sessions on shared runners; the instructions a
test's call executes do not. With this option every test's call phase (not its fixtures'
setup or teardown) gets ``instructions`` in its record and baseline, compared with
``--perfpilot-compare-fail=instructions:2%`` (the default threshold when this option is
on). The count is deterministic, so one call per test is enough and a baseline from any
earlier session is comparable.

How it is counted (:mod:`perfpilot.profilers.instruction_regions`):

- hardware counters where the PMU allows (``perf_event_open`` on the pytest process,
  threads and child processes included): near-zero cost, and time is measured as usual;
- otherwise valgrind: the session is relaunched once under ``valgrind --tool=callgrind
  --instr-atstart=no`` with the same arguments, and client requests from a tiny C helper
  (compiled at launch with gcc against ``<valgrind/callgrind.h>``) count each call
  phase. Under valgrind, time means nothing: wall/CPU/energy are not recorded, nor
  judged, and extra rounds are not run. Processes a test starts are not counted (they are
  not traced), and pytest-xdist cannot be used. Cost: start-up and collection run on
  valgrind's JIT uninstrumented (a few times slower), each call phase ~50x slower, plus
  about a second per test to re-translate its code (see benchmarks/pytest_instructions.py).

``PYTHONHASHSEED`` is pinned to 0 (unless set) for the relaunched session, and recorded.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import statistics
import subprocess
import sys
from typing import Any, Mapping, Sequence

import pytest

from perfpilot.profilers import instruction_regions, instructions

METRIC = "instructions"
DEFAULT_THRESHOLD = 0.02
TIME_METRICS = ("wall", "cpu", "cpu_wait", "energy")
RELAUNCHED_ENV = "PERFPILOT_PYTEST_RELAUNCHED"


def wanted(config: pytest.Config) -> bool:
    return bool(config.getoption("perfpilot_instructions", False))


def relaunch(config: pytest.Config) -> int | None:
    """Run this session again under callgrind when counting needs valgrind; its exit code, or None to go on."""
    if not wanted(config) or hasattr(config, "workerinput") or os.environ.get(RELAUNCHED_ENV):
        return None
    if instructions.pmu_status()[0]:
        return None  # counted in this process, no relaunch
    try:
        instructions.choose_source("valgrind")
        if getattr(config.option, "numprocesses", None):
            raise instructions.InstructionsUnavailable(
                "--perfpilot-instructions under valgrind cannot count tests run by pytest-xdist workers",
                hint="run without -n")
        folder = instruction_regions.scratch_folder()
        argv = [sys.executable, "-m", "pytest", *config.invocation_params.args]
        command, env = instruction_regions.valgrind_command(argv, folder, os.environ)
    except instructions.PerfpilotError as exc:
        raise pytest.UsageError(f"perfpilot: {exc}") from None
    env[RELAUNCHED_ENV] = "1"
    sys.stderr.write("perfpilot: no hardware counters here; counting instructions per test under valgrind "
                     "(callgrind): this session runs again under it, several times slower\n")
    sys.stderr.flush()
    try:
        return subprocess.call(command, env=env, cwd=config.invocation_params.dir)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Counting:
    """Per-test counts in this session (one region per call phase)."""

    def __init__(self, counter: Any, why: str) -> None:
        self.counter = counter
        self.source = counter.source
        self.why = why
        self.pinned = instructions.pinned_env(os.environ) if self.source == "valgrind" else {}

    @property
    def under_valgrind(self) -> bool:
        return self.source == "valgrind"

    def start(self) -> None:
        # The cyclic GC runs when allocations since the last run pass a threshold, which
        # depends on everything the process did before (pytest's own work included): a
        # collection landing in one session's call phase and not the next added up to
        # 2.6x to a toolz test's count. As pytest-codspeed does: collect, then no GC in the call.
        self.gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        self.counter.start()

    def stop(self, record: Any) -> None:
        count = self.counter.stop(record.nodeid)
        if self.gc_was_enabled:
            gc.enable()
        record.add({METRIC: count})

    def keep(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """What a round records: under valgrind, no time (it means nothing there)."""
        if not self.under_valgrind:
            return dict(metrics)
        return {k: v for k, v in metrics.items() if k not in TIME_METRICS}

    def note(self) -> str:
        pins = ", ".join(f"{k}={v}" for k, v in self.pinned.items())
        text = f"instructions per test from {self.source}: {self.why}" + (f" ({pins})" if pins else "")
        if self.under_valgrind:
            text += "; under valgrind, times are not recorded or judged and tests run once"
        return text


def counting(config: pytest.Config) -> Counting | None:
    """The session's counter when ``--perfpilot-instructions`` is on; a usage error says why none works."""
    if not wanted(config):
        return None
    counter, why = instruction_regions.region_counter()
    if counter is None:
        raise pytest.UsageError(f"perfpilot: --perfpilot-instructions: cannot count instructions here: {why}")
    return Counting(counter, why)


def adjust_options(options: Any, counts: Counting, spec_given: bool) -> Any:
    """Thresholds and rounds for a counting session: instructions judged (2% unless given); no time under valgrind."""
    thresholds = dict(options.thresholds)
    if not spec_given:
        thresholds[METRIC] = DEFAULT_THRESHOLD
    if counts.under_valgrind:
        thresholds = {k: v for k, v in thresholds.items() if k not in TIME_METRICS} or {METRIC: DEFAULT_THRESHOLD}
        return dataclasses.replace(options, thresholds=thresholds, rounds=1)
    return dataclasses.replace(options, thresholds=thresholds)


def finding(nodeid: str, base: Sequence[float] | None, current: Sequence[float] | None, threshold: float) -> Any:
    """A test's instructions against its baseline: exact figures, so the ratio itself decides.

    Run to run, a test's count differs by parts in 100,000 (valgrind) or less than a
    percent (hardware counters, interrupts and page faults), far below any threshold one
    would set, so no test of significance is needed: worse by more than ``threshold`` is a
    regression, better by more is an improvement.
    """
    from perfpilot.pytest_plugin.compare import Finding

    if not base or not current:
        missing = "the baseline has" if not base else "this run has"
        return Finding(nodeid, METRIC, "insufficient",
                       reason=f"{missing} no instruction count for this test (saved without --perfpilot-instructions?)")
    a, b = statistics.median(base), statistics.median(current)
    ratio = b / a if a > 0 else float("inf")
    verdict = {"metric": METRIC, "median_a": a, "median_b": b, "ratio": ratio, "threshold": threshold,
               "runs_a": len(base), "runs_b": len(current), "regressed": ratio > 1 + threshold,
               "improved": ratio < 1 - threshold, "rule": "exact count: the ratio against the threshold"}
    if ratio > 1 + threshold:
        return Finding(nodeid, METRIC, "regression", verdict)
    if ratio < 1 - threshold:
        return Finding(nodeid, METRIC, "improved", verdict)
    return Finding(nodeid, METRIC, "unchanged", verdict)


def summary_lines(records: Sequence[Any], most: int) -> list[tuple[str, dict[str, bool]]]:
    """The terminal summary's list of the tests with the most call-phase instructions."""
    counted = [r for r in records if r.rounds.get(METRIC)]
    if most <= 0 or not counted:
        return []
    out: list[tuple[str, dict[str, bool]]] = [("", {}), (f"most instructions ({min(most, len(counted))} of "
                                                         f"{len(counted)} tests, call phase):", {"bold": True})]
    for record in sorted(counted, key=lambda r: r.figure(METRIC) or 0.0, reverse=True)[:most]:
        out.append((f"  {record.figure(METRIC):>15,.0f}  {record.nodeid}", {}))
    return out
