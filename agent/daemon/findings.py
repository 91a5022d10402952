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

import math
from collections import deque
from typing import Any, Callable, Iterable

import numpy as np

from perfpilot.agent.daemon.config import FindingConfig

KINDS = ("cpu_saturation", "memory_growth", "gpu_idle", "io_wait", "cpu_steal", "restarts")
SUSTAINED = 0.9
RESOLVE = 0.5
MIN_POINTS = 5


class Series:
    """A window of (time, value) points; ``hits`` counts those meeting ``test``, kept
    up to date as points come and go, so judging a window costs O(1), not a pass over it."""

    __slots__ = ("points", "keep", "test", "hits", "total", "_adds")

    def __init__(self, keep: float, test: Callable[[float], bool] | None = None) -> None:
        self.points: deque[tuple[float, float, bool]] = deque()
        self.keep = keep
        self.test = test
        self.hits = 0
        self.total = 0.0
        self._adds = 0

    def add(self, ts: float, value: float) -> None:
        hit = bool(self.test(value)) if self.test is not None else False
        self.points.append((ts, value, hit))
        self.hits += hit
        self.total += value
        self._adds += 1
        if self._adds % 4096 == 0:
            self.total = math.fsum(p[1] for p in self.points)  # no drift from running sums
        self.prune(ts)

    def prune(self, now: float) -> None:
        points, keep = self.points, self.keep
        while points and now - points[0][0] > keep:
            _t, value, hit = points.popleft()
            self.hits -= hit
            self.total -= value

    def window(self, now: float, span: float) -> list[tuple[float, float]]:
        return [(t, v) for t, v, _hit in self.points if now - t <= span]


def _covered(points: deque[tuple[float, float, bool]] | list[tuple[float, float]], span: float,
             interval: float) -> bool:
    return len(points) >= MIN_POINTS and points[-1][0] - points[0][0] >= span - 2 * interval


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


class _WatchSeries:
    __slots__ = ("cpu", "rss", "gpu_mem", "memory_next")

    def __init__(self, c: FindingConfig, slack: float) -> None:
        self.cpu = Series(c.window + slack, lambda v: v >= c.cpu_saturation_pct)
        self.rss = Series(c.memory_window + slack)
        self.gpu_mem = Series(c.window + slack, lambda v: v >= c.gpu_min_memory_bytes)
        self.memory_next = -math.inf


class FindingEngine:
    """Judges findings every tick at O(1) per watch: window shares come from running
    counts, and the memory-growth regression (a least-squares fit over ``memory_window``)
    is refitted at most every ``memory_window / 60`` (10 s by default): a leak is a
    trend over minutes, and refitting 600 points for 50 watches every second would cost
    more than the rest of the daemon."""

    def __init__(self, config: FindingConfig, interval: float) -> None:
        c = self.config = config
        self.interval = interval
        slack = 2 * interval + 1e-6
        self.host = {
            "cpu": Series(c.window + slack, lambda v: v >= c.cpu_saturation_pct),
            "iowait": Series(c.window + slack, lambda v: v >= c.iowait_pct),
            "steal": Series(c.window + slack, lambda v: v >= c.steal_pct),
            "gpu_util": Series(c.window + slack, lambda v: v <= c.gpu_idle_pct),
        }
        self._slack = slack
        self.watches: dict[str, _WatchSeries] = {}
        self.active: dict[tuple[str, str], dict[str, Any]] = {}
        self.resolved: deque[dict[str, Any]] = deque(maxlen=100)
        self.raised_total: dict[str, int] = {k: 0 for k in KINDS}
        self.memory_every = max(interval, config.memory_window / 60.0)

    def observe(self, ts: float, host: dict[str, float], watches: dict[str, Any],
                gpu_devices: dict[str, float]) -> None:
        h = self.host
        for key, metric in (("cpu", "cpu.utilization_pct"), ("iowait", "cpu.iowait_pct"), ("steal", "cpu.steal_pct")):
            value = host.get(metric)
            if value is not None:
                h[key].add(ts, float(value))
        if gpu_devices:
            gpu_util = [v for k, v in gpu_devices.items() if k.endswith(".utilization_pct")]
            if gpu_util:
                h["gpu_util"].add(ts, float(max(gpu_util)))
        series = self.watches
        for watch, state in watches.items():
            ws = series.get(watch)
            if ws is None:
                ws = series[watch] = _WatchSeries(self.config, self._slack)
            if state.processes:
                ws.cpu.add(ts, state.cpu_pct / state.processes)
                ws.rss.add(ts, float(state.rss_bytes))
            if state.gpu_memory_bytes is not None:
                ws.gpu_mem.add(ts, float(state.gpu_memory_bytes))

    def _share(self, series: Series, now: float) -> float | None:
        """Share of the window's points meeting the series' test; None until the window is covered."""
        c = self.config
        series.prune(now)
        points = series.points
        # The series keeps a little more than the window (slack for late ticks); drop it here.
        while points and now - points[0][0] > c.window:
            _t, value, hit = points.popleft()
            series.hits -= hit
            series.total -= value
        if not _covered(points, c.window, self.interval):
            return None
        return series.hits / len(points)

    def _sustained(self, kind: str, entity: str, series: Series | None, now: float,
                   message: Callable[[float], str], changed: list[dict[str, Any]]) -> None:
        if series is None:
            return
        share = self._share(series, now)
        if share is None:
            return
        raise_it, resolve_it = share >= SUSTAINED, share < RESOLVE
        if (kind, entity) not in self.active and not raise_it:
            return  # the usual case: nothing to raise, nothing to format
        mean = series.total / len(series.points)
        self._judge(kind, entity, raise_it, resolve_it, now, message(mean),
                    {"window_s": self.config.window, "share": round(share, 3), "mean": round(mean, 3)}, changed)

    def evaluate(self, now: float, watches: dict[str, Any],
                 restart_times: dict[str, Iterable[float]]) -> list[dict[str, Any]]:
        """Raise, update or resolve findings; return the ones that changed."""
        c = self.config
        changed: list[dict[str, Any]] = []
        h = self.host
        self._sustained("cpu_saturation", "host", h["cpu"], now,
                        lambda m: f"host CPU {m:.0f}% busy for {c.window:.0f}s", changed)
        self._sustained("io_wait", "host", h["iowait"], now,
                        lambda m: f"host CPUs wait for I/O {m:.0f}% of the time over {c.window:.0f}s", changed)
        self._sustained("cpu_steal", "host", h["steal"], now,
                        lambda m: f"hypervisor steals {m:.0f}% of CPU time (noisy neighbour) over {c.window:.0f}s",
                        changed)
        for watch in watches:
            ws = self.watches.get(watch)
            if ws is not None:
                self._sustained("cpu_saturation", watch, ws.cpu, now,
                                lambda m, w=watch: f"{w}: each process uses {m:.0f}% of a core for {c.window:.0f}s "
                                                   "(CPU-bound; see its hot spots)", changed)
                if now >= ws.memory_next:
                    ws.memory_next = now + self.memory_every - 1e-6
                    self._memory(watch, ws.rss, now, changed)
                if ws.gpu_mem.points:
                    self._gpu_idle(watch, ws.gpu_mem, now, changed)
            times = restart_times.get(watch)
            count = sum(1 for t in times if now - t <= c.restarts_window) if times else 0
            if count >= c.restarts or ("restarts", watch) in self.active:
                self._judge("restarts", watch, count >= c.restarts, count < c.restarts, now,
                            f"{watch}: restarted {count} times in {c.restarts_window / 60:.0f} min",
                            {"restarts": count, "window_s": c.restarts_window}, changed)
        return changed

    def _memory(self, watch: str, series: Series, now: float, changed: list[dict[str, Any]]) -> None:
        c = self.config
        points = series.window(now, c.memory_window)
        if len(points) < 10 or points[-1][0] - points[0][0] < c.memory_window / 2:
            return
        slope, r2, growth = linear_growth(points)
        leaking = slope > 0 and r2 >= c.memory_min_r2 and growth >= c.memory_min_growth_bytes
        fine = slope <= 0 or r2 < c.memory_min_r2 / 2 or growth < c.memory_min_growth_bytes / 2
        if ("memory_growth", watch) not in self.active and not leaking:
            return
        span = points[-1][0] - points[0][0]
        self._judge("memory_growth", watch, leaking, fine, now,
                    f"{watch}: RSS grows {slope * 3600 / 2**20:.1f} MiB/h (r^2={r2:.2f}, +{growth / 2**20:.1f} MiB "
                    f"in {span / 60:.0f} min): leak suspected",
                    {"slope_bytes_per_s": round(slope, 3), "slope_mib_per_hour": round(slope * 3600 / 2**20, 3),
                     "r2": round(r2, 4), "growth_bytes": round(growth), "span_s": round(span, 1),
                     "rss_bytes": points[-1][1]}, changed)

    def _gpu_idle(self, watch: str, mem: Series, now: float, changed: list[dict[str, Any]]) -> None:
        c = self.config
        held = self._share(mem, now)
        idle = self._share(self.host["gpu_util"], now)
        if held is None or idle is None:
            return
        share = min(held, idle)
        held_bytes = mem.points[-1][1]
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
