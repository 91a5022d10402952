"""Cost per verdict: `perfpilot compare` on wall time vs on instructions, for a real 10% change.

A = ``examples/compare/workload.py N``, B = the same program with 10% more lines
(``N * 1.1``): real, known extra work. For each size N and each metric, one real
``measure.compare`` (fresh processes, A B A B ..., the engine's stopping rule), and what
it cost: runs per side and the wall seconds the whole comparison took (warm-ups
included). Small N is a short program where start-up and machine noise dominate; large N
is a long one, where wall time has more signal per run and valgrind's ~50x costs most.

    python benchmarks/instructions_cost.py [--sizes 2000,20000] [--json out.json]

Each comparison runs once: on a shared machine, quote the figures with the load shown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from perfpilot.profilers.measure import Arm, compare
from perfpilot.registry import build_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "examples" / "compare" / "workload.py"


def one(metric: str, size: int) -> dict[str, Any]:
    a = Arm([sys.executable, str(WORKLOAD), str(size)], label=f"workload {size}")
    b = Arm([sys.executable, str(WORKLOAD), str(int(size * 1.1))], label=f"workload {int(size * 1.1)}")
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    result = compare(a, b, metrics=[metric], max_runs=10, min_runs=5, warmup=1, capture_output=True,
                     plugin_set=build_plugin_manager())
    spent = time.monotonic() - t0
    v = result.primary_verdict
    return {"metric": metric, "size": size, "runs_per_side": result.runs, "seconds": round(spent, 1),
            "verdict": v.verdict, "ratio": round(v.ratio, 4), "ci": [round(v.ci_low, 4), round(v.ci_high, 4)],
            "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--metrics", default="wall,instructions")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for metric in args.metrics.split(","):
            row = one(metric, size)
            rows.append(row)
            print(f"{metric:>12} N={size:<6} {row['verdict']:<12} ratio {row['ratio']:.3f} "
                  f"[{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]  {row['runs_per_side']} runs/side  "
                  f"{row['seconds']:.0f} s  (load {row['load_before']}->{row['load_after']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"nproc": os.cpu_count(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
