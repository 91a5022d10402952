"""Output equivalence: does the candidate still produce what the baseline produced?

``output_check`` setting:

* ``none`` (default) -- only the tests judge correctness;
* ``exact`` -- the run command's stdout must be byte-identical;
* ``numeric`` or ``numeric:1e-3`` -- stdout must match with every number within a
  relative tolerance (default 1e-6) and all other text identical (timings printed by
  the program make this useless: prefer ``reported.*`` then);
* ``reported.<name>`` or ``reported.<name>:2%`` -- the figure the program reports
  through :mod:`perfpilot.reporting` (e.g. a final loss) must be within the tolerance
  (default 1e-6 relative) of the baseline's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from perfpilot.config import parse_percent
from perfpilot.errors import ConfigError
from perfpilot.profilers.profile import Profile

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|inf", re.IGNORECASE)
DEFAULT_RTOL = 1e-6


@dataclass(frozen=True)
class OutputCheck:
    mode: str  # none | exact | numeric | reported
    tolerance: float = DEFAULT_RTOL
    metric: str = ""

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def describe(self) -> str:
        if self.mode == "reported":
            return f"{self.metric} within {self.tolerance:.3g} (relative) of the baseline"
        if self.mode == "numeric":
            return f"stdout equal, numbers within {self.tolerance:.3g} (relative)"
        return {"exact": "stdout identical", "none": "off"}[self.mode]

    def compare(self, baseline: Profile, candidate: Profile) -> str | None:
        """None when equivalent, else why not (one line)."""
        if self.mode == "none":
            return None
        if self.mode == "reported":
            a, b = baseline.summary.get(self.metric), candidate.summary.get(self.metric)
            if b is None:
                return f"the candidate did not report {self.metric}"
            if a is None:
                return f"the baseline did not report {self.metric}"
            if not _close(float(a), float(b), self.tolerance):
                return f"{self.metric} is {float(b):.6g}, baseline {float(a):.6g} (tolerance {self.tolerance:.3g})"
            return None
        out_a, out_b = _stdout(baseline), _stdout(candidate)
        if self.mode == "exact":
            return None if out_a == out_b else _first_difference(out_a, out_b)
        words_a, words_b = _NUMBER.split(out_a), _NUMBER.split(out_b)
        nums_a, nums_b = _NUMBER.findall(out_a), _NUMBER.findall(out_b)
        if words_a != words_b or len(nums_a) != len(nums_b):
            return _first_difference(out_a, out_b)
        for x, y in zip(nums_a, nums_b):
            if not _close(float(x), float(y), self.tolerance):
                return f"output number {y} differs from the baseline's {x} beyond {self.tolerance:.3g}"
        return None


def _close(a: float, b: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0) or a == b


def _stdout(profile: Profile) -> str:
    return profile.output[0].decode("utf-8", "replace") if profile.output else ""


def _first_difference(a: str, b: str) -> str:
    lines_a, lines_b = a.splitlines(), b.splitlines()
    for n, (x, y) in enumerate(zip(lines_a, lines_b), 1):
        if x != y:
            return f"output differs at line {n}: {y[:80]!r} (baseline {x[:80]!r})"
    return f"output has {len(lines_b)} lines, baseline {len(lines_a)}"


def parse_output_check(spec: str | None) -> OutputCheck:
    text = (spec or "none").strip()
    head, _, tail = text.partition(":")
    try:
        tolerance = parse_percent(tail, name="output_check tolerance") if tail else DEFAULT_RTOL
    except ConfigError:
        raise ConfigError(f"output_check: bad tolerance in {text!r}", hint="e.g. numeric:1e-3 or reported.loss:2%") from None
    if head in {"none", "exact"}:
        return OutputCheck(head)
    if head == "numeric":
        return OutputCheck("numeric", tolerance)
    if head.startswith("reported.") and len(head) > len("reported."):
        return OutputCheck("reported", tolerance, head)
    raise ConfigError(f"output_check: unknown mode {text!r}",
                      hint="use none, exact, numeric[:rtol] or reported.<name>[:tolerance]")
