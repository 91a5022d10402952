"""What stopping for futility costs and saves: a synthetic study of the optimiser's rule.

The optimiser keeps a candidate only when it is better by the threshold, so it may stop
measuring one that cannot be (``StoppingPlan(futility=True)``, see
:mod:`perfpilot.profilers.stats`). This simulates the verification of candidates with a
known true ratio B/A, on lognormal run times with occasional slow runs (a busy
neighbour), the noise model of tests/test_stats.py, at two noise levels:
``quiet`` (sigma 0.08, 5% outliers: CPU time of real runs here) and ``noisy`` (sigma
0.15, 10% outliers). Looks at 5 and 10 runs per side (the defaults).

Per true ratio it reports: the share of candidates stopped for futility at the first
look (for a true improvement: the false-reject rate), the share accepted with and
without the futility stop (what the stop costs), and the mean runs per side spent.

    python benchmarks/futility.py [--trials 200] [--seed 1] [--json out.json]

Measured here (200 trials per row, seed 1; ``futile@5``: stopped for futility at the first
look; a 10% slower candidate is also stopped there as plainly ``slower``, so all stops at
5 runs are ``(10 - runs) / 5``: 85% quiet, 58% noisy):

    noise    B/A  futile@5 accept(fut) accept(no) runs(fut) runs(no)
    quiet   0.80      0.0%       90.5%      90.5%      6.85     6.85
    quiet   0.90      2.0%       43.0%      43.0%      9.10     9.20
    quiet   0.95      7.5%        6.5%       6.5%      9.50     9.88
    quiet   1.00     31.5%        1.0%       1.0%      8.38     9.95
    quiet   1.10     75.0%        0.0%       0.0%      5.75     9.50
    noisy   0.80      1.0%       45.5%      45.5%      9.28     9.32
    noisy   0.90      8.0%       13.0%      13.0%      9.45     9.85
    noisy   0.95     15.5%        4.0%       4.0%      9.15     9.93
    noisy   1.00     28.0%        0.0%       0.0%      8.57     9.97
    noisy   1.10     53.5%        0.5%       0.5%      7.08     9.75

The stop gave up no candidate that the full 10 runs would have accepted (accept columns
equal), and it saves runs where nothing is to be won: ~4 runs per side for a 10% slower
candidate, ~1.6 for a no-op.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from perfpilot.profilers.stats import StoppingPlan

NOISE = {"quiet": (0.08, 0.05), "noisy": (0.15, 0.10)}
RATIOS = (0.8, 0.9, 0.95, 1.0, 1.1)


def run_times(rng: np.random.Generator, n: int, *, scale: float, sigma: float, outliers: float) -> np.ndarray:
    x = 0.2 * scale * rng.lognormal(0.0, sigma, n)
    slow = rng.random(n) < outliers
    x[slow] *= rng.uniform(1.3, 2.0, int(slow.sum()))
    return x


def trial(plan: StoppingPlan, rng: np.random.Generator, ratio: float, sigma: float, outliers: float,
          seed: int) -> dict[str, object]:
    """One candidate: (futile at look 1, accepted with futility, accepted without, runs with, runs without)."""
    a = run_times(rng, plan.max_runs, scale=1.0, sigma=sigma, outliers=outliers)
    b = run_times(rng, plan.max_runs, scale=ratio, sigma=sigma, outliers=outliers)
    first = plan.looks[0]
    v, _ = plan.decide(a[:first], b[:first], seed=seed)
    if plan.is_clear(v):
        return {"futile": False, "accept_f": v.improved, "accept": v.improved, "runs_f": first, "runs": first}
    futile = plan.is_futile(v)
    final, _ = plan.decide(a, b, seed=seed)
    return {"futile": futile, "accept_f": final.improved and not futile, "accept": final.improved,
            "runs_f": first if futile else plan.max_runs, "runs": plan.max_runs}


def study(trials: int, seed: int) -> list[dict[str, object]]:
    plan = StoppingPlan(5, 10, futility=True)
    rows = []
    for noise, (sigma, outliers) in NOISE.items():
        for ratio in RATIOS:
            rng = np.random.default_rng([seed, int(ratio * 1000), int(sigma * 1000)])
            results = [trial(plan, rng, ratio, sigma, outliers, i) for i in range(trials)]
            mean = lambda key: float(np.mean([r[key] for r in results]))  # noqa: E731
            rows.append({"noise": noise, "ratio": ratio, "trials": trials, "futile_at_first_look": mean("futile"),
                         "accepted_with_futility": mean("accept_f"), "accepted_without": mean("accept"),
                         "runs_with_futility": mean("runs_f"), "runs_without": mean("runs")})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = study(args.trials, args.seed)
    print(f"{'noise':6} {'B/A':>5} {'futile@5':>9} {'accept(fut)':>11} {'accept(no)':>10} {'runs(fut)':>9} {'runs(no)':>8}")
    for r in rows:
        print(f"{r['noise']:6} {r['ratio']:5.2f} {r['futile_at_first_look']:9.1%} {r['accepted_with_futility']:11.1%} "
              f"{r['accepted_without']:10.1%} {r['runs_with_futility']:9.2f} {r['runs_without']:8.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
