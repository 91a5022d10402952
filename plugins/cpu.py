"""CPU collector: process-tree user/system time, utilisation, context switches,
and the machine's per-core load, steal and iowait.

Totals (``summary``):

``cpu_user_s`` / ``cpu_system_s``
    Launched target: exact, from the rusage the session reaped with ``os.wait4``
    (the root and every descendant it waited for, plus orphans perfpilot reaped as
    subreaper) plus descendants still alive at the end (their own times and those of
    children they reaped). Attached target (``--pid``): the sum over every process
    seen of its CPU time since attach, sampled (the last tick before a process exits
    is the last we know of it).
``cpu_utilization_mean_pct``
    total CPU seconds / wall seconds x 100 (100 = one core busy).
``cpu_ctx_switches_voluntary`` / ``cpu_ctx_switches_involuntary``
    exact from rusage when launched, else sampled.
``cpu_utilization_peak_pct``, ``cpu_processes_max``, ``cpu_system_busy_mean_pct``,
``cpu_steal_mean_pct``, ``cpu_iowait_mean_pct``, ``cpu_load_1m_max``.

Series: ``cpu.utilization_pct`` (tree; 100 = one core), ``cpu.processes``,
``cpu.system_busy_pct`` (machine; 100 = every core), ``cpu.core<N>_busy_pct``,
``cpu.steal_pct``, ``cpu.iowait_pct``, ``cpu.load_1m`` (runnable tasks, 1-minute
average), ``cpu.ctx_switches_voluntary_per_s`` / ``..._involuntary_per_s`` (tree).

Cost: one read of ``/proc/<pid>/stat`` per process per tick (a kept-open descriptor
re-read with ``pread``, not psutil, which costs ~3x more per call; see
:mod:`perfpilot.profilers.procfs`), shared with the memory, io and power collectors
through the tick's :class:`~perfpilot.profilers.snapshot.TreeSnapshot`; ``/proc/<pid>/status`` for context switches only once a second.
See ``benchmarks/sampler_cost.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from perfpilot import hookimpl
from perfpilot.config import Settings
from perfpilot.profilers.counters import TreeCounters, rates
from perfpilot.profilers.cputime import TreeCpu, tree_cpu_totals
from perfpilot.profilers.procfs import STAT_STARTTIME, ProcFiles, proc_stat, read_file
from perfpilot.profilers.target import Target

CTX_INTERVAL_S = 1.0
CPU_COUNT = os.cpu_count() or 1


def proc_status_ctx(pid: int, files: ProcFiles | None = None) -> tuple[int, int] | None:
    """(voluntary, involuntary) context switches from ``/proc/<pid>/status``."""
    data = files.read(pid, "status") if files else read_file(f"/proc/{pid}/status")
    if data is None:
        return None
    vol = invol = 0
    for line in data.splitlines()[-4:]:  # the ctxt lines close the file
        if line.startswith(b"voluntary_ctxt_switches"):
            vol = int(line.split()[1])
        elif line.startswith(b"nonvoluntary_ctxt_switches"):
            invol = int(line.split()[1])
    return vol, invol


def _system_times(files: ProcFiles | None = None) -> list[list[int]]:
    """Rows of ``/proc/stat`` ``cpu`` lines: [total, then cpu0, cpu1...] as jiffies."""
    # Only the cpu lines (first in the file) are wanted; the "intr" line after them
    # can be tens of kilobytes on big machines.
    size = 256 + 160 * CPU_COUNT
    data = (files.read(0, "stat", size) if files else read_file("/proc/stat", size)) or b""
    rows = []
    for line in data.splitlines():
        if not line.startswith(b"cpu"):
            break
        rows.append([int(x) for x in line.split()[1:]])
    return rows


def _load_1m(files: ProcFiles) -> float:
    data = files.read(0, "loadavg") or b"0"
    return float(data.split(None, 1)[0])


class CpuCollector:
    name = "cpu"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.target: Target | None = None
        self.tree = TreeCpu(baseline_existing=False)
        self._t_start = 0.0
        self._last_now: float | None = None
        self._sys_prev: list[list[int]] | None = None
        self._ctx_counts = TreeCounters(2, baseline_existing=False)
        self._ctx_last_now: float | None = None
        self._util: list[float] = []
        self._busy: list[float] = []
        self._steal: list[float] = []
        self._iowait: list[float] = []
        self._load_max = 0.0
        self._procs_max = 0

    def available(self) -> tuple[bool, str]:
        if not os.path.exists("/proc/self/stat"):
            return False, "needs Linux /proc (not found on this system)"
        return True, ""

    def start(self, target: Target) -> None:
        self.target = target
        self.tree = TreeCpu(baseline_existing=not target.launched)
        self._ctx_counts = TreeCounters(2, baseline_existing=not target.launched)
        self._t_start = target.started_at if target.started_at is not None else time.monotonic()
        self._sys_prev = _system_times(target.proc_files)

    def sample(self, now: float) -> dict[str, float]:
        assert self.target is not None
        procs = self.target.snapshot(now).procs
        pids = list(procs)
        used = self.tree.update(procs)
        out: dict[str, float] = {"cpu.processes": float(len(pids))}
        self._procs_max = max(self._procs_max, len(pids))
        if self._last_now is not None and now > self._last_now:
            util = 100.0 * used / (now - self._last_now)
            out["cpu.utilization_pct"] = round(util, 2)
            self._util.append(util)
        self._last_now = now
        out.update(self._system(now))
        if self._ctx_last_now is None or now - self._ctx_last_now >= CTX_INTERVAL_S:
            out.update(self._ctx(now, pids))
        return out

    def _system(self, now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        assert self.target is not None
        files = self.target.proc_files
        rows = _system_times(files)
        prev, self._sys_prev = self._sys_prev, rows
        if prev and len(prev) == len(rows):
            for index, (a, b) in enumerate(zip(prev, rows)):
                d = [y - x for x, y in zip(a, b)]
                total = sum(d[:8])  # user..steal; guest time is already inside user
                if total <= 0:
                    continue
                busy = 100.0 * (total - d[3] - d[4]) / total  # minus idle and iowait
                if index == 0:
                    steal = 100.0 * d[7] / total if len(d) > 7 else 0.0
                    iowait = 100.0 * d[4] / total
                    out["cpu.system_busy_pct"] = round(busy, 1)
                    out["cpu.steal_pct"] = round(steal, 2)
                    out["cpu.iowait_pct"] = round(iowait, 2)
                    self._busy.append(busy)
                    self._steal.append(steal)
                    self._iowait.append(iowait)
                else:
                    out[f"cpu.core{index - 1}_busy_pct"] = round(busy, 1)
        load = _load_1m(files)
        self._load_max = max(self._load_max, load)
        out["cpu.load_1m"] = load
        return out

    def _ctx(self, now: float, pids: list[int]) -> dict[str, float]:
        assert self.target is not None
        files = self.target.proc_files
        read: dict[int, tuple[int, tuple[int, int]]] = {}
        for pid in pids:
            rec = self.tree.procs.get(pid)
            ctx = proc_status_ctx(pid, files)
            if rec is not None and ctx is not None:
                read[pid] = (rec.starttime, ctx)
        delta = self._ctx_counts.update(read)
        last, self._ctx_last_now = self._ctx_last_now, now
        if last is None:
            return {}
        return rates(("cpu.ctx_switches_voluntary_per_s", "cpu.ctx_switches_involuntary_per_s"), delta, now - last)

    def stop(self) -> dict[str, Any]:
        assert self.target is not None
        target = self.target
        user, system, how = tree_cpu_totals(target, self.tree)
        end = target.ended_at if target.ended_at is not None else time.monotonic()
        wall = max(end - self._t_start, 1e-9)
        out: dict[str, Any] = {
            "cpu_user_s": user,
            "cpu_system_s": system,
            "cpu_utilization_mean_pct": 100.0 * (user + system) / wall,
            "cpu_processes_max": self._procs_max,
        }
        exact = target.exact_totals() if target.launched else None
        if exact is not None:
            vol, invol = exact["nvcsw"], exact["nivcsw"]
            for pid, rec in self.tree.procs.items():
                if pid == target.pid:
                    continue
                fields = proc_stat(pid)
                ctx = proc_status_ctx(pid) if fields and int(fields[STAT_STARTTIME]) == rec.starttime else None
                if ctx:
                    vol += ctx[0]
                    invol += ctx[1]
            out["cpu_ctx_switches_voluntary"] = int(vol)
            out["cpu_ctx_switches_involuntary"] = int(invol)
        else:
            out["cpu_ctx_switches_voluntary"] = int(self._ctx_counts.total[0])
            out["cpu_ctx_switches_involuntary"] = int(self._ctx_counts.total[1])
        if self._util:
            out["cpu_utilization_peak_pct"] = max(self._util)
        if self._busy:
            out["cpu_system_busy_mean_pct"] = sum(self._busy) / len(self._busy)
            out["cpu_steal_mean_pct"] = sum(self._steal) / len(self._steal)
            out["cpu_iowait_mean_pct"] = sum(self._iowait) / len(self._iowait)
        out["cpu_load_1m_max"] = self._load_max
        return out


@hookimpl
def perfpilot_register_collectors(register: Any) -> None:
    register(CpuCollector)
