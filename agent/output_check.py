"""Output equivalence: does the candidate still produce what the baseline produced?

``output_check`` setting:

* ``auto`` (default) -- ``exact`` when the baseline's runs of the run command all print
  the same stdout, otherwise off (the loop says so once: output that varies between
  runs of the unchanged program cannot judge a candidate);
* ``ignore`` (or ``none``) -- only the tests judge correctness;
* ``exact`` -- the run command's stdout must be identical;
* ``numeric`` or ``numeric:1e-3`` -- stdout must match with every number within a
  relative tolerance (default 1e-6) and all other text identical (timings printed by
  the program make this useless: prefer ``reported.*`` then);
* ``reported.<name>`` or ``reported.<name>:2%`` -- the figure the program reports
  through :mod:`perfpilot.reporting` (e.g. a final loss) must be within the tolerance
  (default 1e-6 relative) of the baseline's;
* ``command:<cmd>`` -- the project's own check: ``<cmd> BASELINE CANDIDATE`` is run in the
  project with the paths of two files holding the two stdouts, and exit 0 means
  equivalent (e.g. a script that drops the lines with timings before comparing). Files
  the command names are protected like the run and test harness.

A rejected candidate's reason is "output changed", with a short unified diff.
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from perfpilot.config import parse_percent
from perfpilot.errors import ConfigError
from perfpilot.profilers.profile import Profile

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|inf", re.IGNORECASE)
DEFAULT_RTOL = 1e-6
DIFF_LINES = 24
COMMAND_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class OutputCheck:
    mode: str  # auto | none | exact | numeric | reported | command
    tolerance: float = DEFAULT_RTOL
    metric: str = ""
    command: str = ""

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def describe(self) -> str:
        if self.mode == "command":
            return f"the project's own check: {self.command}"
        if self.mode == "auto":
            return "stdout identical when the baseline's is deterministic"
        if self.mode == "reported":
            return f"{self.metric} within {self.tolerance:.3g} (relative) of the baseline"
        if self.mode == "numeric":
            return f"stdout equal, numbers within {self.tolerance:.3g} (relative)"
        return {"exact": "stdout identical", "none": "off"}[self.mode]

    def compare(self, baseline: Profile, candidate: Profile, *, cwd: Path | None = None) -> str | None:
        """None when equivalent, else why not (a line, then a short diff where there is one)."""
        if self.mode == "none":
            return None
        if self.mode == "command":
            return self._run_command(_stdout(baseline), _stdout(candidate), cwd)
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
        if self.mode in {"exact", "auto"}:
            return None if out_a == out_b else _first_difference(out_a, out_b)
        words_a, words_b = _NUMBER.split(out_a), _NUMBER.split(out_b)
        nums_a, nums_b = _NUMBER.findall(out_a), _NUMBER.findall(out_b)
        if words_a != words_b or len(nums_a) != len(nums_b):
            return _first_difference(out_a, out_b)
        for x, y in zip(nums_a, nums_b):
            if not _close(float(x), float(y), self.tolerance):
                return f"output number {y} differs from the baseline's {x} beyond {self.tolerance:.3g}"
        return None

    def _run_command(self, out_a: str, out_b: str, cwd: Path | None) -> str | None:
        with tempfile.TemporaryDirectory(prefix="perfpilot-output-") as tmp:
            paths = [Path(tmp, "baseline.txt"), Path(tmp, "candidate.txt")]
            for path, text in zip(paths, (out_a, out_b)):
                path.write_text(text, encoding="utf-8", errors="replace")
            argv = [*shlex.split(self.command), *map(str, paths)]
            try:
                done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace",
                                      timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
            except FileNotFoundError:
                raise ConfigError(f"output_check command not found: {argv[0]}",
                                  hint="output_check = \"command:python check_output.py\"") from None
            except subprocess.TimeoutExpired:
                return f"the output check {self.command!r} did not finish within {COMMAND_TIMEOUT_S:.0f}s"
        if done.returncode == 0:
            return None
        said = (done.stdout + done.stderr).strip()
        return (f"the project's output check ({self.command}) exited with {done.returncode}"
                + (f": {said[-1500:]}" if said else "") + "\n" + short_diff(out_a, out_b))


def stdout_of(profile: Profile) -> str:
    return _stdout(profile)


def short_diff(a: str, b: str, limit: int = DIFF_LINES) -> str:
    """A unified diff of baseline (a) and candidate (b) output, at most ``limit`` lines."""
    lines = list(difflib.unified_diff(a.splitlines(), b.splitlines(), "baseline stdout", "candidate stdout",
                                      lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + [f"… ({len(lines) - limit} more diff lines)"]
    return "\n".join(line if len(line) <= 200 else line[:199] + "…" for line in lines)


def _close(a: float, b: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0) or a == b


def _stdout(profile: Profile) -> str:
    return profile.output[0].decode("utf-8", "replace") if profile.output else ""


def _first_difference(a: str, b: str) -> str:
    lines_a, lines_b = a.splitlines(), b.splitlines()
    head = f"output has {len(lines_b)} lines, baseline {len(lines_a)}"
    for n, (x, y) in enumerate(zip(lines_a, lines_b), 1):
        if x != y:
            head = f"output differs at line {n}: {y[:80]!r} (baseline {x[:80]!r})"
            break
    return f"{head}\n{short_diff(a, b)}"


def first_variation(outputs: list[str]) -> str | None:
    """None when every output is the same, else where the first one that differs does."""
    for other in outputs[1:]:
        if other != outputs[0]:
            return _first_difference(outputs[0], other).splitlines()[0]
    return None


def parse_output_check(spec: str | None) -> OutputCheck:
    text = (spec or "auto").strip()
    if text.startswith("command:"):
        command = text[len("command:"):].strip()
        if not command:
            raise ConfigError("output_check: command: needs a command", hint='e.g. "command:python check_output.py"')
        try:
            shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"output_check command: {exc}") from None
        return OutputCheck("command", command=command)
    head, _, tail = text.partition(":")
    try:
        tolerance = parse_percent(tail, name="output_check tolerance") if tail else DEFAULT_RTOL
    except ConfigError:
        raise ConfigError(f"output_check: bad tolerance in {text!r}", hint="e.g. numeric:1e-3 or reported.loss:2%") from None
    if head in {"none", "ignore", "off"}:
        return OutputCheck("none")
    if head in {"exact", "auto"}:
        return OutputCheck(head)
    if head == "numeric":
        return OutputCheck("numeric", tolerance)
    if head.startswith("reported.") and len(head) > len("reported."):
        return OutputCheck("reported", tolerance, head)
    raise ConfigError(f"output_check: unknown mode {text!r}",
                      hint="use auto, ignore, exact, numeric[:rtol], reported.<name>[:tolerance] or command:<cmd>")
