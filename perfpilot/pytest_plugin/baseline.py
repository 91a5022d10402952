"""Baselines of a test suite's performance, stored per machine under ``.perfpilot/``.

Layout::

    .perfpilot/baselines/<machine id>/<UTC date and time>-<commit>-py<X.Y>.json

A baseline holds, per test, every round's figures (not one number), so that a later run
can be judged with the statistics engine. Its ``meta`` says where it came from: machine
id (:func:`perfpilot.profilers.host.machine_id`), Python, git commit (and whether the tree
was dirty), date, rounds, and the xdist worker count. Retention: saving keeps the newest
``keep`` baselines of this machine and deletes older ones.

A comparison reads the newest baseline of this machine recorded with the same Python
``X.Y`` (else the newest of this machine, with a warning); ``--perfpilot-baseline PATH``
names one explicitly (e.g. a baseline committed from another machine; flagged as such).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfpilot.errors import PerfpilotError

SCHEMA = "perfpilot.pytest-baseline"
VERSION = 1
DEFAULT_KEEP = 10


class BaselineError(PerfpilotError):
    """A baseline file is unreadable or not a perfpilot pytest baseline."""


def git_commit(cwd: Path) -> tuple[str | None, bool]:
    """(commit, dirty) of the repository at ``cwd``; (None, False) outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None, False
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def python_version() -> str:
    return platform.python_version()


def python_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


@dataclass
class Baseline:
    meta: dict[str, Any]
    tests: dict[str, dict[str, Any]]
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        commit = (self.meta.get("commit") or "no git")[:10] + ("+dirty" if self.meta.get("dirty") else "")
        return f"{self.meta.get('date', '?')} {commit} py{self.meta.get('python', '?')}"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "meta": self.meta, "tests": self.tests}


def load(path: Path) -> Baseline:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc.strerror}",
                            hint="check --perfpilot-baseline, or save one with --perfpilot-save") from None
    except json.JSONDecodeError as exc:
        raise BaselineError(f"baseline {path} is not valid JSON ({exc.msg} at line {exc.lineno})",
                            hint="delete it and save a new one with --perfpilot-save") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("tests"), dict):
        raise BaselineError(f"{path} is not a perfpilot pytest baseline", hint="save one with --perfpilot-save")
    if data.get("version") != VERSION:
        raise BaselineError(f"baseline {path} has version {data.get('version')}, this perfpilot reads {VERSION}",
                            hint="save a new one with --perfpilot-save")
    for nodeid, entry in data["tests"].items():
        problem = _entry_problem(entry)
        if problem:
            raise BaselineError(f"baseline {path} is damaged: test {nodeid!r}: {problem}",
                                hint="delete it and save a new one with --perfpilot-save")
    return Baseline(meta=dict(data.get("meta") or {}), tests=data["tests"], path=path)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)


def _entry_problem(entry: Any) -> str:
    """What is wrong with one test's entry ('' when nothing): checked at load, so a hand-edited or
    merge-mangled file is one clear error instead of a traceback inside every test it names."""
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    rounds = entry.get("rounds", {})
    if not isinstance(rounds, dict):
        return "'rounds' is not an object"
    for metric, values in rounds.items():
        if not _numbers(values):
            return f"rounds[{metric!r}] is not a list of numbers"
    measures = entry.get("measure", {})
    if not isinstance(measures, dict):
        return "'measure' is not an object"
    for name, dist in measures.items():
        if not isinstance(dist, dict):
            return f"measure[{name!r}] is not an object"
        for metric in ("wall", "cpu", "cpu_wait"):
            if metric in dist and not _numbers(dist[metric]):
                return f"measure[{name!r}][{metric!r}] is not a list of numbers"
        if not isinstance(dist.get("iterations", 1), int):
            return f"measure[{name!r}]['iterations'] is not an integer"
    return ""


class BaselineStore:
    def __init__(self, root: Path, machine_id: str) -> None:
        self.root = root
        self.machine_id = machine_id
        self.folder = root / "baselines" / machine_id

    def list(self) -> list[Path]:
        """This machine's baselines, oldest first (file names sort by date)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.json") if p.is_file())

    def latest(self, python: str) -> Baseline | None:
        paths = self.list()
        if not paths:
            return None
        minor = python_minor(python)
        same = [p for p in paths if p.stem.endswith(f"-py{minor}")]
        baseline = load((same or paths)[-1])
        if not same:
            baseline.warnings.append(
                f"no baseline for Python {minor} on this machine; using {baseline.describe()}")
        return baseline

    def save(self, meta: dict[str, Any], tests: dict[str, dict[str, Any]], *, keep: int = DEFAULT_KEEP) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        # microseconds: names must sort in save order, even for saves within one second
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        commit = (meta.get("commit") or "nogit")[:10]
        stem = f"{stamp}-{commit}-py{python_minor(meta['python'])}"
        path = self.folder / f"{stem}.json"
        counter = 1
        while path.exists():  # two saves within a second: keep both, in order
            path = self.folder / f"{stem.replace(stamp, f'{stamp}{counter:02d}')}.json"
            counter += 1
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(Baseline(meta, tests).to_dict(), allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # a reader never sees half a file
        self.prune(keep)
        return path

    def prune(self, keep: int) -> list[Path]:
        removed = []
        paths = self.list()
        for old in paths[: max(0, len(paths) - keep)]:
            try:
                old.unlink()
                removed.append(old)
            except OSError:
                pass
        return removed


def make_meta(*, machine_id: str, rootdir: Path, rounds: int, xdist_workers: int, host: dict[str, Any]) -> dict[str, Any]:
    commit, dirty = git_commit(rootdir)
    return {
        "machine_id": machine_id,
        "python": python_version(),
        "implementation": sys.implementation.name,
        "commit": commit,
        "dirty": dirty,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rounds": rounds,
        "xdist_workers": xdist_workers,
        "cpu_model": host.get("cpu_model"),
        "cores_logical": host.get("cores_logical"),
    }
