"""Cold start: the slowest imports of a Python target (``-X importtime``).

``perfpilot profile --imports -- python app.py`` runs the target with ``-X importtime``
(or ``PYTHONPROFILEIMPORTTIME=1`` when the command is not ``python ...`` itself, e.g. a
console script). CPython prints one line per imported module to stderr::

    import time: self [us] | cumulative | imported package
    import time:       412 |        412 |   _io
    import time:      1203 |       5311 | json

Children are printed before their parent, indented two spaces per level. We take those
lines out of the target's stderr (everything else passes through at once, untouched)
and record ``annotations["imports"]``:

``processes``      how many Python processes printed import times (the first is the target)
``count``          modules imported by the target's own interpreter
``total_us``       sum of the top-level cumulative times: the import part of start-up
``slowest``        top modules by cumulative time: ``{module, self_us, cumulative_us, depth, parent}``
``slowest_self``   top modules by self time (the module's own top-level code)

and ``summary["import_time_s"]``. To see those lines, perfpilot's own stderr goes
through a pipe while the target runs, so the target sees a pipe rather than a terminal
on stderr (colours on stderr may switch off).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

PREFIX = b"import time:"
HEADER = "import time: self [us] | cumulative | imported package"
_LINE = re.compile(r"^import time:\s*(\d+|cached)\s*\|\s*(\d+|cached)\s*\| (?P<indent> *)(?P<name>\S.*)$")
_PYTHON = re.compile(r"^(python|pypy)[0-9.]*$")
TOP = 30
TOP_SELF = 15


@dataclass
class ImportTime:
    module: str
    self_us: int
    cumulative_us: int
    depth: int
    parent: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse(lines: Iterable[str]) -> list[list[ImportTime]]:
    """``-X importtime`` lines -> one list per Python process (split at each header)."""
    processes: list[list[ImportTime]] = []
    current: list[ImportTime] | None = None
    for line in lines:
        line = line.rstrip("\n")
        if line.startswith(HEADER):
            current = []
            processes.append(current)
            continue
        match = _LINE.match(line)
        if match is None or match.group(1) == "cached":
            continue
        if current is None:
            current = []
            processes.append(current)
        depth = len(match.group("indent")) // 2
        current.append(ImportTime(match.group("name").strip(), int(match.group(1)), int(match.group(2)), depth))
    for entries in processes:
        _link_parents(entries)
    return processes


def _link_parents(entries: list[ImportTime]) -> None:
    # Post-order: a module's children are printed (at depth+1) just before it.
    waiting: dict[int, list[ImportTime]] = {}
    for entry in entries:
        for child in waiting.pop(entry.depth + 1, []):
            child.parent = entry.module
        waiting.setdefault(entry.depth, []).append(entry)


def summarise(processes: list[list[ImportTime]]) -> dict[str, Any]:
    if not processes or not processes[0]:
        return {"processes": len(processes), "count": 0, "total_us": 0, "slowest": [], "slowest_self": [],
                "note": "no import times were printed: the target is not a Python program (or imports nothing)"}
    root = processes[0]
    total = sum(e.cumulative_us for e in root if e.depth == 0)
    result: dict[str, Any] = {
        "processes": len(processes),
        "count": len(root),
        "total_us": total,
        "slowest": [e.as_dict() for e in sorted(root, key=lambda e: e.cumulative_us, reverse=True)[:TOP]],
        "slowest_self": [e.as_dict() for e in sorted(root, key=lambda e: e.self_us, reverse=True)[:TOP_SELF]],
    }
    if len(processes) > 1:
        result["note"] = (f"{len(processes)} Python processes printed import times; figures are the target's own "
                          f"(the first); children started later re-import on their own")
    return result


class StderrTee:
    """Route fd 2 through a pipe: ``import time:`` lines are kept, the rest is passed on
    to the original stderr as soon as it arrives (partial lines too: progress bars)."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.out = os.dup(2)  # the forwarder's own handle, closed by it at EOF
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.read_fd = read_fd
        self.captured: list[str] = []
        self.thread = threading.Thread(target=self._forward, name="perfpilot-importtime", daemon=True)
        self.thread.start()

    def _write(self, data: bytes) -> None:
        while data:
            try:
                n = os.write(self.out, data)
            except OSError:
                return
            data = data[n:]

    def _forward(self) -> None:
        pending = b""
        try:
            while True:
                chunk = os.read(self.read_fd, 65536)
                if not chunk:
                    break
                pending += chunk
                lines = pending.split(b"\n")
                pending = lines.pop()
                passed = []
                for line in lines:
                    if line.startswith(PREFIX):
                        self.captured.append(line.decode("utf-8", "replace"))
                    else:
                        passed.append(line + b"\n")
                # A partial line is held back only while it could still become ours.
                if pending and not (PREFIX.startswith(pending[:len(PREFIX)]) or pending.startswith(PREFIX)):
                    passed.append(pending)
                    pending = b""
                if passed:
                    self._write(b"".join(passed))
            if pending:
                if pending.startswith(PREFIX):
                    self.captured.append(pending.decode("utf-8", "replace"))
                else:
                    self._write(pending)
        finally:
            os.close(self.read_fd)
            os.close(self.out)

    def close(self, timeout: float = 2.0) -> list[str]:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        # A leftover grandchild may still hold the pipe open; don't wait for it.
        self.thread.join(timeout)
        return list(self.captured)


def is_python_command(argv: list[str]) -> bool:
    return bool(argv) and bool(_PYTHON.match(Path(argv[0]).name))


@dataclass
class ImportCapture:
    """A run arranged to print its import times: launch :attr:`argv` with
    :attr:`options`, then call :meth:`finish` (the state lives here, not in the module)."""

    argv: list[str]
    options: Any
    used_env: bool
    tee: StderrTee = field(repr=False)
    done: bool = False

    def finish(self, profile: Any | None) -> None:
        """Stop capturing and record the slowest imports on ``profile`` (None: only stop)."""
        if self.done:
            return
        self.done = True
        lines = self.tee.close()
        if profile is None:  # the run failed before a Profile existed: just stop capturing
            return
        result = summarise(parse(lines))
        result["how"] = "PYTHONPROFILEIMPORTTIME=1" if self.used_env else "-X importtime"
        profile.annotations["imports"] = result
        if result["count"]:
            profile.summary["import_time_s"] = result["total_us"] / 1e6


def prepare(argv: list[str], options: Any) -> ImportCapture:
    """Arrange for import times to be printed and captured: run ``capture.argv`` with
    ``capture.options``, then ``capture.finish(profile)``."""
    argv = list(argv)
    used_env = not is_python_command(argv)
    if used_env:
        env = {**(options.env or {}), "PYTHONPROFILEIMPORTTIME": "1"}
        options = dataclasses.replace(options, env=env)
    else:
        argv = [argv[0], "-X", "importtime", *argv[1:]]
    return ImportCapture(argv, options, used_env, StderrTee())
