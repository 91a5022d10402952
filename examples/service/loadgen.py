"""A bounded load generator for examples/service/server.py (or any HTTP GET endpoint).

    python examples/service/loadgen.py --url http://127.0.0.1:8080/report?n=20000 \
        --requests 500 --concurrency 4 --max-seconds 60

It stops after ``--requests`` requests or ``--max-seconds``, whichever comes first, and
prints one JSON line: requests done, errors, and latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request


def run(url: str, requests: int, concurrency: int, max_seconds: float, timeout: float = 10.0) -> dict:
    lock = threading.Lock()
    issued = 0
    errors = 0
    latencies: list[float] = []
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        nonlocal issued, errors
        while True:
            with lock:
                if issued >= requests or time.monotonic() >= deadline:
                    return
                issued += 1
            started = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    response.read()
                ok = True
            except (urllib.error.URLError, OSError):
                ok = False
            with lock:
                if ok:
                    latencies.append(time.monotonic() - started)
                else:
                    errors += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, concurrency))]
    t0 = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - t0
    latencies.sort()

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 4) if latencies else None

    return {"requests": len(latencies), "errors": errors, "wall_s": round(wall, 3),
            "p50_s": pct(0.5), "p95_s": pct(0.95), "max_s": latencies[-1] if latencies else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    result = run(args.url, args.requests, args.concurrency, args.max_seconds)
    print(json.dumps(result), flush=True)
    return 0 if result["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
