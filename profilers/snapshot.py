"""One tick's view of the target's process tree, read once and shared by every collector.

Every collector sampled at the same ``now`` calls :meth:`Target.snapshot(now)
<perfpilot.profilers.target.Target.snapshot>` and gets the same :class:`TreeSnapshot`:
``/proc/<pid>/stat`` of each process in the tree, read once (through descriptors kept
open, see :mod:`perfpilot.profilers.procfs`) and parsed into :class:`ProcSample` records.
This is public API: a third-party collector uses it exactly as the built-in cpu, memory,
io and power collectors do, and none of them depends on another being enabled.

``TreeSnapshot.files`` is the run's :class:`~perfpilot.profilers.procfs.ProcFiles`, for
the other per-process or machine-wide files a collector reads (``status``, ``io``,
``/proc/meminfo``...): one set of kept-open descriptors per run, closed with the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

from perfpilot.profilers.procfs import (CLK_TCK, PAGE_SIZE, STAT_MAJFLT, STAT_MINFLT, STAT_PPID, STAT_RSS,
                                       STAT_STARTTIME, STAT_STIME, STAT_UTIME, ProcFiles, stat_fields)


class ProcSample(NamedTuple):
    """One process of the tree at one tick (``/proc/<pid>/stat``). A NamedTuple: one is
    built per process per tick, and a tuple is the cheapest typed record to build."""

    pid: int
    ppid: int
    starttime: int  # clock ticks after boot: (pid, starttime) names one process, a reused pid another
    user_s: float
    system_s: float
    rss_bytes: int
    minor_faults: int
    major_faults: int

    @classmethod
    def from_fields(cls, pid: int, fields: list[bytes]) -> ProcSample:
        """From :func:`~perfpilot.profilers.procfs.stat_fields` output."""
        return cls(pid, int(fields[STAT_PPID]), int(fields[STAT_STARTTIME]), int(fields[STAT_UTIME]) / CLK_TCK,
                   int(fields[STAT_STIME]) / CLK_TCK, int(fields[STAT_RSS]) * PAGE_SIZE,
                   int(fields[STAT_MINFLT]), int(fields[STAT_MAJFLT]))

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


@dataclass(frozen=True)
class TreeSnapshot:
    """The tree's processes at ``now`` (those that exited since the tree scan are absent)."""

    now: float
    procs: Mapping[int, ProcSample]
    files: ProcFiles

    @classmethod
    def read(cls, now: float, pids: Iterable[int], files: ProcFiles) -> TreeSnapshot:
        """Read ``/proc/<pid>/stat`` of each pid once; close descriptors of pids gone."""
        procs: dict[int, ProcSample] = {}
        wanted = list(pids)
        for pid in wanted:
            try:
                fields = stat_fields(files.read(pid, "stat"))
                if fields is not None:
                    procs[pid] = ProcSample.from_fields(pid, fields)
            except (ValueError, IndexError):  # a torn or malformed read: the next tick has it
                continue
        files.retain(set(wanted))
        return cls(now, procs, files)

    @property
    def rss_bytes(self) -> int:
        """The tree's summed resident memory."""
        return sum(p.rss_bytes for p in self.procs.values())
