"""What each training knob of examples/torch_training costs and buys, measured by perfpilot.

Every scenario is one :func:`perfpilot.profilers.measure.compare`: fresh processes, a
warm-up each, interleaved A B A B runs under the collectors, a verdict per metric with
its bootstrap CI. Next to perfpilot's verdict stands what a one-shot A/B (one run each,
"B is better if its number is lower" -- the rule of a naive loop) would have concluded
from the first pair of runs: where they disagree, the one-shot rule was fooled by noise
or by a change too small to matter.

Scenarios (CPU; the model sizes are in SCENARIOS below):

* ``checkpointing`` -- activation checkpointing on an activation-bound model:
  peak RSS, and what it costs in wall time, loop CPU time and time per step;
* ``async_save``    -- async vs blocking checkpoint saves of a 50 MB state every 2 steps:
  time stalled in saves, time per step, wall;
* ``amp``           -- bf16 autocast vs fp32 on the example's default model: time per
  step, wall, final loss (not bit-exact: expect a small change);
* ``offload``       -- optimizer offload on a CPU-only machine: pure overhead.

    python benchmarks/torch_knobs.py [--runs 5] [--only checkpointing,async_save] [--json out.json]

Intra-op threads are pinned to 1 (``TRAIN_THREADS=1``) so that runs on a shared machine
do not spin OpenMP threads against the neighbours; say so when quoting the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from perfpilot.profilers.measure import Arm, compare
from perfpilot.registry import build_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "examples" / "torch_training" / "train.py"

SCENARIOS: dict[str, dict[str, Any]] = {
    "checkpointing": {
        "args": ["--steps", "2", "--width", "64", "--depth", "16", "--effective-batch", "4096", "--samples", "4096",
                 "--eval-samples", "256"],
        "a": {}, "b": {"TRAIN_ACTIVATION_CHECKPOINTING": "1"},
        "metrics": ["peak_rss", "wall", "reported.train_cpu_s", "reported.step_time_s", "reported.final_loss"],
    },
    "async_save": {
        "args": ["--steps", "12", "--width", "256", "--depth", "8", "--effective-batch", "64", "--samples", "1024",
                 "--eval-samples", "256", "--checkpoint-every", "2"],
        "a": {}, "b": {"TRAIN_ASYNC_CHECKPOINT": "1"},
        "metrics": ["reported.checkpoint_stall_s", "reported.step_time_s", "wall", "peak_rss"],
    },
    "amp": {
        "args": ["--steps", "20"],
        "a": {}, "b": {"TRAIN_AMP": "bf16"},
        "metrics": ["reported.step_time_s", "wall", "reported.final_loss"],
    },
    "offload": {
        "args": ["--steps", "20"],
        "a": {}, "b": {"TRAIN_OFFLOAD_OPTIMIZER": "1"},
        "metrics": ["reported.step_time_s", "wall", "peak_rss"],
    },
}


def _fmt(metric: str, value: float) -> str:
    if metric in {"peak_rss"} or metric.endswith("_bytes"):
        return f"{value / 2**20:.0f} MiB"
    if metric.endswith("_s") or metric == "wall":
        return f"{value:.3f} s"
    return f"{value:.5g}"


def run_scenario(name: str, runs: int, console: Console) -> dict[str, Any]:
    spec = SCENARIOS[name]
    work = Path(tempfile.mkdtemp(prefix=f"perfpilot-torch-{name}-"))
    (work / "empty.toml").write_text("")
    argv = [sys.executable, str(TRAIN), "--config", str(work / "empty.toml"), *spec["args"],
            "--checkpoint-dir", str(work / "ck")]
    base_env = {"TRAIN_THREADS": "1"}
    started = time.monotonic()

    def on_run(side: str, index: int, _profile: Any) -> None:
        console.print(f"[dim]{name}: {side} run {index if index else 'warm-up'} done[/]")

    comparison = compare(Arm(argv, env={**base_env, **spec["a"]}, cwd=str(work), label="A"),
                         Arm(argv, env={**base_env, **spec["b"]}, cwd=str(work), label="B"),
                         metrics=spec["metrics"], min_runs=runs, max_runs=runs, warmup=1, on_run=on_run,
                         capture_output=True, plugin_set=build_plugin_manager())
    from perfpilot.profilers.metrics import metric_value

    rows = []
    for metric, verdict in comparison.verdicts.items():
        first_a, first_b = metric_value(comparison.a[0], metric), metric_value(comparison.b[0], metric)
        rows.append({"metric": metric, **verdict.to_dict(),
                     "one_shot": "B better" if first_b < first_a else ("B worse" if first_b > first_a else "same")})
    return {"scenario": name, "command": " ".join(argv), "env_a": spec["a"], "env_b": spec["b"],
            "runs": comparison.runs, "seconds": round(time.monotonic() - started, 1),
            "notes": list(getattr(comparison, "notes", [])), "verdicts": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        console.print(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
        return 2
    results = [run_scenario(name, args.runs, console) for name in names]
    out = Console(width=max(Console().width, 150))
    for result in results:
        table = Table(title=f"{result['scenario']}: B = {result['env_b']} ({result['runs']} runs per side, "
                            f"{result['seconds']} s)")
        for column in ("metric", "A median", "B median", "ratio B/A", "95% CI", "p", "perfpilot", "one-shot A/B"):
            table.add_column(column)
        for row in result["verdicts"]:
            table.add_row(row["metric"], _fmt(row["metric"], row["median_a"]), _fmt(row["metric"], row["median_b"]),
                          f"{row['ratio']:.3f}", f"{row['ci_low']:.3f}-{row['ci_high']:.3f}", f"{row['p_value']:.2g}",
                          row["verdict"], row["one_shot"])
        out.print(table)
        for note in result["notes"]:
            out.print(f"[dim]note: {note}[/]")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
