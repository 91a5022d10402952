"""The target: a process tree (the launched command or an attached PID, plus every
descendant), refreshed once per sampling tick and shared by all collectors, with the
tick's one ``/proc/<pid>/stat`` read of the tree (:meth:`Target.snapshot`, see
:mod:`perfpilot.profilers.snapshot`).

Exact totals: when perfpilot launched the root, the session reaps it with
``os.wait4`` and hands its rusage to collectors as :attr:`Target.exit_rusage`. On Linux
that rusage covers the root and every descendant it (transitively) waited for. Orphans
that were reparented to perfpilot (it is a child subreaper while profiling) are reaped
too and their rusage summed in :attr:`Target.orphan_rusage`. Just before reaping, the
session reads the zombie's ``/proc/<pid>/io`` (:attr:`Target.exit_io`,
:attr:`Target.orphan_io`), which like rusage covers every waited-for descendant.

Tree scans are incremental (see :class:`_PidTable`): psutil's ``children()`` rereads
every ``/proc/<pid>/stat`` on the host each tick, which alone cost ~2% of a core at 10 Hz
with 70 host processes and grows with the host, not the target.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from perfpilot.profilers.procfs import ProcFiles, parse_io, read_file
from perfpilot.profilers.snapshot import TreeSnapshot

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


def own_hwm_bytes() -> int | None:
    """This process's peak RSS (``VmHWM``), bytes; None where /proc has no such line."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def add_rusage(a: dict[str, float] | None, b: dict[str, float]) -> dict[str, float]:
    if a is None:
        return dict(b)
    out = {k: a[k] + b[k] for k in RUSAGE_FIELDS}
    out["maxrss_bytes"] = max(a["maxrss_bytes"], b["maxrss_bytes"])
    return out


IO_FIELDS = ("rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes")


def read_proc_io(pid: int) -> dict[str, float] | None:
    """``/proc/<pid>/io`` as a dict (None when unreadable or gone)."""
    return parse_io(read_file(f"/proc/{pid}/io"))


def add_io(a: dict[str, float] | None, b: dict[str, float]) -> dict[str, float]:
    if a is None:
        return dict(b)
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in IO_FIELDS}


def _read_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return int(data[data.rindex(b")") + 2:].split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return None


def _read_status_ids(pid: int) -> tuple[int, int] | None:
    """(Tgid, PPid) from ``/proc/<pid>/status``; works for thread ids too."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            data = fh.read()
        tgid = int(data.split(b"\nTgid:", 1)[1].split(None, 1)[0])
        ppid = int(data.split(b"\nPPid:", 1)[1].split(None, 1)[0])
        return tgid, ppid
    except (OSError, ValueError, IndexError):
        return None


class _PidTable:
    """pid -> ppid for the whole host, kept up to date cheaply.

    Each tick reads ``/proc/loadavg``, whose last field is the last pid the kernel
    handed out: the processes created since the previous tick are the pids in between,
    probed one by one (thread ids come from the same counter and are skipped by their
    ``Tgid``). A full ``listdir('/proc')`` runs once a second, or when the counter
    wrapped or jumped too far, to drop exited pids and re-read the parents of
    reparented ones; until then an exited pid may linger here (its /proc files are
    gone, which readers handle). Measured on a busy 2-vCPU VM with 180 processes: the
    listing costs ~300 us cold, so listing every tick was ~0.3% of a core at 10 Hz by
    itself, and psutil's ``children(recursive=True)`` ~2%.
    """

    FULL_SCAN_S = 1.0
    MAX_PROBE = 128

    def __init__(self) -> None:
        self.ppid: dict[int, int] = {}
        self.children: dict[int, list[int]] = {}
        self._last_pid: int | None = None
        self._next_full = 0.0
        self.full_scans = 0

    @staticmethod
    def _read_last_pid() -> int | None:
        try:
            with open("/proc/loadavg", "rb") as fh:
                return int(fh.read().split()[4])
        except (OSError, ValueError, IndexError):
            return None

    def update(self) -> set[int]:
        """Rescan; returns the pids that are new since the last scan."""
        now = time.monotonic()
        last = self._read_last_pid()
        prev, self._last_pid = self._last_pid, last
        if last is None or prev is None or now >= self._next_full or not 0 <= last - prev <= self.MAX_PROBE:
            self._next_full = now + self.FULL_SCAN_S
            return self._full_scan()
        new: set[int] = set()
        for pid in range(prev + 1, last + 1):
            ids = _read_status_ids(pid)
            if ids is None or ids[0] != pid or pid in self.ppid:
                continue
            self.ppid[pid] = ids[1]
            self.children.setdefault(ids[1], []).append(pid)
            new.add(pid)
        return new

    def _full_scan(self) -> set[int]:
        self.full_scans += 1
        pids = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        gone = self.ppid.keys() - pids
        new = pids - self.ppid.keys()
        reread = set(new)
        if gone:
            reread |= {p for p, pp in self.ppid.items() if pp in gone and p in pids}
            for pid in gone:
                del self.ppid[pid]
        for pid in reread:
            ppid = _read_ppid(pid)
            if ppid is None:
                self.ppid.pop(pid, None)
                new.discard(pid)
            else:
                self.ppid[pid] = ppid
        children: dict[int, list[int]] = {}
        for pid, ppid in self.ppid.items():
            children.setdefault(ppid, []).append(pid)
        self.children = children
        return new


@dataclass
class Target:
    """What collectors observe. Collectors read it; only the session mutates it."""

    pid: int
    launched: bool
    command: list[str] | None = None
    cwd: str = ""
    exit_rusage: dict[str, float] | None = None
    orphan_rusage: dict[str, float] | None = None
    exit_io: dict[str, float] | None = None
    orphan_io: dict[str, float] | None = None
    ended: bool = False
    # monotonic times of launch/attach and of the target's exit/detach
    started_at: float | None = None
    ended_at: float | None = None
    # "NAME=value" in the target's environment: identifies orphans adopted by us
    marker: str | None = None
    # perfpilot's own peak RSS when it launched the target. Linux carries the parent's
    # high-water mark into a child's rusage maxrss across fork/vfork+exec, so a
    # maxrss at or below this figure may be the launcher's, not the target's.
    launcher_hwm_bytes: int | None = None
    _table: _PidTable | None = field(default=None, repr=False)
    _members: set[int] = field(default_factory=set, repr=False)
    _checked: set[int] = field(default_factory=set, repr=False)
    _files: ProcFiles | None = field(default=None, repr=False)
    _snapshot: TreeSnapshot | None = field(default=None, repr=False)
    _procs: dict[int, psutil.Process] = field(default_factory=dict, repr=False)
    _live: list[psutil.Process] = field(default_factory=list, repr=False)
    _seen: set[int] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refresh(self) -> list[psutil.Process]:
        """Rescan the tree (called by the sampler once per tick).

        A process once seen in the tree stays in it while it lives, even after being
        reparented (orphans adopted by perfpilot as subreaper, or by init), and a new
        child of perfpilot carrying :attr:`marker` in its environment is adopted even
        if it was orphaned before any tick saw it (``(cmd &)`` in a shell).
        """
        if os.path.isdir("/proc/self/task"):
            return self._refresh_proc()
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

    def _refresh_proc(self) -> list[psutil.Process]:
        if self._table is None:
            self._table = _PidTable()
        table = self._table
        scans = table.full_scans
        new = table.update()
        me = os.getpid()
        changed = table.full_scans != scans or not self._members
        for pid in new:
            parent = table.ppid.get(pid)
            if parent in self._members:
                changed = True
            elif parent == me and self.marker and self.launched and pid != self.pid and pid not in self._checked:
                self._checked.add(pid)
                if self._has_marker(pid):
                    self._members.add(pid)
                    changed = True
        if not changed:
            return self.processes()  # nothing was born into or left the tree
        self._members = {p for p in self._members if p in table.ppid}
        order: list[int] = []
        stack = [p for p in (self.pid, *sorted(self._members)) if p in table.ppid]
        visited: set[int] = set()
        while stack:
            pid = stack.pop()
            if pid in visited:
                continue
            visited.add(pid)
            order.append(pid)
            stack.extend(table.children.get(pid, ()))
        order.sort(key=lambda p: p != self.pid)  # root first
        live: list[psutil.Process] = []
        for pid in order:
            proc = self._procs.get(pid)
            if proc is None:
                try:
                    proc = psutil.Process(pid)
                except psutil.Error:
                    continue
                self._procs[pid] = proc
            live.append(proc)
        for pid in [p for p in self._procs if p not in table.ppid]:
            del self._procs[pid]
        self._members |= visited
        self._seen |= visited
        with self._lock:
            self._live = live
        return live

    def _has_marker(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return (self.marker or "").encode() in fh.read().split(b"\0")
        except OSError:
            return False

    @property
    def proc_files(self) -> ProcFiles:
        """The run's kept-open ``/proc`` descriptors, shared by every collector."""
        if self._files is None:
            self._files = ProcFiles()
        return self._files

    def snapshot(self, now: float) -> TreeSnapshot:
        """``/proc/<pid>/stat`` of every tree process at this tick, read once: every
        collector sampled with the same ``now`` gets the same :class:`TreeSnapshot`."""
        cached = self._snapshot
        if cached is not None and cached.now == now:
            return cached
        snap = TreeSnapshot.read(now, (p.pid for p in self.processes()), self.proc_files)
        self._snapshot = snap
        return snap

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
