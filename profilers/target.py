"""The target: a process tree (the launched command or an attached PID, plus every
descendant), refreshed once per sampling tick and shared by all collectors.

Exact totals: when perfpilot launched the root, the session reaps it with
``os.wait4`` and hands its rusage to collectors as :attr:`Target.exit_rusage`. On Linux
that rusage covers the root and every descendant it (transitively) waited for. Orphans
that were reparented to perfpilot (it is a child subreaper while profiling) are reaped
too and their rusage summed in :attr:`Target.orphan_rusage`.
"""

from __future__ import annotations

import os
import resource
import threading
from dataclasses import dataclass, field
from typing import Any

import psutil

RUSAGE_FIELDS = ("utime", "stime", "maxrss_bytes", "minflt", "majflt", "inblock", "oublock", "nvcsw", "nivcsw")


def rusage_to_dict(ru: resource.struct_rusage) -> dict[str, float]:
    """A wait4/getrusage result as a plain dict in SI units (seconds, bytes)."""
    return {
        "utime": ru.ru_utime,
        "stime": ru.ru_stime,
        "maxrss_bytes": ru.ru_maxrss * 1024,  # Linux reports KiB
        "minflt": ru.ru_minflt,
        "majflt": ru.ru_majflt,
        # Linux counts block I/O in 512-byte units of read_bytes/write_bytes.
        "inblock": ru.ru_inblock,
        "oublock": ru.ru_oublock,
        "nvcsw": ru.ru_nvcsw,
        "nivcsw": ru.ru_nivcsw,
    }


def add_rusage(a: dict[str, float] | None, b: dict[str, float]) -> dict[str, float]:
    if a is None:
        return dict(b)
    out = {k: a[k] + b[k] for k in RUSAGE_FIELDS}
    out["maxrss_bytes"] = max(a["maxrss_bytes"], b["maxrss_bytes"])
    return out


@dataclass
class Target:
    """What collectors observe. Collectors read it; only the session mutates it."""

    pid: int
    launched: bool
    command: list[str] | None = None
    cwd: str = ""
    exit_rusage: dict[str, float] | None = None
    orphan_rusage: dict[str, float] | None = None
    ended: bool = False
    _procs: dict[int, psutil.Process] = field(default_factory=dict, repr=False)
    _live: list[psutil.Process] = field(default_factory=list, repr=False)
    _seen: set[int] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refresh(self) -> list[psutil.Process]:
        """Rescan the tree (called by the sampler once per tick)."""
        try:
            root = self._procs.get(self.pid) or psutil.Process(self.pid)
            children = root.children(recursive=True)
            found = [root, *children]
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            found = []
        live: list[psutil.Process] = []
        for proc in found:
            known = self._procs.get(proc.pid)
            # Keep the first Process object per pid so per-process state (cpu_percent,
            # create_time identity) survives; drop it if the pid was reused.
            if known is not None and known.is_running():
                live.append(known)
            else:
                self._procs[proc.pid] = proc
                live.append(proc)
            self._seen.add(proc.pid)
        with self._lock:
            self._live = live
        return live

    def processes(self) -> list[psutil.Process]:
        """The live tree as of the last refresh (root first)."""
        with self._lock:
            return list(self._live)

    @property
    def seen_pids(self) -> set[int]:
        """Every pid that was ever part of the tree."""
        return set(self._seen)

    def exact_totals(self) -> dict[str, float] | None:
        """Root's wait4 rusage plus reaped orphans, or None when attached/not ended."""
        if self.exit_rusage is None:
            return None
        if self.orphan_rusage is None:
            return dict(self.exit_rusage)
        return add_rusage(self.exit_rusage, self.orphan_rusage)

    def info(self) -> dict[str, Any]:
        return {"pid": self.pid, "launched": self.launched, "command": self.command, "cwd": self.cwd}
