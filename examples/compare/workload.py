"""A small CPU-bound job for `perfpilot compare`: summarise a synthetic access log.

This is the "before" version: it rebuilds the set of known statuses for every line.
``workload_fast.py`` is the same job with that set built once (about 30% less CPU time).

    perfpilot compare --metric cpu,wall -- "python examples/compare/workload.py" \
        "python examples/compare/workload_fast.py"
"""

from __future__ import annotations

import sys

KNOWN = ("ok", "created", "accepted", "moved", "found", "not-modified", "bad-request", "unauthorized",
         "forbidden", "not-found", "conflict", "gone", "too-many", "error", "unavailable", "timeout")


def lines(count: int) -> list[str]:
    return [f"10.0.{i % 7}.{i % 251} GET /item/{i % 97} {KNOWN[(i * 7) % len(KNOWN)]} {i % 1000}" for i in range(count)]


def summarise(log: list[str]) -> tuple[dict[str, int], dict[str, int], dict[int, int], int]:
    statuses: dict[str, int] = {}
    subnets: dict[str, int] = {}
    items: dict[int, int] = {}
    sent = 0
    for line in log:
        known = {s for s in KNOWN}  # the waste: rebuilt on every line
        address, _method, path, status, size = line.split()
        if status in known:
            statuses[status] = statuses.get(status, 0) + 1
        subnet = address.rsplit(".", 1)[0]
        subnets[subnet] = subnets.get(subnet, 0) + 1
        item = int(path.rsplit("/", 1)[1])
        items[item] = items.get(item, 0) + 1
        sent += int(size)
    return statuses, subnets, items, sent


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 60_000
    statuses, subnets, items, sent = summarise(lines(n))
    print(sum(statuses.values()), len(subnets), len(items), sent)
