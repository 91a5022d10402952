"""The correctness gate: a candidate's tests must pass every time, not once.

A test that depends on set or dict order of strings passes or fails with
``PYTHONHASHSEED``; a single lucky run let a fast, wrong change through. So every test
run of a candidate (and of the baseline) gets its own explicit hash seed, drawn fresh
for each candidate, and the tests run ``test_repeats`` times (default 3); the first
failure rejects, and the seed that failed is named so the user can reproduce it
(``PYTHONHASHSEED=<seed> <test command>``). When the project's test interpreter has
pytest-randomly, each run also gets its own test order (``--randomly-seed`` through
``PYTEST_ADDOPTS``), named the same way.

The baseline's tests get the same repeats: a project whose own tests pass on some
seeds and fail on others is told which test failed and how often, before any proposal
is tried, instead of getting random rejections later.

Why 3 by default: a wrong change guarded by a test that passes for 1 seed in 8 gets
through 3 seeds with probability 1/512, and the combined result is re-tested with fresh
seeds before the patch is written (1/32768 in all). Each repeat costs one more run of
the test command per candidate (measured on examples/slow_python: see README).
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from perfpilot.errors import ConfigError

DEFAULT_REPEATS = 3
MAX_SEED = 4294967295  # PYTHONHASHSEED's range
_FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)
_RANDOMLY_REFUSED = "--randomly-seed"


@dataclass
class TestRun:
    """One run of the test command: the seed it ran with and how it ended."""

    seed: int
    passed: bool
    seconds: float
    order_seed: int | None = None  # pytest-randomly's --randomly-seed, when used
    failed: list[str] = field(default_factory=list)  # test ids the runner named as failing
    output: str = ""

    def reproduce(self, command: str) -> str:
        """The shell line that repeats this run."""
        env = f"PYTHONHASHSEED={self.seed}"
        if self.order_seed is not None:
            env += f" PYTEST_ADDOPTS=--randomly-seed={self.order_seed}"
        return f"{env} {command}"

    def describe(self) -> str:
        text = f"PYTHONHASHSEED={self.seed}"
        if self.order_seed is not None:
            text += f", test order --randomly-seed={self.order_seed}"
        return text

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("output")
        data["seconds"] = round(self.seconds, 3)
        return data


RunOnce = Callable[[int, "int | None"], TestRun]


@dataclass
class GateResult:
    runs: list[TestRun]

    @property
    def passed(self) -> bool:
        return bool(self.runs) and all(r.passed for r in self.runs)

    @property
    def first_failure(self) -> TestRun | None:
        return next((r for r in self.runs if not r.passed), None)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    def failure_detail(self, command: str, planned: int) -> str:
        """Why the gate rejected, with the seed to reproduce it, then the output's tail."""
        bad = self.first_failure
        assert bad is not None
        index = self.runs.index(bad) + 1
        passed = [r.describe() for r in self.runs if r.passed]
        head = (f"tests failed with {bad.describe()} (run {index} of up to {planned}"
                + (f"; passed with {', '.join(passed)}" if passed else "") + ")"
                + (f": {', '.join(bad.failed[:5])}" if bad.failed else ""))
        # The first line is what the terminal shows; the line to reproduce it is the report's.
        return f"{head}\nReproduce: {bad.reproduce(command)}\n{bad.output}"


class SeedSource:
    """Fresh hash seeds; ``rng`` is injectable so a test can replay a sequence."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.SystemRandom()

    def draw(self, n: int) -> list[int]:
        seeds: list[int] = []
        while len(seeds) < n:
            seed = self.rng.randint(1, MAX_SEED)  # 0 means "hash randomisation off": not a seed to name
            if seed not in seeds:
                seeds.append(seed)
        return seeds


def run_gate(run_once: RunOnce, seeds: Sequence[int], *, order: bool, stop_on_failure: bool = True) -> GateResult:
    """Run the tests once per seed (the order seed is the hash seed when ``order``)."""
    runs: list[TestRun] = []
    for seed in seeds:
        run = run_once(seed, seed if order else None)
        runs.append(run)
        if not run.passed and stop_on_failure:
            break
    return GateResult(runs)


def run_test_command(argv: Sequence[str], cwd: Path, env: Mapping[str, str],
                     timeout: float | None) -> tuple[bool, str, float]:
    """(passed, output, seconds) of one run of the test command."""
    t0 = time.monotonic()
    try:
        # Its own process group: on a timeout (or Ctrl-C) the whole tree goes, not just the
        # test runner; a hung child left running would skew every later measurement.
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", stdin=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError:
        raise ConfigError(f"test command not found: {argv[0]}", hint="check `test` (is it on PATH?)") from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        stdout, stderr = _drain(proc)
        return False, (f"{stdout}{stderr}\n(the tests did not finish within {timeout:.0f}s; "
                       "they and every process they started were stopped)"), time.monotonic() - t0
    except BaseException:
        _kill_group(proc.pid)
        _drain(proc)
        raise
    _kill_group(proc.pid)  # whatever the tests left running in the background
    return proc.returncode == 0, (stdout or "") + (stderr or ""), time.monotonic() - t0


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _drain(proc: subprocess.Popen) -> tuple[str, str]:
    """What a killed process wrote; gives up on pipes that a process which left the group holds."""
    try:
        stdout, stderr = proc.communicate(timeout=5)
        return stdout or "", stderr or ""
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        return "", ""


def failed_tests(output: str) -> list[str]:
    """Test ids a pytest short summary names (``FAILED tests/x.py::test_y - ...``)."""
    seen: list[str] = []
    for name in _FAILED_LINE.findall(output):
        if name not in seen:
            seen.append(name)
    return seen


def flaky_summary(result: GateResult) -> str:
    """'tests/t.py::test_a failed 1 of 3 runs (PYTHONHASHSEED=7)': which test, how often."""
    total = len(result.runs)
    counts: dict[str, list[TestRun]] = {}
    for run in result.runs:
        if run.passed:
            continue
        for name in run.failed or ["(the test command; its output names no test)"]:
            counts.setdefault(name, []).append(run)
    parts = [f"{name} failed {len(runs)} of {total} runs ({', '.join(r.describe() for r in runs)})"
             for name, runs in counts.items()]
    return "; ".join(parts)


def randomly_refused(output: str) -> bool:
    """pytest rejected --randomly-seed (the project disables the plugin with -p no:randomly)."""
    return _RANDOMLY_REFUSED in output and ("unrecognized arguments" in output or "no such option" in output)


def _interpreter(argv: Sequence[str]) -> str | None:
    """The Python that runs pytest for this test command, when it can be told."""
    if not argv:
        return None
    first = Path(argv[0]).name
    if first.startswith("python") and list(argv[1:3]) == ["-m", "pytest"]:
        return shutil.which(argv[0]) or argv[0]
    if first in {"pytest", "py.test"}:
        script = shutil.which(argv[0])
        if script is None:
            return None
        try:
            line = Path(script).read_bytes()[:400].split(b"\n", 1)[0].decode("utf-8", "replace")
        except OSError:
            return None
        if line.startswith("#!"):
            words = shlex.split(line[2:].strip())
            return words[-1] if words and Path(words[-1]).name.startswith("python") else None
    return None


def has_pytest_randomly(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> bool:
    """Whether the test command is pytest run by a Python that has pytest-randomly."""
    python = _interpreter(argv)
    if python is None:
        return False
    try:
        probe = subprocess.run([python, "-c", "import pytest_randomly"], cwd=cwd, env=env, capture_output=True,
                               timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def with_order_seed(env: dict[str, str], order_seed: int | None) -> dict[str, str]:
    """``env`` plus pytest-randomly's seed appended to any PYTEST_ADDOPTS the user set."""
    if order_seed is None:
        return env
    # Not "-p randomly": that would re-enable the plugin in a project that disables it on purpose.
    extra = f"--randomly-seed={order_seed}"
    existing = env.get("PYTEST_ADDOPTS", "").strip()
    return {**env, "PYTEST_ADDOPTS": f"{existing} {extra}".strip()}


def seeds_text(runs: Iterable[TestRun]) -> str:
    return ", ".join(str(r.seed) for r in runs)
