"""How the optimiser's figures read: the CI's real level, sizes in binary units, short text
cut at a word boundary. Shared by the terminal lines, the report and the CLI summary."""

from __future__ import annotations

import math
from typing import Any, Mapping

_SIZE_UNITS = (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10))


def ci_label(verdict: Mapping[str, Any] | None, default: float = 0.95) -> str:
    """``"97.7% CI"``: the level the interval was computed at (``Verdict.confidence``), or the
    engine's own name for the interval (``interval``: "noise bound" for a deterministic metric)."""
    named = (verdict or {}).get("interval")
    if isinstance(named, str) and named:
        return named
    level = (verdict or {}).get("confidence")
    if not isinstance(level, (int, float)) or not 0 < level < 1:
        level = default
    text = f"{level * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}% CI"


def human_bytes(value: float) -> str:
    """``13233472`` -> ``"12.6 MiB"``."""
    if not math.isfinite(value):
        return str(value)
    for unit, scale in _SIZE_UNITS:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}" if abs(value) / scale < 1000 else f"{value / scale:.0f} {unit}"
    return f"{value:.0f} B"


def human_value(metric: str, value: Any) -> str:
    """A metric's value in its unit: seconds for time, binary units for sizes."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    from perfpilot.profilers.metrics import metric_kind

    kind = metric_kind(metric)
    if kind == "size":
        return human_bytes(float(value))
    if kind == "time":
        return f"{value:.4g} s"
    return f"{value:.4g}"


def shorten(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` characters at a word boundary, with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[:width - 1]
    space = cut.rfind(" ")
    if space >= width // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"
