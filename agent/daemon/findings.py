"""Findings: conditions worth a person's attention, judged over a window, not one tick.

=================  ========================================================================
kind               raised when (defaults; ``[daemon.findings]`` changes them)
=================  ========================================================================
cpu_saturation     host CPU >= 90% busy, or each process of a watch averages >= 90% of one
                   core (a single-threaded or GIL-bound process cannot go faster), for 90%
                   of the samples in ``window`` (60 s)
memory_growth      a watch's RSS grows linearly over ``memory_window`` (10 min): least-squares
                   slope > 0 with r^2 >= 0.8 and >= 16 MiB grown; the slope is reported
gpu_idle           a watch holds >= 256 MiB of GPU memory while every GPU is <= 5% busy,
                   for 90% of ``window``
io_wait            host I/O wait >= 20% of CPU time, for 90% of ``window``
cpu_steal          host steal >= 10% (a noisy neighbour on a VM), for 90% of ``window``
restarts           >= 3 restarts of a watch within ``restarts_window`` (10 min)
=================  ========================================================================

A finding is active while its condition holds; it is resolved when the condition holds
for fewer than half the samples of its window (hysteresis, so one quiet tick does not
flap it). Each change is written to the store and shown by ``/api/findings``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from perfpilot.agent.daemon.config import FindingConfig

KINDS = ("cpu_saturation", "memory_growth", "gpu_idle", "io_wait", "cpu_steal", "restarts")
SUSTAINED = 0.9
RESOLVE = 0.5
MIN_POINTS = 5


@dataclass
class Series:
    points: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, ts: float, value: float, keep: float) -> None:
        self.points.append((ts, value))
        while self.points and ts - self.points[0][0] > keep:
            self.points.popleft()

    def window(self, now: float, span: float) -> list[tuple[float, float]]:
        return [(t, v) for t, v in self.points if now - t <= span]


def _fraction(points: list[tuple[float, float]], test: Callable[[float], bool], span: float,
              interval: float) -> float | None:
    """Share of the window's samples meeting ``test``; None while the window is not yet covered."""
    if len(points) < MIN_POINTS or points[-1][0] - points[0][0] < span - 2 * interval:
        return None
    return sum(1 for _t, v in points if test(v)) / len(points)


def linear_growth(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(slope per second, r^2, growth over the span) of a least-squares line."""
    t = np.array([p[0] for p in points], dtype=float)
    v = np.array([p[1] for p in points], dtype=float)
    t = t - t[0]
    if np.ptp(t) <= 0 or np.ptp(v) <= 0:
        return 0.0, 0.0, 0.0
    slope, intercept = np.polyfit(t, v, 1)
    predicted = slope * t + intercept
    ss_res = float(np.sum((v - predicted) ** 2))
    ss_tot = float(np.sum((v - v.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    return float(slope), r2, float(slope * (t[-1] - t[0]))


class FindingEngine:
    def __init__(self, config: FindingConfig, interval: float) -> None:
        self.config = config
        self.interval = interval
        self.series: dict[str, Series] = {}
        self.active: dict[tuple[str, str], dict[str, Any]] = {}
        self.resolved: deque[dict[str, Any]] = deque(maxlen=100)
        self.raised_total: dict[str, int] = {k: 0 for k in KINDS}
        self._keep = max(config.window, config.memory_window) + 5 * interval

    def _add(self, key: str, ts: float, value: float | None) -> None:
        if value is None:
            return
        self.series.setdefault(key, Series()).add(ts, float(value), self._keep)

    def observe(self, ts: float, host: dict[str, float], watches: dict[str, Any],
                gpu_devices: dict[str, float]) -> None:
        self._add("host.cpu", ts, host.get("cpu.utilization_pct"))
        self._add("host.iowait", ts, host.get("cpu.iowait_pct"))
        self._add("host.steal", ts, host.get("cpu.steal_pct"))
        gpu_util = [v for k, v in gpu_devices.items() if k.endswith(".utilization_pct")]
        self._add("gpu.util_max", ts, max(gpu_util) if gpu_util else None)
        for watch, state in watches.items():
            if state.processes:
                self._add(f"{watch}\0cpu_per_process", ts, state.cpu_pct / state.processes)
                self._add(f"{watch}\0rss", ts, state.rss_bytes)
            if state.gpu_memory_bytes is not None:
                self._add(f"{watch}\0gpu_mem", ts, state.gpu_memory_bytes)

    def evaluate(self, now: float, watches: dict[str, Any],
                 restart_times: dict[str, Iterable[float]]) -> list[dict[str, Any]]:
        """Raise, update or resolve findings; return the ones that changed."""
        c = self.config
        changed: list[dict[str, Any]] = []

        def sustained(kind: str, entity: str, key: str, test: Callable[[float], bool], message: Callable[[float], str],
                      details: Callable[[list[tuple[float, float]]], dict[str, Any]]) -> None:
            series = self.series.get(key)
            points = series.window(now, c.window) if series else []
            share = _fraction(points, test, c.window, self.interval)
            if share is None:
                return
            mean = float(np.mean([v for _t, v in points]))
            self._judge(kind, entity, share >= SUSTAINED, share < RESOLVE, now, message(mean),
                        {"window_s": c.window, "share": round(share, 3), "mean": round(mean, 3), **details(points)},
                        changed)

        sustained("cpu_saturation", "host", "host.cpu", lambda v: v >= c.cpu_saturation_pct,
                  lambda m: f"host CPU {m:.0f}% busy for {c.window:.0f}s", lambda p: {})
        sustained("io_wait", "host", "host.iowait", lambda v: v >= c.iowait_pct,
                  lambda m: f"host CPUs wait for I/O {m:.0f}% of the time over {c.window:.0f}s", lambda p: {})
        sustained("cpu_steal", "host", "host.steal", lambda v: v >= c.steal_pct,
                  lambda m: f"hypervisor steals {m:.0f}% of CPU time (noisy neighbour) over {c.window:.0f}s",
                  lambda p: {})
        for watch in watches:
            sustained("cpu_saturation", watch, f"{watch}\0cpu_per_process", lambda v: v >= c.cpu_saturation_pct,
                      lambda m, w=watch: f"{w}: each process uses {m:.0f}% of a core for {c.window:.0f}s "
                                         "(CPU-bound; see its hot spots)", lambda p: {})
            self._memory(watch, now, changed)
            self._gpu_idle(watch, now, changed)
            times = [t for t in restart_times.get(watch, ()) if now - t <= c.restarts_window]
            self._judge("restarts", watch, len(times) >= c.restarts, len(times) < c.restarts, now,
                        f"{watch}: restarted {len(times)} times in {c.restarts_window / 60:.0f} min",
                        {"restarts": len(times), "window_s": c.restarts_window}, changed)
        return changed

    def _memory(self, watch: str, now: float, changed: list[dict[str, Any]]) -> None:
        c = self.config
        series = self.series.get(f"{watch}\0rss")
        points = series.window(now, c.memory_window) if series else []
        if len(points) < 10 or points[-1][0] - points[0][0] < c.memory_window / 2:
            return
        slope, r2, growth = linear_growth(points)
        leaking = slope > 0 and r2 >= c.memory_min_r2 and growth >= c.memory_min_growth_bytes
        fine = slope <= 0 or r2 < c.memory_min_r2 / 2 or growth < c.memory_min_growth_bytes / 2
        span = points[-1][0] - points[0][0]
        self._judge("memory_growth", watch, leaking, fine, now,
                    f"{watch}: RSS grows {slope * 3600 / 2**20:.1f} MiB/h (r^2={r2:.2f}, +{growth / 2**20:.1f} MiB "
                    f"in {span / 60:.0f} min): leak suspected",
                    {"slope_bytes_per_s": round(slope, 3), "slope_mib_per_hour": round(slope * 3600 / 2**20, 3),
                     "r2": round(r2, 4), "growth_bytes": round(growth), "span_s": round(span, 1),
                     "rss_bytes": points[-1][1]}, changed)

    def _gpu_idle(self, watch: str, now: float, changed: list[dict[str, Any]]) -> None:
        c = self.config
        mem = self.series.get(f"{watch}\0gpu_mem")
        util = self.series.get("gpu.util_max")
        if mem is None or util is None:
            return
        mem_points = mem.window(now, c.window)
        util_points = util.window(now, c.window)
        held = _fraction(mem_points, lambda v: v >= c.gpu_min_memory_bytes, c.window, self.interval)
        idle = _fraction(util_points, lambda v: v <= c.gpu_idle_pct, c.window, self.interval)
        if held is None or idle is None:
            return
        share = min(held, idle)
        held_bytes = mem_points[-1][1]
        self._judge("gpu_idle", watch, share >= SUSTAINED, share < RESOLVE, now,
                    f"{watch}: holds {held_bytes / 2**30:.2f} GiB of GPU memory while GPUs are "
                    f"<= {c.gpu_idle_pct:.0f}% busy for {c.window:.0f}s",
                    {"gpu_memory_bytes": held_bytes, "share": round(share, 3), "window_s": c.window}, changed)

    def _judge(self, kind: str, entity: str, raise_it: bool, resolve_it: bool, now: float, message: str,
               details: dict[str, Any], changed: list[dict[str, Any]]) -> None:
        key = (kind, entity)
        current = self.active.get(key)
        if current is None and raise_it:
            current = {"kind": kind, "entity": entity, "severity": "warning", "message": message,
                       "details": details, "first_seen": now, "last_seen": now, "active": True, "proposal": None}
            self.active[key] = current
            self.raised_total[kind] += 1
            changed.append(current)
        elif current is not None and resolve_it:
            current.update(active=False, last_seen=now)
            del self.active[key]
            self.resolved.append(current)
            changed.append(current)
        elif current is not None:
            current.update(message=message, details=details, last_seen=now)
            changed.append(current)

    def listing(self) -> list[dict[str, Any]]:
        return [*self.active.values(), *reversed(self.resolved)]
