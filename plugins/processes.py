"""Processes collector: who is in the tree, and what each one cost.

The other collectors sum the tree; this one keeps it apart, for the runs where the parts
differ: distributed training (one worker per rank under ``torchrun``), DataLoader
workers, ``multiprocessing`` pools. Each tick it reads the tick's shared
:class:`~perfpilot.profilers.snapshot.TreeSnapshot` (no extra ``/proc/<pid>/stat``
read) and, once per new process, its command line and its rank from the environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, as torchrun, DeepSpeed and Lightning set them).

``annotate()`` returns ``{"processes": [...]}`` for ``profile.annotations``: one entry per
process that had a rank, plus the ``TOP`` others with the most CPU time, each with
``pid``, ``command``, ``rank`` / ``local_rank`` / ``world_size`` (or null), ``cpu_s``
(user + system at its last sample: a process that exits between two ticks loses at
most one tick), ``peak_rss_bytes`` (sampled), ``first_s`` / ``last_s`` (seconds since
the start when it was first and last seen). :mod:`perfpilot.profilers.ranks` turns the
ranked ones into the per-rank view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perfpilot import hookimpl
from perfpilot.config import Settings
from perfpilot.profilers.procfs import read_file
from perfpilot.profilers.target import Target

TOP = 8
RANK_VARIABLES = (b"RANK", b"LOCAL_RANK", b"WORLD_SIZE")
COMMAND_CHARS = 200


@dataclass
class _Seen:
    pid: int
    command: str
    ranks: dict[str, int]
    first_s: float
    last_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "command": self.command, "rank": self.ranks.get("RANK"),
                "local_rank": self.ranks.get("LOCAL_RANK"), "world_size": self.ranks.get("WORLD_SIZE"),
                "cpu_s": round(self.cpu_s, 3), "peak_rss_bytes": self.peak_rss_bytes,
                "first_s": round(self.first_s, 3), "last_s": round(self.last_s, 3)}


def _command(pid: int) -> str:
    raw = read_file(f"/proc/{pid}/cmdline") or b""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:COMMAND_CHARS]


def _ranks(pid: int) -> dict[str, int]:
    """The rank variables of a process's environment (as it was at exec)."""
    found: dict[str, int] = {}
    for entry in (read_file(f"/proc/{pid}/environ") or b"").split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name in RANK_VARIABLES and value.strip().isdigit():
            found[name.decode()] = int(value)
    return found


class ProcessesCollector:
    name = "processes"

    def __init__(self, settings: Settings) -> None:
        self.target: Target | None = None
        self._start: float | None = None
        self._seen: dict[tuple[int, int], _Seen] = {}  # (pid, starttime): a reused pid is another process

    def available(self) -> tuple[bool, str]:
        if read_file("/proc/self/environ") is None:
            return False, "needs Linux /proc (not found on this system)"
        return True, ""

    def start(self, target: Target) -> None:
        self.target = target

    def sample(self, now: float) -> dict[str, float]:
        assert self.target is not None
        if self._start is None:
            self._start = now
        since = now - self._start
        for proc in self.target.snapshot(now).procs.values():
            key = (proc.pid, proc.starttime)
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = _Seen(proc.pid, _command(proc.pid), _ranks(proc.pid), since)
            seen.last_s = since
            seen.cpu_s = proc.cpu_s
            seen.peak_rss_bytes = max(seen.peak_rss_bytes, proc.rss_bytes)
        return {}

    def stop(self) -> dict[str, Any]:
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
