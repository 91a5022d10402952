"""Stack coverage through a launcher, under load: perfpilot against py-spy alone.

    .venv/bin/python benchmarks/stack_coverage.py --runs 20 --json benchmarks/results/stack_coverage.json
    .venv/bin/python benchmarks/stack_coverage.py --runs 3 --launcher pyenv

The program (``benchmarks/coverage/cpu_work.py``, CPU-bound, ~1.7 s on an idle core) is
started through ``benchmarks/coverage/launcher.sh``, a bash script that does some work
and then execs the interpreter (what a pyenv shim or ``uv run`` does), while busy loops
load every core. Runs are interleaved: ``perfpilot profile`` then ``py-spy record`` on
the same command (the order swaps every pair), at the same rate (100 Hz,
``--nonblocking --subprocesses``, what perfpilot uses).

Per run it prints perfpilot's stack coverage of the run's wall time, of the part of it
after Python started, its sample count, and py-spy alone's samples on the paired run;
then the smallest coverage and the ratio of sample totals (perfpilot / py-spy alone).
A run's samples follow its wall time, which the load makes vary, so the rates are compared:
samples per second of the command's own clock (the launcher writes its start, the program
its end), the same definition for both profilers.

tests/test_stacks_coverage.py runs the same study with 3 runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent / "coverage"
LAUNCHER = HERE / "launcher.sh"
PROGRAM = HERE / "cpu_work.py"
WORK = 9_000_000


@dataclass
class Run:
    wall_s: float
    samples: int
    command_s: float = 0.0  # the command's own clock: launcher start to program end
    coverage_pct: float | None = None
    python_coverage_pct: float | None = None
    python_started_s: float | None = None
    unsampled_after_attach_s: float = 0.0
    note: str | None = None
    terminal: str = ""  # perfpilot's report, rendered at 80 columns


def command(work: int = WORK, launcher: str = "bash") -> list[str]:
    if launcher == "pyenv":  # the shim itself, when `python3` on PATH is one
        return [shutil.which("python3") or "python3", str(PROGRAM), str(work)]
    return [str(LAUNCHER), str(PROGRAM), str(work)]  # it execs $PYTHON (set by _env)


def calibrate(target_s: float = 1.7, probe: int = 2_000_000) -> int:
    """Work that takes about ``target_s`` on this machine as it is now (CPU speed drifts
    several-fold between sessions): time a probe run of the program less its start-up, scale."""
    def timed(work: int) -> float:
        start = time.monotonic()
        subprocess.run([sys.executable, str(PROGRAM), str(work)], check=True, stdout=subprocess.DEVNULL)
        return time.monotonic() - start

    elapsed = timed(probe) - timed(0)
    return max(probe, int(probe * target_s / max(elapsed, 1e-3)))


def _env(clock: Path) -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "COLUMNS": "80", "COVERAGE_CLOCK": str(clock)}


def _command_s(clock: Path, fallback: float) -> float:
    """The command's wall from its own clock (the same definition for both profilers: what
    each one does before and after the command is not in it); ``fallback`` when the command
    is not the launcher."""
    try:
        start, end = (float(line) for line in clock.read_text().split())
    except (OSError, ValueError):
        return fallback
    finally:
        clock.unlink(missing_ok=True)
    return end - start


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else (shutil.which("py-spy") or "py-spy")


@contextlib.contextmanager
def busy_loops(count: int | None = None) -> Iterator[None]:
    """One shell busy loop per core, for the duration."""
    procs = [subprocess.Popen(["bash", "-c", "while :; do :; done"]) for _ in range(count or os.cpu_count() or 2)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run_perfpilot(cmd: list[str], tmp: Path, imports: bool = False) -> Run:
    out = tmp / "run.json"
    argv = [sys.executable, "-m", "perfpilot", "profile", "-o", str(out), *(["--imports"] if imports else []), "--", *cmd]
    clock = tmp / "clock"
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300, env=_env(clock))
    if done.returncode != 0:
        raise RuntimeError(f"perfpilot failed ({done.returncode}): {done.stderr[-2000:]}")
    profile = json.loads(out.read_text())
    status = profile["annotations"]["stacks"]
    return Run(profile["duration_s"], (profile.get("stacks") or {}).get("samples", 0),
               _command_s(clock, profile["duration_s"]), status.get("coverage_pct"),
               status.get("python_coverage_pct"), status.get("python_started_s"), status.get("unsampled_after_attach_s", 0.0),
               status.get("coverage_note"), done.stderr)


def run_py_spy(cmd: list[str], tmp: Path) -> Run:
    out = tmp / "py-spy.txt"
    argv = [py_spy(), "record", "--rate", "100", "--nonblocking", "--subprocesses", "--format", "raw",
            "--output", str(out), "--", *cmd]
    clock = tmp / "clock"
    start = time.monotonic()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300, env=_env(clock))
    wall = time.monotonic() - start
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr[-2000:]}")
    samples = sum(int(line.rsplit(" ", 1)[1]) for line in out.read_text().splitlines() if line.strip())
    return Run(wall, samples, _command_s(clock, wall))


def study(runs: int, imports: bool, cmd: list[str], verbose: bool = True) -> tuple[list[Run], list[Run]]:
    """``runs`` interleaved pairs; returns (perfpilot runs, py-spy alone runs)."""
    ours: list[Run] = []
    alone: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="perfpilot-coverage-") as name:
        tmp = Path(name)
        for i in range(runs):
            if i % 2 == 0:
                ours.append(run_perfpilot(cmd, tmp, imports))
                alone.append(run_py_spy(cmd, tmp))
            else:
                alone.append(run_py_spy(cmd, tmp))
                ours.append(run_perfpilot(cmd, tmp, imports))
            if verbose:
                a, b = ours[-1], alone[-1]
                print(f"{i + 1:3d}  wall {a.wall_s:6.2f} s  coverage {_pct(a.coverage_pct)}  "
                      f"(Python from {_num(a.python_started_s)} s: {_pct(a.python_coverage_pct)})  samples {a.samples:5d}  "
                      f"py-spy alone {b.samples:5d} in {b.command_s:6.2f} s  "
                      f"rate ratio {(a.samples / a.command_s) / max(b.samples / b.command_s, 1e-9):.3f}",
                      flush=True)
    return ours, alone


def _pct(value: float | None) -> str:
    return "    -" if value is None else f"{value:5.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary(ours: list[Run], alone: list[Run]) -> dict[str, float]:
    return {
        "min_coverage_pct": min(r.coverage_pct or 0.0 for r in ours),
        "min_python_coverage_pct": min(r.python_coverage_pct or 0.0 for r in ours),
        "samples_ratio": sum(r.samples for r in ours) / max(1, sum(r.samples for r in alone)),
        # samples per second of the command's own clock, pooled over the runs: the load
        # stretches some runs more than others, each profiler's own start-up is not the
        # command's time, and py-spy's rate under load scatters 80-115 Hz from run to run
        "rate_ratio": (sum(r.samples for r in ours) / sum(r.command_s for r in ours))
        / (sum(r.samples for r in alone) / sum(r.command_s for r in alone)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--work", type=int, default=None,
                        help=f"loop iterations (default: sized to ~1.7 s under the load on this machine today; {WORK:,} "
                             "took 1.7 s idle on the VM it was written on)")
    parser.add_argument("--launcher", choices=("bash", "pyenv"), default="bash")
    parser.add_argument("--no-load", action="store_true", help="skip the busy loops")
    parser.add_argument("--only", choices=("plain", "imports"))
    parser.add_argument("--json", type=Path, help="write every run and the figures here")
    args = parser.parse_args()
    results: dict[str, object] = {"cores": os.cpu_count(), "load": not args.no_load}
    load = contextlib.nullcontext() if args.no_load else busy_loops()
    with load:
        cmd = command(args.work or calibrate(1.7), args.launcher)
        print(f"command: {' '.join(cmd)}; {os.cpu_count()} cores, {'no load' if args.no_load else 'busy loop per core'}")
        for imports in (False, True):
            if args.only and args.only != ("imports" if imports else "plain"):
                continue
            print(f"\nperfpilot profile{' --imports' if imports else ''} vs py-spy record, {args.runs} pairs")
            ours, alone = study(args.runs, imports, cmd)
            figures = summary(ours, alone)
            print("  ".join(f"{k} {v:.3f}" if "ratio" in k else f"{k} {v:.1f}" for k, v in figures.items()))
            results["imports" if imports else "plain"] = {
                "figures": figures,
                "perfpilot": [{k: v for k, v in vars(r).items() if k != "terminal"} for r in ours],
                "py_spy_alone": [{"wall_s": r.wall_s, "command_s": r.command_s, "samples": r.samples} for r in alone]}
        results["command"] = cmd
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
