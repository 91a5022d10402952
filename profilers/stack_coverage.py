"""How much of a run the Python stacks cover, and, when it is too little, why, in words.

``coverage_pct`` is the share of the run's wall time (launch to exit) during which a
py-spy was sampling: from the moment it printed "Sampling process" (it has read one
stack) to the moment it stopped or a successor took over. Time before a Python process
existed (a launcher's own work), py-spy's attach time, and any gap between windows are
not covered. ``python_coverage_pct`` is the same over the time from the first Python
process's start to the end: what a Python profiler could have covered at best.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

COVERAGE_NOTE_PCT = 90.0  # below this, the summary says what was missed and why
FEW_SAMPLES = 30  # below this, hot spots are rough and the reports say so
_NOTABLE = 0.03  # a cause is named when it cost at least this share of the run


class Span(Protocol):
    start: float
    end: float


def covered_seconds(spans: Sequence[Span], lo: float, hi: float) -> float:
    """Length of the union of spans, clipped to [lo, hi] (windows overlap at handoffs)."""
    total, reach = 0.0, lo
    for start, end in sorted((max(s.start, lo), min(s.end, hi)) for s in spans):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def figures(spans: Sequence[Span], t0: float, duration: float, python_seen: float | None) -> dict[str, Any]:
    """``coverage_pct`` and what it is made of, in seconds since the run's start."""
    out: dict[str, Any] = {}
    if duration <= 0:
        return out
    end = t0 + duration
    covered = covered_seconds(spans, t0, end)
    out["coverage_pct"] = round(min(100.0, 100.0 * covered / duration), 1)
    if python_seen is not None:
        started = min(max(0.0, python_seen - t0), duration)
        out["python_started_s"] = round(started, 3)
        if duration - started > 0:
            # what a launcher did before the interpreter existed has no Python stacks
            out["python_coverage_pct"] = round(min(100.0, 100.0 * covered / (duration - started)), 1)
    if spans:
        first = min(s.start for s in spans)
        out["first_sample_s"] = round(max(0.0, first - t0), 3)
        out["unsampled_after_attach_s"] = round(max(0.0, (end - min(first, end)) - covered), 3)
    return out


def note(status: dict[str, Any], duration: float, samples: int) -> str | None:
    """One sentence when coverage is low or samples are few, naming the causes."""
    pct = status.get("coverage_pct")
    parts: list[str] = []
    if pct is not None and pct < COVERAGE_NOTE_PCT:
        parts.append(f"stacks cover {pct:.0f}% of the run: {_causes(status, duration)}")
    if samples < FEW_SAMPLES:
        parts.append(f"only {samples} stack sample{'s' if samples != 1 else ''}: hot spots and the flame graph "
                     f"are rough (the totals are exact)")
    return "; ".join(parts) or None


def _causes(status: dict[str, Any], duration: float) -> str:
    causes: list[str] = []
    started = status.get("python_started_s")
    first = status.get("first_sample_s")
    gaps = status.get("unsampled_after_attach_s", 0.0)
    if started is None:
        causes.append("no Python process was seen in the tree")
    elif started > _NOTABLE * duration:
        causes.append(f"Python started {started:.2f} s into the run (the launcher ran before it)")
    if first is not None and started is not None and first - started > _NOTABLE * duration:
        causes.append(f"py-spy took {first - started:.2f} s to attach after Python started")
    if gaps > _NOTABLE * duration:
        causes.append(f"{gaps:.2f} s after attaching went unsampled (py-spy windows ended early or failed to attach)")
    if duration < 1.0:
        causes.append(f"the run lasted only {duration:.2f} s")
    return "; ".join(causes) or "py-spy attached late"
