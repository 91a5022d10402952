"""A CPU-bound Python program for the stack-coverage benchmark: fixed work, ~1.7 s on an
idle core of the 2-core VM it was sized on (longer on a loaded machine)."""

from __future__ import annotations

import sys


def tokenize_and_fold_every_statement_of_the_synthetic_workload(n: int) -> int:
    total = 0
    for i in range(n):
        total = (total * 31 + i % 7) % 1_000_003
    return total


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 9_000_000
    print(tokenize_and_fold_every_statement_of_the_synthetic_workload(n))


if __name__ == "__main__":
    main()
