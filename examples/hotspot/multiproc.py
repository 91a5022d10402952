"""A multiprocessing target: the parent only waits; ``child_work`` runs in worker
processes. perfpilot's tests check that the workers' function shows up in hot spots.

    python examples/hotspot/multiproc.py --workers 2 --seconds 1.0
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time


def child_work(seconds: float) -> int:
    start = time.process_time()
    total = 0
    while time.process_time() - start < seconds:
        for i in range(50_000):
            total += i % 3  # WORKER HOT LINE
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per worker")
    parser.add_argument("--start-method", default="spawn", choices=["fork", "spawn", "forkserver"])
    args = parser.parse_args()
    ctx = mp.get_context(args.start_method)
    with ctx.Pool(args.workers) as pool:
        results = pool.map(child_work, [args.seconds] * args.workers)
    print(f"{len(results)} workers done")


if __name__ == "__main__":
    main()
