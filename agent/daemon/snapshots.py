"""Periodic py-spy snapshots of watched Python processes, folded into rolling hot spots.

Every ``every`` seconds one round runs ``py-spy record --pid P --duration D --rate R
--format raw --nonblocking`` for at most ``max_per_round`` processes, one at a time, so
the cost is bounded: at most one py-spy alive, sampling D seconds out of every
``every`` (default 2 s in 60 s), never pausing the target (``--nonblocking``). Its CPU
time is measured from the reaped child's rusage and exported, so the cost is visible.

Each process keeps its last ``keep`` snapshots; its hot spots are those snapshots
merged (:func:`perfpilot.profilers.hotspots.merge` / ``aggregate``, the same code as
``perfpilot profile``), so they move with the workload and forget old phases.

Privileges: py-spy reads the target's memory through ptrace, so it needs the same user
with ``kernel.yama.ptrace_scope=0``, or root, or ``CAP_SYS_PTRACE``. Without it each
process is tried once, the reason is reported in ``/healthz``, and it is retried only
after ``DENIED_RETRY_S``; telemetry goes on regardless.
"""

from __future__ import annotations

import linecache
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from perfpilot.agent.daemon.config import SnapshotConfig
from perfpilot.agent.daemon.watch import ProcInfo, Watcher
from perfpilot.profilers import hotspots as hotspot_model
from perfpilot.profilers import stacks as stack_tools

log = logging.getLogger("perfpilot.daemon")

DENIED_RETRY_S = 600.0
FAILED_RETRY_S = 60.0
MAX_STACKS = 2000  # distinct stacks per process in /api/hotspots?stacks=1 (bounds the answer)
OTHER_STACKS = "(other stacks)"


def looks_like_python(info: ProcInfo) -> bool:
    names = [info.name]
    if info.cmdline:
        names.append(os.path.basename(info.cmdline[0]))
    if any(n.startswith(("python", "pypy")) for n in names):
        return True
    # gunicorn/uvicorn/celery rename themselves; the interpreter still shows in the maps.
    try:
        with open(f"/proc/{info.pid}/maps", "rb") as fh:
            return any(b"libpython" in line or b"/python3" in line for line in fh)
    except OSError:
        return False


@dataclass
class Rolling:
    """The last ``keep`` snapshots of one process."""

    watch: list[str]
    snapshots: deque[Counter[str]]
    last_ts: float = 0.0
    name: str = ""

    def hotspots(self, top: int) -> list[dict[str, Any]]:
        spots = hotspot_model.aggregate(hotspot_model.merge(self.snapshots), top=top, lines_per_function=3)
        linecache.clearcache()  # the source lines were read for this answer; a daemon must not hoard them
        return spots


def capped_stacks(counts: Counter[str], limit: int = MAX_STACKS) -> dict[str, int]:
    """The ``limit`` most sampled stacks; the rest are summed into one ``OTHER_STACKS``
    frame, so the counts still add up to the process's samples."""
    if len(counts) <= limit:
        return dict(counts)
    kept = dict(counts.most_common(limit))
    kept[OTHER_STACKS] = sum(counts.values()) - sum(kept.values())
    return kept


@dataclass
class SnapshotStats:
    ok: int = 0
    failed: int = 0
    idle: int = 0  # rounds where the process ran no Python code: no samples, no failure
    cpu_seconds: float = 0.0
    problems: dict[str, str] = field(default_factory=dict)  # pid -> last reason


class Snapshotter:
    """Runs the rounds on its own thread; the sampler never waits for py-spy."""

    def __init__(self, config: SnapshotConfig, watcher: Watcher, lock: threading.Lock,
                 on_hotspots: Callable[[float, str, int, list[dict[str, Any]]], None]) -> None:
        self.config = config
        self.watcher = watcher
        self.watcher_lock = lock
        self.on_hotspots = on_hotspots
        self.rolling: dict[int, Rolling] = {}
        self.stats = SnapshotStats()
        self.available, self.reason = True, ""
        try:
            self.py_spy = stack_tools.find_py_spy()
        except stack_tools.StacksUnavailable as exc:
            self.py_spy = ""
            self.available, self.reason = False, str(exc)
        self._python: dict[tuple[int, float], bool] = {}
        self._retry_after: dict[int, float] = {}
        self._cursor = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # --------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if not self.config.enabled or not self.available:
            return
        self._thread = threading.Thread(target=self._loop, name="perfpilot-snapshots", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.kill()  # shutdown must not wait out a recording
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        # First round soon after start, so a fresh daemon has hot spots quickly.
        delay = min(self.config.every, 1.0)
        while not self._stop.wait(delay):
            started = time.monotonic()
            try:
                self.round()
            except Exception as exc:  # noqa: BLE001 - a bad round must not end snapshots
                log.warning("perfpilot daemon: snapshot round failed: %s", exc)
            delay = max(0.1, self.config.every - (time.monotonic() - started))

    # ------------------------------------------------------------------ rounds

    def candidates(self) -> list[tuple[int, list[str]]]:
        now = time.time()
        owners: dict[int, list[str]] = {}
        with self.watcher_lock:
            for group in self.watcher.groups:
                for pid in sorted(group.members):
                    info = self.watcher.info(pid)
                    if info is None or self._retry_after.get(pid, 0.0) > now:
                        continue
                    key = (pid, info.create_time)
                    if key not in self._python:
                        self._python[key] = looks_like_python(info)
                    if self._python[key]:
                        owners.setdefault(pid, []).append(group.watch)
            live = {pid for g in self.watcher.groups for pid in g.members}
        for pid in [p for p in self.rolling if p not in live]:
            del self.rolling[pid]
        self._python = {k: v for k, v in self._python.items() if k[0] in live}
        return sorted(owners.items())

    def round(self) -> int:
        """Snapshot up to ``max_per_round`` processes, round-robin; return how many succeeded."""
        todo = self.candidates()
        if not todo:
            return 0
        count = min(self.config.max_per_round, len(todo))
        start = self._cursor % len(todo)
        chosen = (todo[start:] + todo[:start])[:count]
        self._cursor += count
        done = 0
        for pid, watches in chosen:
            if self._stop.is_set():
                break
            done += self.snapshot(pid, watches)
        return done

    def snapshot(self, pid: int, watches: list[str]) -> int:
        fd, path = tempfile.mkstemp(prefix="perfpilot-daemon-", suffix=".txt")
        os.close(fd)
        argv = [self.py_spy, "record", "--pid", str(pid), "--duration", str(self.config.duration),
                "--rate", str(self.config.rate), "--format", "raw", "--output", path, "--nonblocking"]
        try:
            stderr, code = self._run(argv)
            try:
                text = open(path, encoding="utf-8", errors="replace").read()
            except OSError:
                text = ""
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        if self._stop.is_set():
            return 0
        if code == 0 and not text.strip():
            # py-spy exits 0 with no samples when the process ran no Python code on a CPU
            # during the window (blocked on a socket, asleep): nothing to show, nothing broken.
            # Counted as a failure it was reported as "missing: hot spots: py-spy failed".
            self.stats.idle += 1
            self.stats.problems.pop(str(pid), None)
            return 0
        attempt = stack_tools.classify(code, stderr, bool(text.strip()))
        now = time.time()
        if attempt.kind != "ok":
            self.stats.failed += 1
            if attempt.kind == "denied":
                reason = stack_tools.ptrace_denied_message(pid)
                self._retry_after[pid] = now + DENIED_RETRY_S
            else:
                reason = f"py-spy {attempt.kind}: {attempt.detail}"
                self._retry_after[pid] = now + FAILED_RETRY_S
            self.stats.problems[str(pid)] = reason[:400]
            if len(self.stats.problems) > 50:
                self.stats.problems.pop(next(iter(self.stats.problems)))
            return 0
        self.stats.ok += 1
        self.stats.problems.pop(str(pid), None)
        counts = hotspot_model.parse_collapsed(text)
        with self._lock:
            rolling = self.rolling.get(pid)
            if rolling is None:
                info = self.watcher.info(pid)
                rolling = self.rolling[pid] = Rolling(watches, deque(maxlen=self.config.keep),
                                                      name=info.name if info else "")
            rolling.watch = watches
            rolling.snapshots.append(counts)
            rolling.last_ts = now
            current = hotspot_model.aggregate(counts, top=self.config.top, lines_per_function=1, with_source=False)
        for watch in watches:
            self.on_hotspots(now, watch, pid, current)
        return 1

    def _run(self, argv: list[str]) -> tuple[str, int]:
        err = tempfile.TemporaryFile()
        try:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        except OSError as exc:
            err.close()
            return f"Error: cannot run py-spy: {exc}", 127
        self._child = child
        deadline = time.monotonic() + self.config.duration + 15
        status = 0
        while True:
            pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                self.stats.cpu_seconds += rusage.ru_utime + rusage.ru_stime
                child.returncode = os.waitstatus_to_exitcode(status)
                break
            if self._stop.is_set() or time.monotonic() > deadline:
                child.kill()
            time.sleep(0.05)
        self._child = None
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
        err.close()
        return text, child.returncode

    # ----------------------------------------------------------------- reading

    def hotspots(self, watch: str | None = None, stacks: bool = False) -> dict[str, list[dict[str, Any]]]:
        """``{watch: [{pid, name, snapshots, samples, last_snapshot, hotspots}]}``; with
        ``stacks`` each process also has ``stacks``: its merged snapshots as collapsed
        stacks (what ``perfpilot daemon hotspots --from`` merges across daemons)."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            items = list(self.rolling.items())
        for pid, rolling in items:
            for w in rolling.watch:
                if watch is not None and w != watch:
                    continue
                with self._lock:
                    spots = rolling.hotspots(self.config.top)
                    samples = sum(sum(c.values()) for c in rolling.snapshots)
                    n = len(rolling.snapshots)
                    collapsed = capped_stacks(hotspot_model.merge(rolling.snapshots)) if stacks else None
                entry = {"pid": pid, "name": rolling.name, "snapshots": n, "samples": samples,
                         "last_snapshot": rolling.last_ts, "hotspots": spots}
                if collapsed is not None:
                    entry["stacks"] = collapsed
                out.setdefault(w, []).append(entry)
        return out

    def by_process(self) -> dict[int, tuple[list[str], list[dict[str, Any]]]]:
        """``{pid: (watches, rolling hot spots with source)}`` for every process with snapshots."""
        with self._lock:
            items = list(self.rolling.items())
        out: dict[int, tuple[list[str], list[dict[str, Any]]]] = {}
        for pid, rolling in items:
            with self._lock:
                out[pid] = (list(rolling.watch), rolling.hotspots(self.config.top))
        return out
