"""Overhead of perfpilot profile against the plain run and against peer profilers.

The workload is examples/hotspot/hot_function.py with a *fixed* amount of work (a
CPU-bound pure-Python loop, calibrated to ~2 s here), so any time a profiler steals
shows up as time. Every round runs the plain program and each tool once, in a shuffled
order (interleaved), and each ratio is taken against that round's plain run; the table
shows medians over rounds.

Three figures per tool:

* ``program`` -- the workload's own wall time (it times itself with perf_counter): how
  much the tool slows the program down while it runs. The targets (≤1.03 without
  stacks, ≤1.05 with) are judged on this one.
* ``end to end`` -- the whole command, including the tool's own start-up and the time
  it spends writing its report after the program exits.
* ``cpu`` -- user+system seconds of the whole command tree (tool and program, from
  wait4), which is less sensitive to a busy machine than wall time.
* ``program (best)`` -- fastest program time under the tool / fastest plain: on a shared,
  busy machine the minimum is the run least disturbed by others (timeit's rule), so
  this is the steadier estimate of the tool's own cost when the medians swing.

    python benchmarks/overhead.py                 # 7 rounds, all tools
    python benchmarks/overhead.py --rounds 5 --only perfpilot-stacks,py-spy

Peers: py-spy (installed with perfpilot), pyinstrument and scalene (``pip install
pyinstrument scalene``; a peer that is not installed is skipped and the table says so).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "examples" / "hotspot" / "hot_function.py"
BIN = Path(sys.executable).parent
_ELAPSED = re.compile(r"rounds in ([0-9.]+) s")
TARGETS = {"perfpilot-no-stacks": 1.03, "perfpilot-stacks": 1.05}


@dataclass
class Tool:
    name: str
    describe: str
    argv: list[str]  # the command before the workload (empty: plain)
    workload_sep: list[str] = field(default_factory=list)  # between the script and its args
    skip: str | None = None


def module_available(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def tools(tmp: Path, scalene_full: bool = False) -> list[Tool]:
    py = sys.executable
    perfpilot = str(BIN / "perfpilot")
    py_spy = str(BIN / "py-spy")
    out = [
        Tool("plain", "python workload.py", []),
        Tool("perfpilot-no-stacks", "perfpilot profile --no-stacks (all collectors, 10 Hz)",
             [perfpilot, "profile", "-q", "--no-stacks", "--interval", "100ms", "-o", str(tmp / "a.json"), "--", py]),
        Tool("perfpilot-stacks", "perfpilot profile (all collectors 10 Hz + py-spy stacks 100 Hz)",
             [perfpilot, "profile", "-q", "--rate", "100", "--interval", "100ms", "-o", str(tmp / "b.json"), "--", py]),
        Tool("py-spy", "py-spy record -r 100 (its defaults: blocking, flame graph SVG)",
             [py_spy, "record", "-r", "100", "-o", str(tmp / "c.svg"), "--", py],
             skip=None if Path(py_spy).exists() else "py-spy not installed"),
        Tool("pyinstrument", "pyinstrument -r text",
             [py, "-m", "pyinstrument", "-r", "text", "-o", str(tmp / "d.txt")],
             skip=None if module_available("pyinstrument") else "not installed (pip install pyinstrument)"),
        Tool("scalene", "scalene run --cpu-only" if not scalene_full else "scalene run (its defaults: CPU + memory)",
             [py, "-m", "scalene", "run", *([] if scalene_full else ["--cpu-only"]), "-o", str(tmp / "e.json")],
             workload_sep=["---"],
             skip=None if module_available("scalene") else "not installed (pip install scalene)"),
    ]
    return out


@dataclass
class Run:
    program_s: float
    end_to_end_s: float
    cpu_s: float


def run_once(tool: Tool, rounds: int) -> Run:
    python = [] if tool.argv else [sys.executable]
    argv = [*tool.argv, *python, str(WORKLOAD), *tool.workload_sep, "--rounds", str(rounds)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    stdout, stderr = proc.communicate()
    # communicate() has reaped it; the tree's CPU comes from RUSAGE_CHILDREN deltas.
    end = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(f"{tool.name} failed ({proc.returncode}): {stderr.decode()[-500:]}")
    match = _ELAPSED.search(stdout.decode())
    if match is None:
        raise RuntimeError(f"{tool.name}: the workload did not report its time: {stdout.decode()[-300:]}")
    return Run(float(match.group(1)), end - start, 0.0)


def run_measured(tool: Tool, rounds: int) -> Run:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run_once(tool, rounds)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def calibrate(seconds: float) -> int:
    probe = 6
    elapsed = run_once(Tool("plain", "", []), probe).program_s
    return max(3, round(probe * seconds / max(elapsed, 1e-3)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (pairs against plain), ≥5")
    parser.add_argument("--seconds", type=float, default=2.0, help="plain run length to calibrate to")
    parser.add_argument("--work", type=int, default=None, help="fixed workload rounds (skips calibration)")
    parser.add_argument("--only", default=None, help="comma list of tools (plain always runs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw runs as JSON")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scalene-full", action="store_true",
                        help="run scalene with its defaults (CPU + memory); with torch installed its start-up and "
                             "shutdown take over a minute per run here, so --cpu-only is the default")
    args = parser.parse_args()
    console = Console()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    tmp = Path(tempfile.mkdtemp(prefix="perfpilot-overhead-"))
    all_tools = tools(tmp, args.scalene_full)
    chosen = [t for t in all_tools if t.name == "plain" or args.only is None or t.name in args.only.split(",")]
    for tool in chosen:
        if tool.skip:
            console.print(f"[yellow]skipping {tool.name}: {tool.skip}[/]")
    active = [t for t in chosen if not t.skip]
    work = args.work or calibrate(args.seconds)
    console.print(f"workload: {WORKLOAD.relative_to(ROOT)} --rounds {work}; {args.rounds} interleaved rounds; "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rng = random.Random(args.seed)
    runs: dict[str, list[Run]] = {t.name: [] for t in active}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring", total=args.rounds * len(active))
        for _ in range(args.rounds):
            order = list(active)
            rng.shuffle(order)
            for tool in order:
                progress.update(task, description=f"{tool.name}")
                runs[tool.name].append(run_measured(tool, work))
                progress.advance(task)

    plain = runs["plain"]
    table = Table(title=f"overhead vs plain (median of {args.rounds} interleaved rounds; plain program "
                        f"{statistics.median(r.program_s for r in plain):.2f} s)", title_justify="left")
    for column in ("tool", "program ratio", "program (best)", "end-to-end ratio", "cpu ratio", "target", ""):
        table.add_column(column, justify="left" if column in ("tool", "") else "right")
    results = {}
    for tool in active:
        if tool.name == "plain":
            continue
        ratios = {key: statistics.median(getattr(r, key) / getattr(p, key) for r, p in zip(runs[tool.name], plain))
                  for key in ("program_s", "end_to_end_s", "cpu_s")}
        ratios["program_best"] = min(r.program_s for r in runs[tool.name]) / min(p.program_s for p in plain)
        target = TARGETS.get(tool.name)
        verdict = "" if target is None else ("[green]meets target[/]" if ratios["program_s"] <= target
                                            else "[red]over target[/]")
        table.add_row(tool.describe, f"{ratios['program_s']:.3f}", f"{ratios['program_best']:.3f}",
                      f"{ratios['end_to_end_s']:.3f}",
                      f"{ratios['cpu_s']:.3f}", f"≤{target}" if target else "", verdict)
        results[tool.name] = ratios
    console.print(table)
    for tool in chosen:
        if tool.skip:
            console.print(f"[dim]{tool.name}: skipped, {tool.skip}[/]")
    if args.json:
        args.json.write_text(json.dumps({"work": work, "rounds": args.rounds, "medians": results,
                                         "runs": {k: [vars(r) for r in v] for k, v in runs.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
