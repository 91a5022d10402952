"""The /proc reads the daemon makes every tick, kept as cheap as /proc allows.

At a 1 s interval over 50 watched processes these reads are most of the daemon's CPU
budget (target: 1% of one core), so they avoid psutil's per-call object and file
overhead: ``/proc/PID/stat`` is read once per process per tick through a descriptor kept
open (``pread`` on an open descriptor costs about half of open+read+close), and parsed
once. A descriptor of ``/proc/PID/...`` keeps pointing at *that* process: once it is
reaped, reads fail (ESRCH) instead of silently reading a new process that reused the pid.

(``perfpilot.plugins.cpu`` has the same trick for collectors; the agent may not import
plugins, and this is twenty lines.)
"""

from __future__ import annotations

import os
from typing import NamedTuple

import psutil

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
BOOT_TIME = psutil.boot_time()
MAX_OPEN = 512  # descriptors kept open at most; beyond that each read opens and closes


class Stat(NamedTuple):
    name: str
    state: str  # R, S, D, Z (zombie), ...
    cpu_seconds: float
    threads: int
    rss_bytes: int
    create_time: float


def parse_stat(data: bytes) -> Stat:
    """One ``/proc/PID/stat`` -> :class:`Stat`. ValueError/IndexError on a malformed read."""
    close = data.rindex(b")")
    name = data[data.index(b"(") + 1:close].decode("utf-8", "replace")
    fields = data[close + 2:].split()
    # fields[0] is field 3 (state) of proc(5): utime=14, stime=15, num_threads=20, starttime=22, rss=24
    return Stat(name, fields[0].decode(), (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[17]), int(fields[21]) * PAGE_SIZE,
                create_time(int(fields[19])))


def create_time(starttime_ticks: int) -> float:
    """Start time as a Unix time, rounded so that two reads of one process compare equal."""
    return round(BOOT_TIME + starttime_ticks / CLK_TCK, 2)


def read_stat(pid: int) -> Stat | None:
    """A one-off read (new processes); None when the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return parse_stat(fh.read())
    except (OSError, ValueError, IndexError):
        return None


def read_cmdline(pid: int) -> tuple[str, ...] | None:
    """argv, () for kernel threads and zombies, None when gone or not readable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if not data:
        return ()
    return tuple(part.decode("utf-8", "replace") for part in data.rstrip(b"\0").split(b"\0"))


class StatReader:
    """``/proc/PID/stat`` of many processes, each through a descriptor kept open."""

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self.max_open = max_open
        self._fds: dict[int, int] = {}

    def read(self, pid: int) -> Stat | None:
        """None when the process is gone (or reaped since its descriptor was opened)."""
        fd = self._fds.get(pid)
        if fd is None:
            try:
                fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
            except OSError:
                return None
            if len(self._fds) < self.max_open:
                self._fds[pid] = fd
            else:
                try:
                    return self._parse(os.pread(fd, 4096, 0))
                except OSError:
                    return None
                finally:
                    os.close(fd)
        try:
            return self._parse(os.pread(fd, 4096, 0))
        except OSError:
            self.forget(pid)
            return None

    @staticmethod
    def _parse(data: bytes) -> Stat | None:
        try:
            return parse_stat(data)
        except (ValueError, IndexError):
            return None

    def forget(self, pid: int) -> None:
        fd = self._fds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def retain(self, pids: set[int] | dict[int, object]) -> None:
        """Close the descriptors of processes no longer read."""
        for pid in [p for p in self._fds if p not in pids]:
            self.forget(pid)

    def close(self) -> None:
        for pid in list(self._fds):
            self.forget(pid)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class SystemFiles:
    """``/proc/stat``, ``/proc/meminfo``...: kept open, re-read with one ``pread`` each."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, name: str, size: int = 8192) -> bytes:
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(f"/proc/{name}", os.O_RDONLY)
        return os.pread(fd, size, 0)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
