"""Units: one grammar for the figures people write in config files, flags and markers.

Every place that reads a duration, a size, an energy, a percentage or a ratio parses it here, so ``"2min"``
means the same in ``perfpilot.toml``, in ``[daemon]``, on the command line and in ``perf_budget``, and a
mistake gets the same one-line message everywhere.

A *quantity* is a number, optionally followed by a unit (spaces allowed, ``1e3`` allowed); units are
case-insensitive except where case is the meaning (``mJ`` is a millijoule, ``MJ`` a megajoule):

* duration: ``ns``, ``us``/``µs``, ``ms``, ``s``/``sec``, ``m``/``min``, ``h``, ``d``, ``w``
* size: ``B``; decimal ``k``/``kB``/``KB``, ``M``/``MB``, ``G``/``GB``, ``T``/``TB`` (powers of 1000);
  binary ``Ki``/``KiB``, ``Mi``/``MiB``, ``Gi``/``GiB``, ``Ti``/``TiB`` (powers of 1024). pytest-memray reads
  ``MB`` as MiB; we follow SI/IEC, so write ``MiB`` when you mean 2**20.
* energy: ``mJ``, ``J``, ``kJ``, ``MJ``, ``mWh``, ``Wh``, ``kWh``

A bare number is in the base unit: seconds, bytes, joules (``interval = 0.1``, ``max_db_bytes = 4096``).

Relative figures:

* percentage: ``10%`` is 0.10.
* ratio: ``1.5x`` (or ``1.5×``) is 1.5; where only a ratio is meant, a plain ``1.5`` is one too.
* a *change* (a threshold, a guard) is written either way: ``10%`` and ``1.1x`` both mean +10%.

What a bare ``10`` means where a percentage or change is read differs by place, and is chosen here, once:

* settings and the daemon (``threshold``, guards, ``cpu_saturation_pct``): a number above 1 is a percent,
  one at most 1 a fraction (``10`` and ``0.1`` are both 10%): :func:`parse_percent`.
* ``--perfpilot-compare-fail``: ``10%`` or ``2x``; a bare number below 1 is a fraction (``0.1`` is 10%) and
  ``10`` is refused as ambiguous (10% or 10x?): :func:`parse_change` with ``bare="fraction"``.
  ``bare="ratio"`` reads a bare ``1.5`` as 1.5x, for callers that speak in ratios.
* ``perf_budget`` markers: a number is in the base unit, like everywhere (``wall=0.2`` is 200 ms), but a
  string must name its unit (``peak_rss="50"`` is refused: 50 bytes is never what was meant).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from perfpilot.errors import ConfigError

Kind = Literal["duration", "size", "energy"]

DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0,
    "h": 3600.0, "d": 86400.0, "day": 86400.0, "days": 86400.0, "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
SIZE_UNITS: dict[str, float] = {
    "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
    "ki": 2.0**10, "kib": 2.0**10, "mi": 2.0**20, "mib": 2.0**20, "gi": 2.0**30, "gib": 2.0**30,
    "ti": 2.0**40, "tib": 2.0**40,
}
# Case-sensitive first: mJ and MJ differ by a factor of 10**9. Lower case is read as before (milli).
ENERGY_UNITS: dict[str, float] = {"mJ": 1e-3, "J": 1.0, "kJ": 1e3, "MJ": 1e6, "mWh": 3.6, "Wh": 3600.0,
                                  "kWh": 3.6e6}
_ENERGY_LOWER = {"mj": 1e-3, "j": 1.0, "kj": 1e3, "mwh": 3.6, "wh": 3600.0, "kwh": 3.6e6}

EXAMPLES: dict[str, str] = {"duration": "100ms, 1.5s or 2min", "size": "50MB or 1GiB", "energy": "2J or 1Wh"}
UNIT_LIST: dict[str, str] = {"duration": "ns, us, ms, s, min, h, d, w", "size": "B, kB, MB, GB, KiB, MiB, GiB",
                             "energy": "mJ, J, kJ, Wh, kWh"}

_QUANTITY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]+)?\s*$")
_NUMBER = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|x|×)?\s*$", re.IGNORECASE)


def _scale(kind: Kind, unit: str) -> float | None:
    if kind == "energy":
        if unit in ENERGY_UNITS:
            return ENERGY_UNITS[unit]
        # lower case reads as milli (as it always did); a capital M that is not MJ is refused, not guessed
        return None if unit.startswith("M") else _ENERGY_LOWER.get(unit.lower())
    table = DURATION_UNITS if kind == "duration" else SIZE_UNITS
    return table.get(unit.lower())


def parse_quantity(kind: Kind, value: Any, *, name: str, require_unit: bool = False) -> float:
    """A positive duration (seconds), size (bytes) or energy (joules) from a number or a string with a unit.

    ``require_unit``: a string must name its unit (``perf_budget(peak_rss="50")`` is refused: 50 bytes is
    never what was meant); a number is still in the base unit."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{name}: expected a {kind} like {EXAMPLES[kind]}, got {value!r}")
    if isinstance(value, str):
        match = _QUANTITY.match(value)
        if not match:
            raise ConfigError(f"{name}: expected a {kind} like {EXAMPLES[kind]}, got {value!r}")
        number, unit = float(match.group(1)), match.group(2)
        if unit is None and require_unit:
            raise ConfigError(f"{name}: {value!r} has no unit", hint=f"write it like {EXAMPLES[kind]}")
        scale = 1.0 if unit is None else _scale(kind, unit)
        if scale is None:
            raise ConfigError(f"{name}: unknown {kind} unit {unit!r} in {value!r}",
                              hint=f"use one of {UNIT_LIST[kind]}")
        number *= scale
    else:
        number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{name}: must be greater than zero, got {value!r}")
    return number


MAX_DURATION_S = 365 * 86400.0
# Below this a sampler spends its time reading /proc, not sleeping (1ns cost 1.6 s of CPU a
# second); py-spy's and /proc's own resolution is coarser anyway.
MIN_INTERVAL_S = 0.01


def parse_duration(value: Any, *, name: str = "duration") -> float:
    """``0.1``, ``"100ms"``, ``"2min"``, ``"30d"`` -> seconds (float, > 0, at most ``MAX_DURATION_S``:
    a timer longer than that overflows the OS's wait)."""
    seconds = parse_quantity("duration", value, name=name)
    if seconds > MAX_DURATION_S:
        raise ConfigError(f"{name}: {value!r} is too long; the most is 365 days")
    return seconds


def check_interval(seconds: float, *, name: str = "interval") -> float:
    """A sampling interval of at least ``MIN_INTERVAL_S``."""
    if seconds < MIN_INTERVAL_S:
        raise ConfigError(f"{name} {seconds * 1000:g}ms is below the minimum of 10ms: sampling that often "
                          "costs more CPU than it measures", hint="use 10ms or more")
    return seconds


def parse_size(value: Any, *, name: str = "size") -> int:
    """``4096``, ``"64MB"``, ``"512MiB"`` -> bytes (int, > 0)."""
    size = int(parse_quantity("size", value, name=name))
    if size <= 0:
        raise ConfigError(f"{name}: must be at least one byte, got {value!r}")
    return size


def parse_energy(value: Any, *, name: str = "energy") -> float:
    """``2``, ``"500 mJ"``, ``"1 Wh"`` -> joules (float, > 0)."""
    return parse_quantity("energy", value, name=name)


_LIKE = {"percentage": "2%", "ratio": "1.5x", "percentage or ratio": "10% or 1.1x"}


def _relative(value: Any, name: str, what: str) -> tuple[float, str | None]:
    """(number, suffix) where suffix is ``%``, ``x`` or None for a bare number."""
    match = None if isinstance(value, (bool, int, float)) else _NUMBER.match(str(value))
    if isinstance(value, bool) or (match is None and not isinstance(value, (int, float))):
        raise ConfigError(f"{name}: expected a {what} like {_LIKE[what]}, got {value!r}")
    if match is None:
        number, suffix = float(value), None
    else:
        number, suffix = float(match.group(1)), match.group(2)
        suffix = None if suffix is None else ("%" if suffix == "%" else "x")
    if not math.isfinite(number):
        raise ConfigError(f"{name}: expected a {what} like {_LIKE[what]}, got {value!r}")
    return number, suffix


def parse_percent(value: Any, *, name: str = "threshold") -> float:
    """``"2%"`` -> 0.02; a bare number above 1 is a percent (``2`` -> 0.02), one at most 1 a fraction."""
    number, suffix = _relative(value, name, "percentage")
    if suffix == "x":
        raise ConfigError(f"{name}: expected a percentage like 2%, got {value!r}")
    if suffix == "%":
        return number / 100.0
    return number / 100.0 if number > 1 else number


def parse_ratio(value: Any, *, name: str = "ratio") -> float:
    """``"1.5x"``, ``"1.5×"`` or a plain ``1.5`` -> 1.5 (positive)."""
    number, suffix = _relative(value, name, "ratio")
    if suffix == "%":
        raise ConfigError(f"{name}: expected a ratio like 1.5x, got {value!r}")
    if number <= 0:
        raise ConfigError(f"{name}: a ratio must be greater than zero, got {value!r}")
    return number


def parse_change(value: Any, *, name: str, bare: Literal["fraction", "ratio"] = "fraction") -> float:
    """A relative increase as a fraction: ``"10%"`` -> 0.10, ``"1.1x"`` -> 0.10, ``"2x"`` -> 1.0.

    A bare number below 1 is a fraction (``0.1`` -> 0.10). One of 1 or more: with ``bare="fraction"`` it is
    refused as ambiguous (10% or 10x?); with ``bare="ratio"`` it is a ratio (``1.5`` -> 0.5)."""
    number, suffix = _relative(value, name, "percentage or ratio")
    if suffix is None and bare == "ratio" and number >= 1:
        suffix = "x"
    if suffix == "x":
        if number <= 1:
            raise ConfigError(f"{name}: a ratio threshold must be above 1x, got {value!r}",
                              hint="write e.g. 1.1x for +10%")
        return number - 1.0
    if suffix == "%":
        return number / 100.0
    if number >= 1:
        # "10" almost always means 10%, not the 1000% a fraction of 10 would be
        raise ConfigError(f"{name}: {value!r} is ambiguous",
                          hint=f"write {value}% for {value} percent or {value}x for a ratio (a bare number "
                               "below 1 is a fraction: 0.1 = 10%)")
    return number


def parse_bool(value: Any, *, name: str = "value") -> bool:
    """``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off`` -> bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def format_quantity(kind: str, value: float) -> str:
    """A figure in the unit a person reads best: ``0.2`` s -> ``200.0 ms``, 2**30 B -> ``1.0 GiB``."""
    if kind == "duration":
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
