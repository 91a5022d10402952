"""pytest --perfpilot-instructions on a real third-party suite: A/A across sessions, detection, cost.

Suite: toolz 0.12.1 (pure Python, tests in its sdist), its ``test_dicttoolz.py`` and
``test_itertoolz.py`` (97 tests: the whole 180-test suite costs ~10 min per session under
valgrind on the shared 2-CPU VM this was measured on, and the evidence needs 7+ sessions).

1. one session saves a baseline (``--perfpilot-instructions --perfpilot-save``);
2. ``--sessions`` new sessions compare the unchanged code with ``instructions:2%`` (A/A):
   the count of flagged tests per session, and the largest per-test drift of the count;
3. one session with ``toolz.dicttoolz.merge`` made 2x slower (it does its work twice and
   returns the second result: pure extra work, results unchanged): which tests' call-phase
   counts rose >= 5% (decided from the counts), how many of those were flagged, and
   whether any test whose count did not rise (< 0.1%) was flagged;
4. the same A/A with the default wall comparison (``--perfpilot``, ``wall:10%``, 5 rounds),
   for contrast: flagged tests per session;
5. cost: seconds of each kind of session, and plain pytest.

    python benchmarks/pytest_instructions.py [--sessions 5] [--json benchmarks/results/pytest_instructions.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

PACKAGE, VERSION = "toolz", "0.12.1"
FILES = ["toolz/tests/test_dicttoolz.py", "toolz/tests/test_itertoolz.py"]
CACHE = Path(os.environ.get("PERFPILOT_TEST_CACHE", Path.home() / ".cache" / "perfpilot-tests"))
SLOWER = '''

_merge_once = merge


def merge(*dicts, **kwargs):  # benchmark: made 2x slower, same result
    _merge_once(*dicts, **kwargs)
    return _merge_once(*dicts, **kwargs)
'''


def fetch(folder: Path) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"{PACKAGE}-{VERSION}.tar.gz"
    if not archive.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"{PACKAGE}=={VERSION}", "-d", str(CACHE)], check=True, capture_output=True, timeout=300)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder / f"{PACKAGE}-{VERSION}"


def pytest(src: Path, *args: str, report: Path) -> tuple[float, dict[str, Any] | None, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FILES,
                           "--perfpilot-json", str(report), *args], cwd=src, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    doc = json.loads(report.read_text()) if report.is_file() else None
    tail = [ln for ln in done.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    return seconds, doc, (tail[-1] if tail else done.stdout[-300:])


def counts(doc: dict[str, Any]) -> dict[str, float]:
    return {t["nodeid"]: t["rounds"]["instructions"][0] for t in doc["tests"] if t["rounds"].get("instructions")}


def flagged(doc: dict[str, Any], metric: str) -> list[str]:
    return sorted(f["nodeid"] for f in doc["findings"] if f["metric"] == metric and f["kind"] == "regression")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-wall", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="perfpilot-toolz-"))
    src = fetch(work)
    report = work / "report.json"
    out: dict[str, Any] = {"suite": f"{PACKAGE} {VERSION}: {' '.join(FILES)}", "nproc": os.cpu_count()}

    seconds, _doc, line = pytest(src, report=report)
    out["plain_pytest_s"] = round(seconds, 1)
    print(f"plain pytest: {seconds:.1f} s ({line})", flush=True)
    seconds, doc, line = pytest(src, "--perfpilot-instructions", "--perfpilot-save", report=report)
    base = counts(doc)
    out["save_s"] = round(seconds, 1)
    print(f"baseline (instructions, valgrind): {seconds:.0f} s, {len(base)} tests counted ({line})", flush=True)

    sessions = []
    for index in range(1, args.sessions + 1):
        seconds, doc, line = pytest(src, "--perfpilot-instructions", "--perfpilot-compare", report=report)
        now = counts(doc)
        drift = max(abs(now[n] / base[n] - 1) for n in base if n in now and base[n] > 0)
        row = {"session": index, "flagged": len(flagged(doc, "instructions")), "max_drift": drift,
               "seconds": round(seconds, 1), "load": round(os.getloadavg()[0], 1)}
        sessions.append(row)
        print(f"A/A instructions session {index}: {row['flagged']} flagged, largest drift {drift:.4%}, "
              f"{seconds:.0f} s, load {row['load']} ({line})", flush=True)
    out["aa_instructions"] = sessions

    module = src / "toolz" / "dicttoolz.py"
    original = module.read_text()
    module.write_text(original + SLOWER)
    seconds, doc, line = pytest(src, "--perfpilot-instructions", "--perfpilot-compare", report=report)
    module.write_text(original)
    now = counts(doc)
    ratios = {n: now[n] / base[n] for n in base if n in now and base[n] > 0}
    rose = sorted(n for n, r in ratios.items() if r >= 1.05)
    steady = sorted(n for n, r in ratios.items() if r < 1.001)
    hits = set(flagged(doc, "instructions"))
    out["detection"] = {"rose_5pct": len(rose), "rose_flagged": len([n for n in rose if n in hits]),
                        "steady": len(steady), "steady_flagged": len([n for n in steady if n in hits]),
                        "between": len(ratios) - len(rose) - len(steady), "flagged": len(hits),
                        "ratios_of_risen": {n: round(ratios[n], 3) for n in rose}, "seconds": round(seconds, 1)}
    d = out["detection"]
    print(f"merge 2x slower: {d['rose_5pct']} tests rose >= 5%, {d['rose_flagged']} of them flagged; "
          f"{d['steady_flagged']} of {d['steady']} unchanged tests flagged ({line})", flush=True)

    if not args.skip_wall:
        shutil.rmtree(src / ".perfpilot", ignore_errors=True)
        seconds, _doc, line = pytest(src, "--perfpilot-save", report=report)
        out["wall_save_s"] = round(seconds, 1)
        walls = []
        for index in range(1, args.sessions + 1):
            seconds, doc, line = pytest(src, "--perfpilot-compare", report=report)
            walls.append({"session": index, "flagged": len(flagged(doc, "wall")), "seconds": round(seconds, 1),
                          "load": round(os.getloadavg()[0], 1)})
            print(f"A/A wall:10% session {index}: {walls[-1]['flagged']} flagged, {seconds:.0f} s ({line})",
                  flush=True)
        out["aa_wall"] = walls
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
