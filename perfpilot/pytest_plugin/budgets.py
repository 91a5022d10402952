"""Budgets for the pytest plugin: the ``perf_budget`` marker, quantities with units, and
the ``--perfpilot-compare-fail`` thresholds.

Units (a bare number is in the base unit: seconds, bytes, joules):

* time: ``ns``, ``us``/``µs``, ``ms``, ``s``, ``min``, ``h``
* size: ``B``; decimal ``kB``/``KB``, ``MB``, ``GB``, ``TB`` (powers of 1000); binary
  ``KiB``, ``MiB``, ``GiB``, ``TiB`` (powers of 1024). pytest-memray reads ``MB`` as MiB;
  we follow SI/IEC, so write ``MiB`` when you mean 2**20.
* energy: ``mJ``, ``J``, ``kJ``, ``mWh``, ``Wh``, ``kWh``
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from perfpilot.errors import ConfigError

MARKER = "perf_budget"

# metric -> (kind, base unit). Names are those of perfpilot.profilers.metrics.
BUDGET_METRICS: dict[str, tuple[str, str]] = {
    "wall": ("time", "s"),
    "cpu": ("time", "s"),
    "peak_rss": ("size", "B"),
    "io": ("size", "B"),
    "io_read": ("size", "B"),
    "io_write": ("size", "B"),
    "energy": ("energy", "J"),
    "gpu_memory": ("size", "B"),
}

UNITS: dict[str, dict[str, float]] = {
    "time": {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0},
    "size": {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
             "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30, "tib": 2.0**40},
    "energy": {"mj": 1e-3, "j": 1.0, "kj": 1e3, "mwh": 3.6, "wh": 3600.0, "kwh": 3.6e6},
}

NEAR_LIMIT = 0.8  # a figure at or above this share of its budget is "near the limit"

_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]+)?\s*$")


class BudgetError(ConfigError):
    """A ``perf_budget`` marker or a budget/threshold option is malformed."""


def parse_quantity(metric: str, value: Any) -> float:
    """``("wall", "200 ms")`` -> 0.2; ``("peak_rss", "1 GiB")`` -> 1073741824.0."""
    if metric not in BUDGET_METRICS:
        raise BudgetError(f"unknown budget metric {metric!r}", hint=f"use one of {', '.join(BUDGET_METRICS)}")
    kind, base = BUDGET_METRICS[metric]
    examples = {"time": "'200 ms'", "size": "'50 MB' or '1 GiB'", "energy": "'2 J'"}[kind]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BudgetError(f"{metric}={value!r} is not a quantity", hint=f"write it like {examples}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _QUANTITY.match(value)
        if not match:
            raise BudgetError(f"{metric}={value!r} is not a quantity", hint=f"write it like {examples}")
        unit = match.group(2)
        if unit is None:
            raise BudgetError(f"{metric}={value!r} has no unit", hint=f"write it like {examples}")
        table = UNITS[kind]
        key = unit if kind == "time" else unit.lower()
        if key not in table:
            raise BudgetError(f"{metric}={value!r}: unknown {kind} unit {unit!r}",
                              hint=f"use one of {', '.join(u for u in table if u != 'b') if kind != 'size' else 'B, kB, MB, GB, KiB, MiB, GiB'}")
        number = float(match.group(1)) * table[key]
    if not math.isfinite(number) or number <= 0:
        raise BudgetError(f"{metric}={value!r} must be a positive quantity", hint=f"write it like {examples}")
    return number


@dataclass(frozen=True)
class Budget:
    limits: Mapping[str, float]  # metric -> limit in base units
    spec: Mapping[str, str]  # metric -> what the user wrote


def budget_from_marker(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Budget:
    if args:
        raise BudgetError(f"{MARKER} takes keyword arguments only, got positional {args!r}",
                          hint="write e.g. perf_budget(wall='200 ms')")
    if not kwargs:
        raise BudgetError(f"{MARKER} needs at least one limit", hint=f"one of {', '.join(BUDGET_METRICS)}")
    return Budget({m: parse_quantity(m, v) for m, v in kwargs.items()}, {m: str(v) for m, v in kwargs.items()})


def merge_budgets(budgets: list[Budget]) -> Budget | None:
    """Markers nearest the test win (``iter_markers`` yields them closest first)."""
    if not budgets:
        return None
    limits: dict[str, float] = {}
    spec: dict[str, str] = {}
    for budget in reversed(budgets):
        limits.update(budget.limits)
        spec.update(budget.spec)
    return Budget(limits, spec)


def format_quantity(metric: str, value: float) -> str:
    kind = BUDGET_METRICS.get(metric, ("other", ""))[0]
    if kind == "time":
        if value < 1e-3:
            return f"{value * 1e6:.0f} µs"
        if value < 1:
            return f"{value * 1e3:.1f} ms"
        return f"{value:.3f} s"
    if kind == "size":
        for unit, scale in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
            if abs(value) >= scale:
                return f"{value / scale:.1f} {unit}"
        return f"{value:.0f} B"
    if kind == "energy":
        return f"{value:.3g} J"
    return f"{value:.4g}"


MAX_THRESHOLD = 10.0  # 1000%: fail at 11x; more says "never", which is not a threshold


def parse_thresholds(text: str) -> dict[str, float]:
    """``"wall:10%,peak_rss:20%"`` -> ``{"wall": 0.1, "peak_rss": 0.2}`` (``0.1`` also reads as 10%)."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        metric, sep, amount = part.partition(":")
        metric = metric.strip()
        if not sep or metric not in BUDGET_METRICS:
            raise BudgetError(f"--perfpilot-compare-fail: cannot read {part!r}",
                              hint=f"write METRIC:PERCENT pairs like wall:10%,peak_rss:20%; metrics: {', '.join(BUDGET_METRICS)}")
        amount = amount.strip()
        try:
            fraction = float(amount[:-1]) / 100 if amount.endswith("%") else float(amount)
        except ValueError:
            raise BudgetError(f"--perfpilot-compare-fail: {amount!r} is not a percentage for {metric}",
                              hint="write it like wall:10%") from None
        if not amount.endswith("%") and fraction >= 1:
            # "wall:10" almost always means 10%, not the 1000% a fraction of 10 would be
            raise BudgetError(f"--perfpilot-compare-fail: {metric}:{amount} is ambiguous",
                              hint=f"write {metric}:{amount}% for {amount} percent (a bare number is a fraction: 0.1 = 10%)")
        if not 0 < fraction <= MAX_THRESHOLD:
            raise BudgetError(f"--perfpilot-compare-fail: {metric} threshold must be above 0% and at most "
                              f"{MAX_THRESHOLD:.0%}, got {amount!r}")
        out[metric] = fraction
    if not out:
        raise BudgetError("--perfpilot-compare-fail is empty", hint="write METRIC:PERCENT pairs like wall:10%")
    return out
