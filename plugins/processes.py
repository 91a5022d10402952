"""Processes collector: who is in the tree, and what each one cost.

The other collectors sum the tree; this one keeps it apart, for the runs where the parts
differ: distributed training (one worker per rank under ``torchrun``), DataLoader
workers, ``multiprocessing`` pools. Each tick it reads the tick's shared
:class:`~perfpilot.profilers.snapshot.TreeSnapshot` (no extra ``/proc/<pid>/stat``
read) and, once per new process, its command line and its rank from the environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, as torchrun, DeepSpeed and Lightning set them).
A process first seen between its fork and its exec still shows its parent's command and
environment, so a new process's command line is read again on its next
:data:`EXEC_RECHECKS` ticks, and its rank with it when the command changed (on a loaded
machine torchrun's worker was seen before its exec and lost its rank).

``annotate()`` returns ``{"processes": [...]}`` for ``profile.annotations``: one entry per
process that had a rank, plus the ``TOP`` others with the most CPU time, each with
``pid``, ``command``, ``rank`` / ``local_rank`` / ``world_size`` (or null), ``cpu_s``
(user + system at its last sample: a process that exits between two ticks loses at
most one tick), ``peak_rss_bytes`` (sampled), ``first_s`` / ``last_s`` (seconds since
the start when it was first and last seen), ``ended_s`` (for a ranked process, when it
was first seen to have exited; else ``last_s``). :mod:`perfpilot.profilers.ranks` turns the
ranked ones into the per-rank view.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from perfpilot import hookimpl
from perfpilot.config import Settings
from perfpilot.profilers.procfs import read_file
from perfpilot.profilers.target import Target

TOP = 8
END_WATCH_S = 0.01  # how often the ranked processes are checked for their end (see _EndWatch)
RANK_VARIABLES = (b"RANK", b"LOCAL_RANK", b"WORLD_SIZE")
COMMAND_CHARS = 200
EXEC_RECHECKS = 10  # ticks after a process is first seen on which its command is read again


@dataclass
class _Seen:
    pid: int
    command: str
    ranks: dict[str, int]
    first_s: float
    last_s: float = 0.0
    ended_s: float | None = None  # first tick it was seen dead (a zombie not yet reaped by its parent)
    cpu_s: float = 0.0
    peak_rss_bytes: int = 0
    rechecks: int = EXEC_RECHECKS

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "command": self.command, "rank": self.ranks.get("RANK"),
                "local_rank": self.ranks.get("LOCAL_RANK"), "world_size": self.ranks.get("WORLD_SIZE"),
                "cpu_s": round(self.cpu_s, 3), "peak_rss_bytes": self.peak_rss_bytes,
                "first_s": round(self.first_s, 3), "last_s": round(self.last_s, 3),
                "ended_s": round(self.ended_s if self.ended_s is not None else self.last_s, 3)}


def _command(pid: int) -> str:
    raw = read_file(f"/proc/{pid}/cmdline") or b""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:COMMAND_CHARS]


def _has_ended(pid: int) -> bool:
    """True once the process is gone or has exited and waits for its parent's wait() (a
    zombie): its end, which a launcher like torchrun may notice only a monitor interval
    later. One read of ``stat``."""
    raw = read_file(f"/proc/{pid}/stat")
    return raw is None or raw[raw.rfind(b")") + 2:][:1] == b"Z"


def _ranks(pid: int) -> dict[str, int]:
    """The rank variables of a process's environment (as it was at exec)."""
    found: dict[str, int] = {}
    for entry in (read_file(f"/proc/{pid}/environ") or b"").split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name in RANK_VARIABLES and value.strip().isdigit():
            found[name.decode()] = int(value)
    return found


class _EndWatch(threading.Thread):
    """Times the end of each ranked process to ``END_WATCH_S``.

    A launcher reaps a dead rank and stops the others within its monitor interval
    (torchrun: 0.1 s), the same as a sampling tick, so at the tick rate the rank that
    failed and the ranks stopped after it would often vanish together. A few ranked
    processes, one small ``stat`` read each every 10 ms: about 0.2% of a core."""

    def __init__(self) -> None:
        super().__init__(name="perfpilot-rank-ends", daemon=True)
        self.watched: dict[int, _Seen] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.zero: float | None = None  # the session clock's value at the collector's first tick

    def run(self) -> None:
        while not self.stopping.wait(END_WATCH_S):
            with self.lock:
                watched = list(self.watched.items())
            for pid, seen in watched:
                if seen.ended_s is None and _has_ended(pid):
                    seen.ended_s = time.monotonic() - (self.zero or 0.0)
                    with self.lock:
                        self.watched.pop(pid, None)


class ProcessesCollector:
    name = "processes"

    def __init__(self, settings: Settings) -> None:
        self.target: Target | None = None
        self._start: float | None = None
        self._seen: dict[tuple[int, int], _Seen] = {}  # (pid, starttime): a reused pid is another process
        self._ends = _EndWatch()

    def available(self) -> tuple[bool, str]:
        if read_file("/proc/self/environ") is None:
            return False, "needs Linux /proc (not found on this system)"
        return True, ""

    def start(self, target: Target) -> None:
        self.target = target

    def sample(self, now: float) -> dict[str, float]:
        assert self.target is not None
        if self._start is None:
            self._start = self._ends.zero = now
        since = now - self._start
        for proc in self.target.snapshot(now).procs.values():
            key = (proc.pid, proc.starttime)
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = _Seen(proc.pid, _command(proc.pid), _ranks(proc.pid), since)
                if seen.ranks:
                    self._watch_end(seen)
            elif seen.rechecks > 0:
                self._recheck_exec(seen)
            seen.last_s = since
            seen.cpu_s = proc.cpu_s
            seen.peak_rss_bytes = max(seen.peak_rss_bytes, proc.rss_bytes)
        return {}

    def _recheck_exec(self, seen: _Seen) -> None:
        """A young process's command again: when it changed, it exec'd since it was first
        seen (pid and start time stay the same), and its environment is the new one."""
        seen.rechecks -= 1
        command = _command(seen.pid)
        if not command or command == seen.command:
            return
        seen.command = command
        ranks = _ranks(seen.pid)
        if ranks:
            newly_ranked = not seen.ranks
            seen.ranks = ranks
            if newly_ranked:
                self._watch_end(seen)

    def _watch_end(self, seen: _Seen) -> None:
        with self._ends.lock:
            self._ends.watched[seen.pid] = seen
        if not self._ends.is_alive():
            self._ends.start()

    def stop(self) -> dict[str, Any]:
        self._ends.stopping.set()
        return {}

    def annotate(self) -> dict[str, Any]:
        """What goes into ``profile.annotations["processes"]``."""
        ranked = [s for s in self._seen.values() if "RANK" in s.ranks]
        others = sorted((s for s in self._seen.values() if "RANK" not in s.ranks), key=lambda s: s.cpu_s,
                        reverse=True)[:TOP]
        return {"processes": [s.as_dict() for s in ranked + others]} if self._seen else {}


@hookimpl
def perfpilot_register_collectors(register: Any) -> None:
    register(ProcessesCollector)
