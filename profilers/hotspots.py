"""Collapsed stacks -> hot spots (per function and per line, with the source text).

Pure functions, no py-spy process involved, so the daemon can reuse them on its own
snapshots: :func:`hotspots_from_pyspy` takes the text py-spy writes with
``--format raw`` (one ``frame;frame;frame count`` line per distinct stack) and returns
the Profile's ``hotspots`` list.

Frames look like ``name (path/to/file.py:123)``; with ``--subprocesses`` py-spy puts a
``process 123:"command line"`` frame at the root of each stack, and with ``--native``
there are frames without a line (``PyEval_EvalFrameDefault (libpython3.11.so)``).

Percentages are of all samples taken (every thread of every process that was on CPU
when sampled; py-spy drops idle threads unless ``--idle``), so on a multi-process target
they add up across processes, like ``py-spy top``. ``self`` is the leaf frame of a
sample (the line that was running); ``total`` counts a function once per sample in which
it is anywhere on the stack (recursion counted once).
"""

from __future__ import annotations

import linecache
import os
import re
import sysconfig
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_PROCESS = re.compile(r'^process (?P<pid>\d+):"(?P<command>.*)"$', re.DOTALL)
_THREAD = re.compile(r"^thread \((?P<tid>0x[0-9a-fA-F]+|\d+)\)$")

DEFAULT_TOP = 50
DEFAULT_LINES = 8


@dataclass(frozen=True)
class Frame:
    name: str
    file: str
    line: int | None

    @property
    def key(self) -> str:
        """Identity of the function (name and file, not the line)."""
        return function_key(self.name, self.file)


def function_key(name: str, file: str) -> str:
    return f"{name}\t{file}"


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text)
    if match is None:
        return Frame(text, "", None)
    line = match.group("line")
    return Frame(match.group("name"), match.group("file"), int(line) if line else None)


def process_of(text: str) -> tuple[int, str] | None:
    """``(pid, command)`` for a ``process N:"cmd"`` frame, else None."""
    match = _PROCESS.match(text)
    return (int(match.group("pid")), match.group("command")) if match else None


def split_stack(stack: str) -> tuple[int | None, list[Frame]]:
    """A collapsed stack -> (pid or None, Python/native frames root first)."""
    pid = None
    frames: list[Frame] = []
    for part in stack.split(";"):
        proc = process_of(part)
        if proc is not None:
            pid = proc[0]  # the innermost process frame is the one sampled
            continue
        if _THREAD.match(part):
            continue
        frames.append(parse_frame(part))
    return pid, frames


def _join_process_frames(stack: str) -> str:
    """py-spy writes a process's command line unescaped, so ``python -c "a; b"`` puts a
    ``;`` inside a frame. Rejoin such pieces and replace that ``;`` with ``,`` so that
    every consumer (us, flamegraph.pl, speedscope) can split on ``;``."""
    if '"' not in stack:
        return stack
    parts = stack.split(";")
    out: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if part.startswith("process ") and ':"' in part and not part.endswith('"'):
            j = i + 1
            while j < len(parts) and not parts[j].endswith('"'):
                j += 1
            if j < len(parts):
                part = ",".join(parts[i:j + 1])
                i = j
        out.append(part)
        i += 1
    return ";".join(out)


def parse_collapsed(text: str) -> Counter[str]:
    """flamegraph.pl / py-spy raw text -> ``{stack: samples}``. Bad lines, and stacks
    with no code frame at all, are skipped."""
    counts: Counter[str] = Counter()
    pending = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            continue
        if pending:
            line, pending = f"{pending} {line}", ""
        stack, sep, count = line.rpartition(" ")
        if not sep or not count.isdigit() or not stack:
            if line.startswith("process ") and line.count('"') % 2:
                pending = line  # a command line with a newline in it (python -c "...")
            continue
        stack = _join_process_frames(stack)
        if not split_stack(stack)[1]:
            continue  # a process frame alone: an interpreter not yet running Python code
        counts[stack] += int(count)
    return counts


def function_counts(collapsed: Mapping[str, int]) -> tuple[Counter[str], Counter[str]]:
    """(self, total) samples per function key; the basis of energy per hot spot."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    for stack, count in collapsed.items():
        _pid, frames = split_stack(stack)
        if not frames:
            continue
        self_counts[frames[-1].key] += count
        for key in {f.key for f in frames}:
            total_counts[key] += count
    return self_counts, total_counts


def short_path(path: str, cwd: str | None = None) -> str:
    """What a person wants to read: relative to the project, a package, or the stdlib."""
    if not path or path.startswith("<"):
        return path
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    stdlib = sysconfig.get_paths().get("stdlib")
    if stdlib and path.startswith(stdlib + os.sep):
        return "<stdlib>/" + path[len(stdlib) + 1:]
    base = cwd or os.getcwd()
    if path.startswith(base + os.sep):
        return path[len(base) + 1:]
    return path


def source_line(file: str, line: int | None) -> str:
    """The stripped source text of ``file:line`` ('' when the file is not readable)."""
    if not file or line is None or file.startswith("<"):
        return ""
    text = linecache.getline(file, line)
    return text.strip()[:200]


@dataclass
class _Acc:
    name: str
    file: str
    self_samples: int = 0
    total_samples: int = 0
    pids: set[int] | None = None

    def __post_init__(self) -> None:
        self.line_self: Counter[int] = Counter()
        self.line_total: Counter[int] = Counter()
        self.pids = set()


def aggregate(
    collapsed: Mapping[str, int],
    *,
    top: int = DEFAULT_TOP,
    lines_per_function: int = DEFAULT_LINES,
    cwd: str | None = None,
    with_source: bool = True,
) -> list[dict[str, Any]]:
    """Hot spots, hottest first (self samples, then total samples).

    Each entry: ``function``, ``file`` (as sampled), ``short_file``, ``line`` (the hottest
    line of the function: most self samples, or most inclusive samples when the function
    only calls others), ``code`` (that line's text), ``self_pct``, ``total_pct``,
    ``samples`` (self), ``total_samples``, ``processes`` (distinct pids it ran in, 0 when
    py-spy did not report pids), and ``lines``: the function's hottest lines as
    ``{"line", "code", "samples", "total_samples", "self_pct", "total_pct"}``.
    """
    grand = sum(collapsed.values())
    if grand <= 0:
        return []
    accs: dict[str, _Acc] = {}
    for stack, count in collapsed.items():
        pid, frames = split_stack(stack)
        if not frames:
            continue
        seen_fn: set[str] = set()
        seen_line: set[tuple[str, int | None]] = set()
        for frame in frames:
            acc = accs.get(frame.key)
            if acc is None:
                acc = accs[frame.key] = _Acc(frame.name, frame.file)
            if frame.key not in seen_fn:
                seen_fn.add(frame.key)
                acc.total_samples += count
                if pid is not None:
                    acc.pids.add(pid)  # type: ignore[union-attr]
            if frame.line is not None and (frame.key, frame.line) not in seen_line:
                seen_line.add((frame.key, frame.line))
                acc.line_total[frame.line] += count
        leaf = frames[-1]
        leaf_acc = accs[leaf.key]
        leaf_acc.self_samples += count
        if leaf.line is not None:
            leaf_acc.line_self[leaf.line] += count

    ranked = sorted(accs.values(), key=lambda a: (a.self_samples, a.total_samples, a.name), reverse=True)[:top]

    def pct(n: int) -> float:
        return round(100.0 * n / grand, 2)

    out: list[dict[str, Any]] = []
    for acc in ranked:
        lines = sorted(acc.line_total, key=lambda ln: (acc.line_self[ln], acc.line_total[ln]), reverse=True)
        hot_line = lines[0] if lines else None
        line_entries = [
            {
                "line": ln,
                "code": source_line(acc.file, ln) if with_source else "",
                "samples": acc.line_self[ln],
                "total_samples": acc.line_total[ln],
                "self_pct": pct(acc.line_self[ln]),
                "total_pct": pct(acc.line_total[ln]),
            }
            for ln in lines[:lines_per_function]
        ]
        out.append({
            "function": acc.name,
            "file": acc.file,
            "short_file": short_path(acc.file, cwd),
            "line": hot_line,
            "code": line_entries[0]["code"] if line_entries else "",
            "self_pct": pct(acc.self_samples),
            "total_pct": pct(acc.total_samples),
            "samples": acc.self_samples,
            "total_samples": acc.total_samples,
            "processes": len(acc.pids or ()),
            "lines": line_entries,
        })
    return out


def hotspots_from_pyspy(text: str, **kwargs: Any) -> list[dict[str, Any]]:
    """py-spy ``--format raw`` output (or any collapsed-stack text) -> hot spots."""
    return aggregate(parse_collapsed(text), **kwargs)


def merge(counters: Iterable[Mapping[str, int]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for counts in counters:
        total.update(counts)
    return total

