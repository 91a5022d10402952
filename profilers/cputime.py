"""CPU seconds of a process tree: per-process accounting across ticks, and the exact
totals of a launched target (public API: the cpu and power collectors use it, and so
can a third-party collector).

Each process is identified by (pid, start time), so a reused pid is a new process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from perfpilot.profilers.procfs import CLK_TCK, STAT_CSTIME, STAT_CUTIME, STAT_STARTTIME, STAT_STIME, STAT_UTIME, proc_stat
from perfpilot.profilers.snapshot import ProcSample
from perfpilot.profilers.target import Target


@dataclass
class _ProcTimes:
    starttime: int
    first_user: float
    first_system: float
    user: float
    system: float


class TreeCpu:
    """CPU seconds of a process tree, from the per-tick :class:`ProcSample` records.

    ``baseline_existing`` makes processes already running at the first update count
    from that moment (attach); otherwise from their birth (launch).
    """

    def __init__(self, baseline_existing: bool) -> None:
        self.procs: dict[int, _ProcTimes] = {}
        self.gone_user = 0.0
        self.gone_system = 0.0
        self._baseline = baseline_existing

    def update(self, procs: Mapping[int, ProcSample]) -> float:
        """Take this tick's processes by pid; return CPU seconds used since the last update."""
        delta = 0.0
        for pid, proc in procs.items():
            rec = self.procs.get(pid)
            if rec is None or rec.starttime != proc.starttime:
                if rec is not None:
                    self._retire(pid)
                base_u, base_s = (proc.user_s, proc.system_s) if self._baseline else (0.0, 0.0)
                rec = self.procs[pid] = _ProcTimes(proc.starttime, base_u, base_s, base_u, base_s)
            delta += (proc.user_s - rec.user) + (proc.system_s - rec.system)
            rec.user, rec.system = proc.user_s, proc.system_s
        for pid in [p for p in self.procs if p not in procs]:
            self._retire(pid)
        self._baseline = False
        return delta

    def _retire(self, pid: int) -> None:
        rec = self.procs.pop(pid)
        self.gone_user += rec.user - rec.first_user
        self.gone_system += rec.system - rec.first_system

    def sampled_totals(self) -> tuple[float, float]:
        user = self.gone_user + sum(r.user - r.first_user for r in self.procs.values())
        system = self.gone_system + sum(r.system - r.first_system for r in self.procs.values())
        return user, system

    def alive_totals(self, exclude: int) -> tuple[float, float, int]:
        """Current own+reaped-children times of tracked processes still in /proc.

        For a launched target these are exactly what its rusage cannot contain: no
        process in the tree has waited for them yet.
        """
        user = system = 0.0
        count = 0
        for pid, rec in self.procs.items():
            if pid == exclude:
                continue
            fields = proc_stat(pid)
            if fields is None or int(fields[STAT_STARTTIME]) != rec.starttime:
                continue
            count += 1
            user += (int(fields[STAT_UTIME]) + int(fields[STAT_CUTIME])) / CLK_TCK
            system += (int(fields[STAT_STIME]) + int(fields[STAT_CSTIME])) / CLK_TCK
        return user, system, count


def tree_cpu_totals(target: Target, tree: TreeCpu) -> tuple[float, float, str]:
    """(user_s, system_s, how): exact rusage plus live descendants, or sampled."""
    exact = target.exact_totals() if target.launched else None
    if exact is None:
        user, system = tree.sampled_totals()
        return user, system, "sampled"
    alive_user, alive_system, _ = tree.alive_totals(exclude=target.pid)
    return exact["utime"] + alive_user, exact["stime"] + alive_system, "rusage"
