"""How many runs does perfpilot's verifier need, and how often is it fooled?

Compared on the same data with the rule of the SysLLMatic paper's loop: run A and B a
fixed 5 times each and accept B if its mean is lower.

Method (to keep it affordable on a shared 2-core machine, say so when quoting it):

1. Collect a pool of *real* runs once, on this machine, through perfpilot itself
   (fresh processes, collectors on, stacks off): ``examples/compare/workload.py`` (A) and
   ``workload_fast.py`` (B, a real ~30% less CPU time), interleaved A B A B, after one
   warm-up each. Each run gives ``wall`` and ``cpu``.
2. Simulate many comparisons by drawing runs (with replacement) from the pools:
   * A/A: A's pool against itself -- every "faster"/"slower" is a false verdict;
   * B = A's pool scaled by 0.95, 0.90, 0.70 -- real noise, a known true change;
   * B = A's pool scaled by 1.05 -- a real 5% *regression* that must not be accepted;
   * the real pair: A's pool against B's pool.
   perfpilot runs its adaptive procedure (looks at 5, 10, ... up to ``--runs``);
   SysLLMatic takes 5 draws per side and compares means.

Drawing independently from a pool removes slow drifts of the machine (which the
interleaving guards against in real use), so these rates are for exchangeable runs.

    python benchmarks/verifier_power.py [--pool 40] [--trials 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from perfpilot.config import Settings
from perfpilot.profilers.measure import Arm, measure
from perfpilot.profilers.metrics import metric_value
from perfpilot.profilers.stats import StoppingPlan, robust_noise
from perfpilot.registry import build_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "examples" / "compare" / "workload.py"
WORKLOAD_FAST = ROOT / "examples" / "compare" / "workload_fast.py"
METRICS = ("cpu", "wall")
SCENARIOS: tuple[tuple[str, float | None], ...] = (
    ("A/A", 1.0),
    ("5% faster", 0.95),
    ("10% faster", 0.90),
    ("30% faster", 0.70),
    ("5% slower", 1.05),
    ("real pair", None),
)
SYSLLMATIC_RUNS = 5


def collect_pool(runs: int, console: Console) -> dict[str, dict[str, list[float]]]:
    """Real runs of A and B, interleaved, through perfpilot's own measurement path."""
    plugin_set = build_plugin_manager()
    settings = Settings(stacks=False)
    available = [m for m in METRICS if m != "cpu" or "cpu" in plugin_set.collectors()]
    pool: dict[str, dict[str, list[float]]] = {"A": {m: [] for m in available}, "B": {m: [] for m in available}}
    arms = {"A": Arm([sys.executable, str(WORKLOAD)]), "B": Arm([sys.executable, str(WORKLOAD_FAST)])}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("collecting real runs", total=2 * runs)
        for side, arm in arms.items():  # one warm-up each
            measure(arm, runs=1, warmup=0, settings=settings, plugin_set=plugin_set, capture_output=True)
        for _ in range(runs):
            for side, arm in arms.items():
                (profile,) = measure(arm, runs=1, warmup=0, settings=settings, plugin_set=plugin_set,
                                     capture_output=True)
                for metric in available:
                    pool[side][metric].append(metric_value(profile, metric))
                progress.advance(task)
    return pool


def simulate(pool_a: np.ndarray, pool_b: np.ndarray, scale: float | None, *, metric: str, trials: int,
             max_runs: int, seed: int) -> dict[str, Any]:
    """perfpilot's adaptive verdicts and the 5-run mean rule on the same draws."""
    rng = np.random.default_rng(seed)
    plan = StoppingPlan(min_runs=5, max_runs=max_runs)
    called_faster = called_slower = no_change = 0
    runs_when_faster: list[int] = []
    runs_used: list[int] = []
    mean_rule_accepts = 0
    for trial in range(trials):
        a = rng.choice(pool_a, size=max_runs, replace=True)
        b = rng.choice(pool_a if scale is not None else pool_b, size=max_runs, replace=True)
        if scale is not None:
            b = b * scale
        # The fixed-5 mean rule sees the first 5 draws, exactly what our first look sees.
        mean_rule_accepts += float(np.mean(b[:SYSLLMATIC_RUNS])) < float(np.mean(a[:SYSLLMATIC_RUNS]))
        for n in plan.looks:
            v, stop = plan.decide(a[:n], b[:n], metric=metric, seed=trial)
            if stop:
                break
        runs_used.append(n)
        if v.improved:
            called_faster += 1
            runs_when_faster.append(n)
        elif v.regressed:
            called_slower += 1
        elif v.verdict == "no change":
            no_change += 1
    return {
        "trials": trials,
        "max_runs": max_runs,
        "faster_rate": called_faster / trials,
        "slower_rate": called_slower / trials,
        "no_change_rate": no_change / trials,
        "median_runs_when_faster": float(np.median(runs_when_faster)) if runs_when_faster else None,
        "p90_runs_when_faster": float(np.percentile(runs_when_faster, 90)) if runs_when_faster else None,
        "mean_runs": float(np.mean(runs_used)),
        "sysllmatic_accept_rate": mean_rule_accepts / trials,
    }


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=40, help="real runs per side to collect (default 40)")
    parser.add_argument("--trials", type=int, default=200, help="simulated comparisons per row (default 200)")
    parser.add_argument("--runs", type=int, nargs="+", default=[10, 50], help="max runs per side to try")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")
    parser.add_argument("--load-pool", default=None, help="reuse a pool written by an earlier --json")
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a piped table must not wrap at 80 columns

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    if args.load_pool:
        pool = json.loads(Path(args.load_pool).read_text())["pool"]
    else:
        pool = collect_pool(args.pool, console)
    collect_s = time.monotonic() - started
    load_after = os.getloadavg()[0]

    results: list[dict[str, Any]] = []
    console.print(f"[bold]pool[/]: {len(pool['A'][next(iter(pool['A']))])} real runs per side on "
                  f"{os.cpu_count()} CPUs, load average {load_before:.1f} -> {load_after:.1f}, collected in {collect_s:.0f}s")
    for metric in pool["A"]:
        a, b = np.asarray(pool["A"][metric]), np.asarray(pool["B"][metric])
        console.print(f"  {metric}: A median {np.median(a):.4f} (noise ±{robust_noise(a):.1%}), B median "
                      f"{np.median(b):.4f} (noise ±{robust_noise(b):.1%}), real B/A {np.median(b) / np.median(a):.3f}")

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulating", total=len(pool["A"]) * len(SCENARIOS) * len(args.runs))
        for metric in pool["A"]:
            a, b = np.asarray(pool["A"][metric]), np.asarray(pool["B"][metric])
            for index, (name, scale) in enumerate(SCENARIOS):
                true_ratio = scale if scale is not None else float(np.median(b) / np.median(a))
                row: dict[str, Any] = {"metric": metric, "scenario": name, "true_ratio": true_ratio, "ours": {}}
                for max_runs in args.runs:
                    row["ours"][str(max_runs)] = simulate(a, b, scale, metric=metric, trials=args.trials, max_runs=max_runs,
                                                          seed=1000 * index + max_runs)
                    progress.advance(task)
                results.append(row)

    table = Table(title=f"verifier power: {args.trials} simulated comparisons per row, resampled from real runs "
                        f"(perfpilot: adaptive, looks from 5 runs up to the max; SysLLMatic: 5 runs, mean)",
                  title_justify="left")
    table.add_column("metric")
    table.add_column("true change")
    table.add_column("B/A", justify="right")
    for max_runs in args.runs:
        table.add_column(f"≤{max_runs} runs:\nfaster", justify="right")
        table.add_column("wrong\nverdict", justify="right")
        table.add_column("runs to call\nmedian/p90", justify="right")
    table.add_column("SysLLMatic\n5-run mean:\naccepted", justify="right")
    for row in results:
        wants_faster = row["true_ratio"] < 0.99
        cells = [row["metric"], row["scenario"], f"{row['true_ratio']:.3f}"]
        for max_runs in args.runs:
            r = row["ours"][str(max_runs)]
            wrong = r["slower_rate"] if wants_faster else r["faster_rate"] + (r["slower_rate"] if row["true_ratio"] == 1.0 else 0.0)
            runs = ("-" if r["median_runs_when_faster"] is None
                    else f"{r['median_runs_when_faster']:.0f}/{r['p90_runs_when_faster']:.0f}")
            cells += [pct(r["faster_rate"]), pct(wrong), runs]
        cells.append(pct(row["ours"][str(args.runs[0])]["sysllmatic_accept_rate"]))
        table.add_row(*cells)
    console.print(table)
    console.print("wrong verdict: 'slower' for a real speedup; 'faster' (or 'slower') for A/A; 'faster' for the "
                  "5% regression. For A/A and the regression, SysLLMatic's accepted rate is its false-accept rate.")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"pool": pool, "results": results}, indent=1) + "\n")
        console.print(f"[dim]wrote {args.json_path}[/]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
