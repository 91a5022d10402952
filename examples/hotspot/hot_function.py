"""A target with one known hot spot: ``crunch`` takes ~80% of the CPU time, and within it
the line marked ``# HOT LINE`` does nearly all the work. perfpilot's tests check that
the profile shows ``crunch`` first and points at that line.

    python examples/hotspot/hot_function.py --seconds 1.5
"""

from __future__ import annotations

import argparse
import time


def crunch(n: int) -> int:
    total = 0
    for i in range(n):
        total += (i * i) % 7  # HOT LINE
    return total


def light(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.5, help="CPU seconds to burn")
    parser.add_argument("--rounds", type=int, default=None,
                        help="a fixed amount of work instead (benchmarks: a profiler's overhead then shows as time)")
    args = parser.parse_args()
    start = time.process_time()
    wall = time.perf_counter()
    rounds = 0
    while (rounds < args.rounds) if args.rounds is not None else (time.process_time() - start < args.seconds):
        # crunch's loop body costs ~2x light's per iteration, so 2:1 iterations -> ~80%.
        crunch(200_000)
        light(100_000)
        rounds += 1
    print(f"{rounds} rounds in {time.perf_counter() - wall:.6f} s")


if __name__ == "__main__":
    main()
