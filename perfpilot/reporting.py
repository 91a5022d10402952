"""Figures a target reports about itself (loss, time per step, checkpoint stall...).

A target calls :func:`report_metric`; when it runs under perfpilot, the session sets
``PERFPILOT_METRICS_FILE`` and the figures land in the Profile's summary as
``reported.<name>`` (the last value reported for a name wins). Outside perfpilot the
call does nothing, so a script can keep it unconditionally. The protocol is one JSON
object per line, so targets in any language can write it without this package::

    {"name": "loss", "value": 0.123}
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

ENV_VAR = "PERFPILOT_METRICS_FILE"
PREFIX = "reported."


def report_metric(name: str, value: float) -> None:
    path = os.environ.get(ENV_VAR)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"name": str(name), "value": float(value)}) + "\n")


def read_reported(path: str | Path) -> tuple[dict[str, float], list[str]]:
    """(metrics, problems) from a metrics file; malformed lines are reported, not fatal."""
    metrics: dict[str, float] = {}
    problems: list[str] = []
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return metrics, problems
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry: Any = json.loads(line)
            value = float(entry["value"])
            if not math.isfinite(value):
                raise ValueError("not finite")
            metrics[PREFIX + str(entry["name"])] = value
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"line {number}: {exc}")
    return metrics, problems
