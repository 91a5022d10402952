"""Overhead of ``pytest --perfpilot`` on real test suites, side by side with plain pytest.

Suites:

* ``more-itertools`` -- the real suite of a pinned pure-Python sdist from PyPI (tests
  nobody here wrote; 660+ tests, unittest style), fetched once into a cache folder with
  ``pip download --no-binary :all: --no-deps`` and then used offline;
* ``synthetic`` -- N trivial tests (the worst case for a per-test cost).

Runs alternate (plain, --perfpilot, plain, ...) so that load drifting on a shared machine
hits both sides alike. Reported per suite: median wall and median CPU (user+system of
the pytest process tree, from rusage) with and without, their ratios, and the added CPU
per test. Usage::

    .venv/bin/python benchmarks/pytest_overhead.py --runs 5
    .venv/bin/python benchmarks/pytest_overhead.py --suite synthetic --tests 3000
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

PACKAGE = "more-itertools"
VERSION = "10.5.0"
CACHE = Path(os.environ.get("PERFPILOT_TEST_CACHE", Path.home() / ".cache" / "perfpilot-tests"))


def fetch_suite(cache: Path = CACHE, *, python: str = sys.executable) -> tuple[Path | None, str]:
    """(source folder with tests/, "") or (None, why it is unavailable). Offline once cached."""
    folder = cache / f"{PACKAGE}-{VERSION}"
    if (folder / "tests").is_dir():
        return folder, ""
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{PACKAGE}-{VERSION}.tar.gz"
    if not archive.is_file():
        try:
            done = subprocess.run([python, "-m", "pip", "download", "--retries", "1", "--timeout", "15",
                                   "--no-binary", ":all:", "--no-deps",
                                   f"{PACKAGE}=={VERSION}", "-d", str(cache)], capture_output=True, text=True,
                                  timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"pip download {PACKAGE}=={VERSION} failed: {exc}"
        if done.returncode != 0 or not archive.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return None, f"pip download {PACKAGE}=={VERSION} failed (offline?): {tail[0]}"
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    if not (folder / "tests").is_dir():
        return None, f"{archive} has no tests/ folder"
    return folder, ""


def write_synthetic(folder: Path, tests: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    per_file = 500
    for index in range(0, tests, per_file):
        lines = [f"def test_{i}():\n    assert {i} + 1 == {i + 1}\n" for i in range(index, min(tests, index + per_file))]
        (folder / f"test_synthetic_{index // per_file}.py").write_text("\n".join(lines))
    return folder


def run_pytest(cwd: Path, args: list[str]) -> tuple[float, float, str]:
    """(wall s, cpu s of the pytest process tree, last output line)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode not in (0, 1):
        raise SystemExit(f"pytest {' '.join(args)} in {cwd} exited {done.returncode}:\n{done.stdout[-2000:]}")
    return wall, cpu, last


def compare(name: str, cwd: Path, args: list[str], runs: int, tests: int) -> dict[str, float]:
    plain: list[tuple[float, float]] = []
    measured: list[tuple[float, float]] = []
    run_pytest(cwd, args)  # warm-up: bytecode caches, page cache
    last = ""
    for _ in range(runs):
        wall, cpu, _ = run_pytest(cwd, args)
        plain.append((wall, cpu))
        wall, cpu, last = run_pytest(cwd, [*args, "--perfpilot", "--perfpilot-slowest=0"])
        measured.append((wall, cpu))
    wall_a, wall_b = statistics.median(w for w, _ in plain), statistics.median(w for w, _ in measured)
    cpu_a, cpu_b = statistics.median(c for _, c in plain), statistics.median(c for _, c in measured)
    result = {"wall_plain_s": wall_a, "wall_perfpilot_s": wall_b, "wall_ratio": wall_b / wall_a,
              "cpu_plain_s": cpu_a, "cpu_perfpilot_s": cpu_b, "cpu_ratio": cpu_b / cpu_a,
              "added_cpu_per_test_us": (cpu_b - cpu_a) / max(1, tests) * 1e6}
    print(f"{name}: {tests} tests, {runs} runs per side, alternating  [{last}]")
    print(f"  wall  plain {wall_a:.3f} s   --perfpilot {wall_b:.3f} s   ratio {result['wall_ratio']:.3f}")
    print(f"  cpu   plain {cpu_a:.3f} s   --perfpilot {cpu_b:.3f} s   ratio {result['cpu_ratio']:.3f}"
          f"   (+{result['added_cpu_per_test_us']:.0f} µs cpu per test)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--suite", choices=("more-itertools", "synthetic", "both"), default="both")
    parser.add_argument("--tests", type=int, default=2000, help="tests in the synthetic suite")
    args = parser.parse_args()
    if args.suite in ("more-itertools", "both"):
        folder, why = fetch_suite()
        if folder is None:
            print(f"more-itertools suite unavailable: {why}")
        else:
            compare(f"{PACKAGE} {VERSION}", folder, ["tests"], args.runs, tests=664)
    if args.suite in ("synthetic", "both"):
        folder = write_synthetic(CACHE / f"synthetic-{args.tests}", args.tests)
        compare("synthetic trivial tests", folder, ["."], args.runs, tests=args.tests)


if __name__ == "__main__":
    main()
