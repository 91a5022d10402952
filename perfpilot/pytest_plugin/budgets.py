"""Budgets for the pytest plugin: the ``perf_budget`` marker, quantities with units, and
the ``--perfpilot-compare-fail`` thresholds.

Quantities and thresholds follow perfpilot's one grammar (:mod:`perfpilot.units`): time in ``ns`` ... ``h``,
sizes in ``B``, ``kB``/``MB``/``GB`` (powers of 1000) or ``KiB``/``MiB``/``GiB`` (powers of 1024), energy
in ``mJ``/``J``/``Wh``; a number is in the base unit (seconds, bytes, joules), while a string must name
its unit (``peak_rss="50"`` is refused: 50 bytes is never what was meant). A threshold is
``10%`` or a ratio ``2x``; a bare number below 1 is a fraction, and ``wall:10`` is refused as ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from perfpilot import units
from perfpilot.errors import ConfigError

MARKER = "perf_budget"

# metric -> (kind in perfpilot.units, base unit). Names are those of perfpilot.profilers.metrics.
BUDGET_METRICS: dict[str, tuple[units.Kind, str]] = {
    "wall": ("duration", "s"),
    "cpu": ("duration", "s"),
    "peak_rss": ("size", "B"),
    "io": ("size", "B"),
    "io_read": ("size", "B"),
    "io_write": ("size", "B"),
    "energy": ("energy", "J"),
    "gpu_memory": ("size", "B"),
}

NEAR_LIMIT = 0.8  # a figure at or above this share of its budget is "near the limit"


class BudgetError(ConfigError):
    """A ``perf_budget`` marker or a budget/threshold option is malformed."""


def parse_quantity(metric: str, value: Any) -> float:
    """``("wall", "200 ms")`` -> 0.2; ``("peak_rss", "1 GiB")`` -> 1073741824.0."""
    if metric not in BUDGET_METRICS:
        raise BudgetError(f"unknown budget metric {metric!r}", hint=f"use one of {', '.join(BUDGET_METRICS)}")
    try:
        return units.parse_quantity(BUDGET_METRICS[metric][0], value, name=metric, require_unit=True)
    except ConfigError as exc:
        raise BudgetError(exc.message, hint=exc.hint) from None


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
    return units.format_quantity(BUDGET_METRICS.get(metric, ("other", ""))[0], value)


MAX_THRESHOLD = 10.0  # 1000%: fail at 11x; more says "never", which is not a threshold


def parse_thresholds(text: str) -> dict[str, float]:
    """``"wall:10%,peak_rss:20%"`` -> ``{"wall": 0.1, "peak_rss": 0.2}`` (``0.1`` and ``1.1x`` also read as 10%)."""
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
            fraction = units.parse_change(amount, name=f"--perfpilot-compare-fail: {metric}")
        except ConfigError as exc:
            raise BudgetError(exc.message, hint=exc.hint) from None
        if not 0 < fraction <= MAX_THRESHOLD:
            raise BudgetError(f"--perfpilot-compare-fail: {metric} threshold must be above 0% and at most "
                              f"{MAX_THRESHOLD:.0%}, got {amount!r}")
        out[metric] = fraction
    if not out:
        raise BudgetError("--perfpilot-compare-fail is empty", hint="write METRIC:PERCENT pairs like wall:10%")
    return out
