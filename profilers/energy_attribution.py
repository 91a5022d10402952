"""Energy per hot spot.

How it is attributed (also written into every Profile that has it, under
``annotations["energy_attribution"]["method"]``):

1. Stacks are recorded in consecutive py-spy windows (1 s, then 5 s on long runs), each
   from the moment its py-spy samples to the moment the next one does (handoffs overlap,
   so windows tile the sampled part of the run).
2. For each energy domain in ``summary["energy"]`` (``cpu``, ``gpu0``, ...), the energy
   that fell inside a window is the integral of that domain's power series
   (``power.<domain>_w`` or ``<domain>.power_w``) over the window, scaled so that the whole
   run integrates to the domain's total. Without a power series, energy is spread evenly
   over time (said so as ``shape: "uniform"``).
3. A window's energy is split between functions by their share of that window's samples:
   ``self`` by the leaf frame (adds up across functions), ``total`` by every function on
   the stack (a caller includes its callees, so totals overlap).
4. Energy in windows with no samples (the target idle or not yet Python, or the gaps
   between windows) stays *unattributed* and is reported as such.

Caveats, stated in the report too: package-level counters (RAPL) and power estimates
include other processes on the host; GPU energy is split by the Python code running at
the time, which is approximate for asynchronous GPU work; a domain whose ``source`` is
``estimate`` makes every figure derived from it an estimate.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any, Iterable, Mapping, Protocol, Sequence

from perfpilot.profilers import hotspots as hs

METHOD = (
    "per py-spy window: energy measured (or estimated) in the window x the function's share of the window's "
    "samples; self = leaf frame (adds up), total = anywhere on the stack (overlaps); windows without samples "
    "stay unattributed"
)


class WindowLike(Protocol):
    """What :class:`perfpilot.profilers.stacks.Window` provides: a wall-clock span and
    samples per function key (:func:`perfpilot.profilers.hotspots.function_key`)."""

    start: float
    end: float
    samples: int
    self_counts: Mapping[str, int]
    total_counts: Mapping[str, int]


def power_series_name(domain: str, metrics: Iterable[str]) -> str | None:
    """The series that gives a domain's power over time, if the collectors recorded one."""
    names = list(metrics)
    for candidate in (f"power.{domain}_w", f"{domain}.power_w", f"power.{domain}_power_w"):
        if candidate in names:
            return candidate
    loose = [n for n in names if n.startswith("power.") and n.endswith("_w") and domain in n]
    return loose[0] if len(loose) == 1 else None


def cumulative_energy(times: Sequence[float], watts: Sequence[float | None]) -> tuple[list[float], list[float]]:
    """(t, joules so far) by the trapezoid rule over the samples that exist."""
    pairs = [(float(t), max(0.0, float(w))) for t, w in zip(times, watts) if w is not None]
    if len(pairs) < 2:
        return [], []
    ts = [pairs[0][0]]
    cum = [0.0]
    for (t0, w0), (t1, w1) in zip(pairs, pairs[1:]):
        ts.append(t1)
        cum.append(cum[-1] + (t1 - t0) * (w0 + w1) / 2.0)
    return ts, cum


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Linear interpolation, flat beyond the ends (numpy.interp's rule; numpy costs
    a tenth of a second to import, paid by every profile)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1 = xs[i - 1], xs[i]
    if x1 == x0:
        return ys[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)


def window_energy(domain_joules: float, windows: Sequence[tuple[float, float]], duration: float,
                  curve: tuple[list[float], list[float]] | None) -> tuple[list[float], str]:
    """Joules of one domain inside each (start, end) window (seconds since t=0)."""
    if curve is not None and len(curve[0]) >= 2 and curve[1][-1] > 0:
        t, cum = curve
        # Outside the series the curve is flat: scaling to the total puts that energy
        # where the power was actually seen.
        scale = domain_joules / cum[-1]
        return [scale * (_interp(b, t, cum) - _interp(a, t, cum)) for a, b in windows], "series"
    span = max(duration, 1e-9)
    return [domain_joules * max(0.0, min(b, span) - max(a, 0.0)) / span for a, b in windows], "uniform"


def attribute(profile: Any, windows: Sequence[WindowLike], t0_wall: float) -> None:
    """Add ``energy_j`` / ``energy_total_j`` / ``energy_by_domain`` / ``energy_estimated``
    to each hot spot and write the method and per-domain totals to annotations."""
    energy: Mapping[str, Mapping[str, Any]] = profile.summary.get("energy") or {}
    if not energy or not windows or not profile.hotspots:
        if not energy and profile.hotspots:
            profile.annotations["energy_attribution"] = {
                "method": METHOD, "domains": {},
                "note": "no energy figures in this profile (power collector unavailable or disabled)",
            }
        return
    spans = [(w.start - t0_wall, w.end - t0_wall) for w in windows]
    counts = [(w.self_counts, w.total_counts) for w in windows]
    totals = [w.samples for w in windows]
    times = profile.series.get("t", [])
    values = profile.series.get("values", {})

    self_j: Counter[str] = Counter()
    incl_j: Counter[str] = Counter()
    by_domain: dict[str, Counter[str]] = {}
    domains: dict[str, Any] = {}
    estimated_domains: set[str] = set()
    for domain, entry in energy.items():
        try:
            joules = float(entry["joules"])
        except (KeyError, TypeError, ValueError):
            continue
        source = str(entry.get("source", "unknown"))
        series_name = power_series_name(domain, values)
        curve = cumulative_energy(times, values[series_name]) if series_name else None
        per_window, shape = window_energy(joules, spans, profile.duration_s, curve)
        attributed = 0.0
        dom: Counter[str] = Counter()
        for e_w, (self_c, incl_c), n in zip(per_window, counts, totals):
            if n <= 0 or e_w <= 0:
                continue
            attributed += e_w
            for key, c in self_c.items():
                dom[key] += e_w * c / n
            for key, c in incl_c.items():
                incl_j[key] += e_w * c / n
        self_j.update(dom)
        by_domain[domain] = dom
        if source == "estimate":
            estimated_domains.add(domain)
        domains[domain] = {
            "joules": round(joules, 6),
            "source": source,
            "attributed_j": round(attributed, 6),
            "unattributed_j": round(max(0.0, joules - attributed), 6),
            "shape": f"series {series_name}" if shape == "series" else "uniform (no power series)",
        }
    if not domains:
        return
    for spot in profile.hotspots:
        key = hs.function_key(spot["function"], spot["file"])
        spot["energy_j"] = round(self_j.get(key, 0.0), 6)
        spot["energy_total_j"] = round(incl_j.get(key, 0.0), 6)
        spot["energy_by_domain"] = {d: round(c.get(key, 0.0), 6) for d, c in by_domain.items()}
        spot["energy_estimated"] = any(by_domain[d].get(key, 0.0) > 0 for d in estimated_domains)
    caveats = []
    if estimated_domains:
        caveats.append(f"{', '.join(sorted(estimated_domains))}: estimate, not a measurement")
    if any(d.startswith("gpu") for d in domains):
        caveats.append("GPU energy is split by the Python code running at the time (approximate for async GPU work)")
    caveats.append("host-level counters and estimates include other processes running at the same time")
    profile.annotations["energy_attribution"] = {
        "method": METHOD,
        "windows": len(windows),
        "estimate": bool(estimated_domains),
        "domains": domains,
        "caveats": caveats,
    }
