"""Memory collector: process-tree RSS (and USS/PSS when cheap), exact peak RSS,
page faults, and the machine's memory and swap.

Totals (``summary``):

``peak_rss_bytes``
    the larger of the rusage ``maxrss`` (exact peak of the largest single process;
    launched targets) and the sampled peak of the tree's summed RSS. Live
    descendants' ``VmHWM`` at the end is included too. Linux carries the launching
    process's own high-water mark into a child's ``maxrss`` (across fork/vfork and
    exec), so a ``maxrss`` not above perfpilot's own peak at launch cannot be told
    from perfpilot's: then the figure is the sampled peak (tree RSS each tick, each
    process's ``VmHWM`` once a second) and ``peak_rss_source`` says ``sampled``
    instead of ``rusage``.
``memory_rss_mean_bytes``, ``memory_uss_peak_bytes``, ``memory_pss_peak_bytes``
    (sampled), ``memory_minor_faults`` / ``memory_major_faults`` (exact from rusage
    when launched, else sampled), ``memory_system_available_min_bytes``,
    ``memory_swap_used_peak_bytes``.

Series: ``memory.rss_bytes`` (every tick, from the tick's shared
:class:`~perfpilot.profilers.snapshot.TreeSnapshot`), ``memory.uss_bytes`` / ``memory.pss_bytes``
(at most once a second, see below), ``memory.minor_faults_per_s`` /
``memory.major_faults_per_s`` (once a second, from the same shared read), ``memory.system_used_bytes``,
``memory.system_available_bytes``, ``memory.swap_used_bytes`` (twice a second).

USS/PSS come from ``/proc/<pid>/smaps_rollup``, which makes the kernel walk the
process's page tables: ~30 us for a small process, milliseconds for one with gigabytes
mapped. The pass is timed with the sampler thread's own CPU clock and its period is
stretched so that it never costs more than ``SMAPS_BUDGET`` of one core.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Mapping

from perfpilot import hookimpl
from perfpilot.config import Settings
from perfpilot.profilers.counters import TreeCounters, rates
from perfpilot.profilers.procfs import STAT_MAJFLT, STAT_MINFLT, STAT_STARTTIME, ProcFiles, proc_stat, read_file
from perfpilot.profilers.snapshot import ProcSample
from perfpilot.profilers.target import Target

SMAPS_MIN_INTERVAL_S = 1.0
SMAPS_BUDGET = 0.002  # fraction of one core the USS/PSS pass may use
FAULTS_INTERVAL_S = 1.0
SYSTEM_INTERVAL_S = 0.5


def proc_smaps_rollup(pid: int, files: ProcFiles | None = None) -> tuple[int, int] | None:
    """(USS, PSS) in bytes: private pages, and pages shared weighted by sharers."""
    data = files.read(pid, "smaps_rollup") if files else read_file(f"/proc/{pid}/smaps_rollup")
    if not data:
        return None
    uss = pss = 0
    for line in data.splitlines():
        if line.startswith(b"Pss:"):
            pss = int(line.split()[1]) * 1024
        elif line.startswith(b"Private_"):
            uss += int(line.split()[1]) * 1024
    return uss, pss


def proc_hwm(pid: int, files: ProcFiles | None = None) -> int | None:
    """Peak RSS (``VmHWM``) of a live process, bytes."""
    data = files.read(pid, "status") if files else read_file(f"/proc/{pid}/status")
    if not data:
        return None
    for line in data.splitlines():
        if line.startswith(b"VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def system_memory(files: ProcFiles | None = None) -> dict[str, int]:
    """Selected ``/proc/meminfo`` fields in bytes."""
    data = (files.read(0, "meminfo", 8192) if files else read_file("/proc/meminfo")) or b""
    wanted = {b"MemTotal", b"MemAvailable", b"SwapTotal", b"SwapFree"}
    out: dict[str, int] = {}
    for line in data.splitlines():
        key, _, rest = line.partition(b":")
        if key in wanted:
            out[key.decode()] = int(rest.split()[0]) * 1024
    return out


ROOT_HWM_FAST_S = 0.005  # the command's VmHWM read period in its first second (~15 us of CPU a read)
ROOT_HWM_SLOW_S = 0.02  # and after: under 0.1% of a core


class _RootHwmWatch(threading.Thread):
    """Reads the launched command's ``VmHWM`` until it exits (a zombie has none) or is told
    to stop; ``peak`` is the highest read."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="perfpilot-root-hwm", daemon=True)
        self.pid = pid
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._done.is_set():
            hwm = proc_hwm(self.pid)
            if hwm is None:
                return
            self.peak = max(self.peak, hwm)
            self._done.wait(ROOT_HWM_FAST_S if time.monotonic() - start < 1.0 else ROOT_HWM_SLOW_S)

    def finish(self) -> int:
        self._done.set()
        self.join(1.0)
        return self.peak


class MemoryCollector:
    name = "memory"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.target: Target | None = None
        self._rss_peak = 0
        self._hwm_peak = 0
        self._root_watch: _RootHwmWatch | None = None
        self._rss_sum = 0.0
        self._rss_n = 0
        self._uss_peak: int | None = None
        self._pss_peak: int | None = None
        self._smaps_next = 0.0
        self._smaps_ok = os.path.exists("/proc/self/smaps_rollup")
        self._faults = TreeCounters(2, baseline_existing=False)
        self._faults_last_now: float | None = None
        self._system_last_now: float | None = None
        self._avail_min: int | None = None
        self._swap_peak: int | None = None

    def available(self) -> tuple[bool, str]:
        if not os.path.exists("/proc/self/statm"):
            return False, "needs Linux /proc (not found on this system)"
        if not self._smaps_ok:
            return True, "no /proc/<pid>/smaps_rollup (kernel < 4.14): USS/PSS not sampled"
        return True, ""

    def start(self, target: Target) -> None:
        self.target = target
        # The command's own peak, for when the launcher's hides it in rusage (see stop()).
        if target.launched:
            self._root_watch = _RootHwmWatch(target.pid)
            self._root_watch.start()
        self._faults = TreeCounters(2, baseline_existing=not target.launched)

    def sample(self, now: float) -> dict[str, float]:
        assert self.target is not None
        snap = self.target.snapshot(now)
        stats = snap.procs
        pids = list(stats)
        rss = snap.rss_bytes
        self._rss_peak = max(self._rss_peak, rss)
        self._rss_sum += rss
        self._rss_n += 1
        out: dict[str, float] = {"memory.rss_bytes": float(rss)}
        if self._smaps_ok and now >= self._smaps_next:
            out.update(self._smaps(now, pids))
        if self._faults_last_now is None or now - self._faults_last_now >= FAULTS_INTERVAL_S:
            out.update(self._page_faults(now, stats))
        if self._system_last_now is None or now - self._system_last_now >= SYSTEM_INTERVAL_S:
            out.update(self._system(now))
        return out

    def _smaps(self, now: float, pids: list[int]) -> dict[str, float]:
        cost_start = time.thread_time()
        uss = pss = 0
        files = self.target.proc_files  # type: ignore[union-attr]
        for pid in pids:
            found = proc_smaps_rollup(pid, files)
            if found is not None:
                uss += found[0]
                pss += found[1]
        cost = time.thread_time() - cost_start
        self._smaps_next = now + max(SMAPS_MIN_INTERVAL_S, cost / SMAPS_BUDGET)
        self._uss_peak = max(self._uss_peak or 0, uss)
        self._pss_peak = max(self._pss_peak or 0, pss)
        return {"memory.uss_bytes": float(uss), "memory.pss_bytes": float(pss)}

    def _page_faults(self, now: float, stats: Mapping[int, ProcSample]) -> dict[str, float]:
        for pid in stats:
            self._hwm_peak = max(self._hwm_peak, proc_hwm(pid) or 0)
        delta = self._faults.update({pid: (p.starttime, (p.minor_faults, p.major_faults)) for pid, p in stats.items()})
        last, self._faults_last_now = self._faults_last_now, now
        if last is None:
            return {}
        return rates(("memory.minor_faults_per_s", "memory.major_faults_per_s"), delta, now - last)

    def _system(self, now: float) -> dict[str, float]:
        self._system_last_now = now
        info = system_memory(self.target.proc_files)  # type: ignore[union-attr]
        if "MemTotal" not in info:
            return {}
        avail = info.get("MemAvailable", 0)
        swap_used = info.get("SwapTotal", 0) - info.get("SwapFree", 0)
        self._avail_min = avail if self._avail_min is None else min(self._avail_min, avail)
        self._swap_peak = swap_used if self._swap_peak is None else max(self._swap_peak, swap_used)
        return {
            "memory.system_used_bytes": float(info["MemTotal"] - avail),
            "memory.system_available_bytes": float(avail),
            "memory.swap_used_bytes": float(swap_used),
        }

    def stop(self) -> dict[str, Any]:
        assert self.target is not None
        target = self.target
        if self._root_watch is not None:
            self._hwm_peak = max(self._hwm_peak, self._root_watch.finish())
            self._root_watch = None
        peak = self._rss_peak
        exact = target.exact_totals() if target.launched else None
        out: dict[str, Any] = {}
        # Live descendants at the end: nothing in the tree has waited for them yet.
        alive = [p.pid for p in target.processes() if p.pid != target.pid]
        source = "sampled"
        if exact is not None:
            maxrss = int(exact["maxrss_bytes"])
            launcher = target.launcher_hwm_bytes
            if launcher is None or maxrss > launcher:
                peak = max(peak, maxrss)
                source = "rusage"
            else:
                peak = max(peak, self._hwm_peak)
            minor, major = exact["minflt"], exact["majflt"]
            for pid in alive:
                fields = proc_stat(pid)
                known = self._faults.starttime(pid)
                if fields is not None and (known is None or int(fields[STAT_STARTTIME]) == known):
                    minor += int(fields[STAT_MINFLT])
                    major += int(fields[STAT_MAJFLT])
                    peak = max(peak, proc_hwm(pid) or 0)
        else:
            minor, major = self._faults.total
            peak = max(peak, self._hwm_peak)
        out["peak_rss_bytes"] = int(peak)
        out["peak_rss_source"] = source
        out["memory_minor_faults"] = int(minor)
        out["memory_major_faults"] = int(major)
        if self._rss_n:
            out["memory_rss_mean_bytes"] = self._rss_sum / self._rss_n
        if self._uss_peak is not None:
            out["memory_uss_peak_bytes"] = self._uss_peak
            out["memory_pss_peak_bytes"] = self._pss_peak
        if self._avail_min is not None:
            out["memory_system_available_min_bytes"] = self._avail_min
            out["memory_swap_used_peak_bytes"] = self._swap_peak
        return out


@hookimpl
def perfpilot_register_collectors(register: Any) -> None:
    register(MemoryCollector)
