"""Which processes the daemon watches: selectors, an incremental process table, and
groups that follow their processes across restarts.

Selectors (one group each; the selector text is the group's ``watch`` label, so the
number of label values is bounded by the configuration, never by process churn):

``name:NAME``     the process name (``comm``), or the basename of argv[0], or of argv[1]
                  when argv[0] is an interpreter (``python3 /usr/bin/gunicorn``)
``cmdline:REGEX`` a regular expression searched in the space-joined command line
``pid:N``         one process; when it dies, the process started with the same command
                  line is followed as its restart
``top:N``         the N processes with the most CPU time in the last ranking period

The process table rescans ``/proc`` by directory listing each tick and reads name and
command line only for new pids, so a tick costs a listdir plus the watched processes,
not a walk over every process on the host.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from perfpilot.errors import ConfigError
from perfpilot.profilers import procfs

INTERPRETERS = re.compile(r"^(python[0-9.]*|pypy[0-9.]*|node|ruby|perl|java|sh|bash)$")
YOUNG_S = 2.0  # a process this young may still exec(): match it again next tick
RETRY_UNREADABLE_S = 10.0


@dataclass
class ProcInfo:
    pid: int
    name: str
    cmdline: tuple[str, ...]
    create_time: float
    first_seen: float

    @property
    def command(self) -> str:
        return " ".join(self.cmdline) if self.cmdline else f"[{self.name}]"


def _read(pid: int, now: float) -> ProcInfo | None:
    """Name, argv and start time from two small /proc reads (psutil's oneshot() reads
    more and allocates more; new processes arrive every tick on a busy host)."""
    stat = procfs.read_stat(pid)
    if stat is None or stat.state == "Z":
        return None
    cmdline = procfs.read_cmdline(pid)
    if cmdline is None:
        return None
    name = stat.name
    if len(name) >= 15 and cmdline:
        # comm is cut at 15 characters; argv[0] has the whole name (as psutil does it).
        full = os.path.basename(cmdline[0])
        if full.startswith(name):
            name = full
    return ProcInfo(pid, name, cmdline, stat.create_time, now)


class ProcessTable:
    """Every pid on the host, with name and command line read once per process."""

    def __init__(self, exclude: Iterable[int] = ()) -> None:
        self.procs: dict[int, ProcInfo] = {}
        self.exclude = set(exclude)
        # Listed but unreadable (zombies, hidepid): retried now and then, not every tick.
        self._unreadable: dict[int, float] = {}

    def refresh(self, now: float | None = None) -> tuple[set[int], set[int]]:
        """Rescan; return (new pids, gone pids). Young processes are re-read (exec)."""
        now = time.time() if now is None else now
        try:
            current = {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}
        except OSError:  # pragma: no cover - /proc is always there on Linux
            current = set(self.procs)
        current -= self.exclude
        procs = self.procs
        gone = procs.keys() - current
        for pid in gone:
            del procs[pid]
        unreadable = self._unreadable
        for pid in unreadable.keys() - current:
            del unreadable[pid]
        new: set[int] = set()
        for pid in current:
            known = procs.get(pid)
            if known is not None and now - known.create_time > YOUNG_S:
                continue
            if known is None and now - unreadable.get(pid, -1e18) < RETRY_UNREADABLE_S:
                continue
            info = _read(pid, now)
            if info is None:
                procs.pop(pid, None)
                unreadable[pid] = now
                continue
            unreadable.pop(pid, None)
            if known is None or known.create_time != info.create_time or known.cmdline != info.cmdline:
                if known is not None:
                    info.first_seen = known.first_seen
                self.procs[pid] = info
                new.add(pid)
        return new, gone


class Selector:
    """A parsed selector; ``matches`` is evaluated once per new (or re-exec'd) process."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        kind, sep, arg = self.text.partition(":")
        self.kind = kind.strip().lower()
        self.arg = arg.strip()
        if not sep or not self.arg or self.kind not in {"name", "cmdline", "pid", "top"}:
            raise ConfigError(
                f"bad watch selector {text!r}",
                hint="use name:NAME, cmdline:REGEX, pid:N or top:N (e.g. --watch name:gunicorn)",
            )
        self.pattern: re.Pattern[str] | None = None
        self.number = 0
        if self.kind == "cmdline":
            try:
                self.pattern = re.compile(self.arg)
            except re.error as exc:
                raise ConfigError(f"bad watch selector {text!r}: invalid regular expression: {exc}") from None
        elif self.kind in {"pid", "top"}:
            if not self.arg.isdigit() or int(self.arg) <= 0:
                raise ConfigError(f"bad watch selector {text!r}: expected a positive number after {self.kind}:")
            self.number = int(self.arg)

    def matches(self, info: ProcInfo) -> bool:
        if self.kind == "name":
            if info.name == self.arg:
                return True
            argv = info.cmdline
            if argv:
                first = os.path.basename(argv[0])
                if first == self.arg:
                    return True
                if len(argv) > 1 and INTERPRETERS.match(first) and os.path.basename(argv[1]) == self.arg:
                    return True
            return False
        if self.kind == "cmdline":
            assert self.pattern is not None
            return bool(info.cmdline) and self.pattern.search(" ".join(info.cmdline)) is not None
        if self.kind == "pid":
            return info.pid == self.number
        return False


@dataclass
class Group:
    """The processes one selector currently matches, and its restart history."""

    selector: Selector
    members: set[int] = field(default_factory=set)
    restarts: int = 0
    restart_times: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    pending_departures: deque[float] = field(default_factory=deque)
    followed_cmdline: tuple[str, ...] | None = None  # pid: selectors follow this after a restart
    events: list[tuple[str, str]] = field(default_factory=list)  # drained by the daemon

    @property
    def watch(self) -> str:
        return self.selector.text


class Watcher:
    """Keeps every group's membership current, one :meth:`refresh` per tick."""

    def __init__(self, selectors: Iterable[str], *, exclude: Iterable[int] = (), top_every: float = 5.0,
                 max_per_group: int = 256, restart_window: float = 600.0) -> None:
        self.groups = [Group(Selector(text)) for text in selectors]
        seen: set[str] = set()
        for group in self.groups:
            if group.watch in seen:
                raise ConfigError(f"watch selector {group.watch!r} given twice")
            seen.add(group.watch)
        self.table = ProcessTable(exclude)
        self.top_every = top_every
        self.max_per_group = max_per_group
        self.restart_window = restart_window
        self._last_rank = -1e18
        self._cpu_prev: dict[int, float] = {}
        self._started = False
        self._has_top = any(g.selector.kind == "top" for g in self.groups)

    def refresh(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        new, gone = self.table.refresh(now)
        if not new and not gone and self._started:
            # Nothing came or went (the usual tick): memberships cannot have changed.
            self._maybe_rank(now)
            return
        for group in self.groups:
            before = set(group.members)
            group.members -= gone
            if group.selector.kind == "top":
                continue
            for pid in new:
                info = self.table.procs[pid]
                if self._matches(group, info):
                    group.members.add(pid)
                else:
                    group.members.discard(pid)  # re-exec'd into something else
            if len(group.members) > self.max_per_group:
                group.members = set(sorted(group.members)[: self.max_per_group])
            self._note_restarts(group, before, now)
        self._maybe_rank(now)
        self._started = True

    def _maybe_rank(self, now: float) -> None:
        if self._has_top and now - self._last_rank >= self.top_every:
            self._rank_top(now)

    def _matches(self, group: Group, info: ProcInfo) -> bool:
        selector = group.selector
        if selector.kind == "pid":
            if info.pid == selector.number and group.followed_cmdline is None:
                group.followed_cmdline = info.cmdline or None
                return True
            if info.pid in group.members:
                return True
            # The watched pid is gone: its replacement is the process with the same
            # command line (how a supervisor restarts a service).
            return (not group.members and group.followed_cmdline is not None
                    and info.cmdline == group.followed_cmdline and (self._started or info.pid == selector.number))
        return selector.matches(info)

    def _note_restarts(self, group: Group, before: set[int], now: float) -> None:
        if not self._started:
            return
        departed = before - group.members
        joined = group.members - before
        for pid in sorted(departed):
            group.pending_departures.append(now)
            group.events.append(("exit", f"pid {pid} exited"))
        while group.pending_departures and now - group.pending_departures[0] > self.restart_window:
            group.pending_departures.popleft()
        for pid in sorted(joined):
            if group.pending_departures:
                group.pending_departures.popleft()
                group.restarts += 1
                group.restart_times.append(now)
                info = self.table.procs.get(pid)
                group.events.append(("restart", f"restarted as pid {pid}: {info.command if info else ''}"[:300]))

    def _rank_top(self, now: float) -> None:
        self._last_rank = now
        usage: list[tuple[float, int]] = []
        first = not self._cpu_prev
        cpu_now: dict[int, float] = {}
        for pid in self.table.procs:
            stat = procfs.read_stat(pid)
            if stat is None:
                continue
            total = stat.cpu_seconds
            cpu_now[pid] = total
            # The first ranking has no previous period: rank by CPU time so far.
            usage.append((total - self._cpu_prev.get(pid, 0.0 if first else total), pid))
        self._cpu_prev = cpu_now
        usage.sort(reverse=True)
        for group in self.groups:
            if group.selector.kind == "top":
                group.members = {pid for _used, pid in usage[: group.selector.number]}

    def info(self, pid: int) -> ProcInfo | None:
        return self.table.procs.get(pid)
