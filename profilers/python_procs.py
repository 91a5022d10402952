"""Which processes of a target's tree run Python, seen the moment they start.

A launcher (pyenv shim, ``uv run``, a shell script) either execs the interpreter (same
pid, new binary: ``/proc/<pid>/exe`` changes) or starts it as a child. py-spy can only
attach to a process that already runs Python, so :mod:`perfpilot.profilers.stacks`
polls this module every few milliseconds until one appears.

A process runs Python when its executable is named ``python*``/``pypy*`` or when it has
``libpython`` mapped (an embedding program). The maps are read at most every
``MAPS_RECHECK_S`` per process, since a just-exec'd binary may not have mapped its
libraries yet.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

_PYTHON_EXE = re.compile(r"^(python|pypy)[0-9.]*[dmu]?$")
MAPS_RECHECK_S = 0.1


def children(pid: int) -> list[int]:
    """Direct children of pid from ``/proc/<pid>/task/*/children`` (no host-wide scan)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                found.extend(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """pid and its descendants, parents before children."""
    order, stack, seen = [], [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        order.append(current)
        stack.extend(reversed(children(current)))
    return order


def alive(pid: int) -> bool:
    """Running (not a zombie, not gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return data[data.rindex(b")") + 2:][:1] not in (b"Z", b"X")
    except (OSError, ValueError):
        return False


@dataclass
class PythonFinder:
    """Remembers each pid's executable so a poll costs one readlink per process."""

    _seen: dict[int, tuple[str, bool, float]] = field(default_factory=dict)

    def is_python(self, pid: int) -> bool:
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return False
        exe = exe.removesuffix(" (deleted)")
        now = time.monotonic()
        known = self._seen.get(pid)
        if known is not None and known[0] == exe and (known[1] or now - known[2] < MAPS_RECHECK_S):
            return known[1]
        result = bool(_PYTHON_EXE.match(os.path.basename(exe))) or _maps_libpython(pid)
        self._seen[pid] = (exe, result, now)
        return result

    def roots(self, pids: list[int]) -> list[int]:
        """The Python processes among pids (parents first) that have no Python ancestor
        in the list: one py-spy with --subprocesses on each covers all of them."""
        pythons = [p for p in pids if self.is_python(p)]
        if len(pythons) <= 1:
            return pythons
        covered: set[int] = set()
        out = []
        for pid in pythons:
            if pid in covered:
                continue
            out.append(pid)
            covered.update(descendants(pid))
        return out


def _maps_libpython(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps", "rb") as fh:
            return b"/libpython" in fh.read()
    except OSError:
        return False
