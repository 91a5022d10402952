"""Cumulative per-process counters of a process tree (context switches, page faults...):
public API for any collector that turns per-process counters into a tree total.

Each process counts from its birth, or, when it was already running at an attach, from
the first update. A process is (pid, start time), so a reused pid starts again from
zero. The total is the sum of every update's deltas, so what an exited process had
reached at its last update is kept.
"""

from __future__ import annotations

from typing import Mapping, Sequence


class TreeCounters:
    """``width`` counters per process, summed over the tree."""

    def __init__(self, width: int, baseline_existing: bool) -> None:
        self.total = [0] * width
        self._last: dict[int, tuple[int, tuple[int, ...]]] = {}  # pid -> (start time, counters)
        self._baseline = baseline_existing

    def update(self, values: Mapping[int, tuple[int, Sequence[int]]]) -> list[int]:
        """``{pid: (start time, counters)}`` of the processes read now (the others are
        gone); returns how much each counter grew over the tree since the last update."""
        delta = [0] * len(self.total)
        zero = (0,) * len(self.total)
        for pid, (start, current) in values.items():
            prev = self._last.get(pid)
            if prev is not None and prev[0] == start:
                base = prev[1]
            else:
                # Attached: what already ran counts from now. Anything else was born
                # during the run, so all of it is ours.
                base = tuple(current) if self._baseline else zero
            for i, value in enumerate(current):
                delta[i] += value - base[i]
            self._last[pid] = (start, tuple(current))
        for pid in [p for p in self._last if p not in values]:
            del self._last[pid]
        self._baseline = False
        for i, grown in enumerate(delta):
            self.total[i] += grown
        return delta

    def starttime(self, pid: int) -> int | None:
        """The start time this pid had at the last update (None: not tracked)."""
        known = self._last.get(pid)
        return known[0] if known is not None else None


def rates(names: Sequence[str], delta: Sequence[int], seconds: float) -> dict[str, float]:
    """``{name: delta / seconds}`` rounded to 0.1 (empty when no time passed)."""
    if seconds <= 0:
        return {}
    return {name: round(value / seconds, 1) for name, value in zip(names, delta)}
