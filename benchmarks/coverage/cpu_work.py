"""A CPU-bound Python program for the stack-coverage benchmark: fixed work, ~1.7 s on an
idle core of the 2-core VM it was sized on (longer on a loaded machine). Its hot
function has a long qualified name on purpose: reports must print it whole."""

from __future__ import annotations

import os
import sys
import time


class SyntheticTokenizer:
    def fold_every_statement_of_the_workload(self, n: int) -> int:
        total = 0
        for i in range(n):
            total = (total * 31 + i % 7) % 1_000_003
        return total


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 9_000_000
    print(SyntheticTokenizer().fold_every_statement_of_the_workload(n))
    clock = os.environ.get("COVERAGE_CLOCK")
    if clock:  # the launcher wrote the start; the end goes beside it
        with open(clock, "a") as out:
            out.write(f"{time.time()}\n")


if __name__ == "__main__":
    main()
