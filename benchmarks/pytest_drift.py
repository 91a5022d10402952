"""pytest --perfpilot-compare on wall time across sessions, with the session factor divided out.

Suite: toolz 0.12.1's ``test_dicttoolz.py`` and ``test_itertoolz.py`` (97 tests; the same as
``benchmarks/pytest_instructions.py``, whose download and runner this reuses).

1. one session saves a wall baseline (``--perfpilot-save``, 5 rounds);
2. ``--sessions`` A/A sessions compare the unchanged code with the default ``wall:10%``:
   tests flagged per session, the factor divided out, suspects and re-measurements;
3. ``--sessions`` A/A sessions the same, while ``--hogs`` busy-loop processes load the
   machine's CPUs (a real whole-machine slowdown): tests flagged per session, and how many
   the engine's per-test rule (the call-phase verdict before the factor) would have flagged.

    python benchmarks/pytest_drift.py [--sessions 5] [--hogs 2] [--json benchmarks/results/pytest_drift.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pytest_instructions import fetch, flagged, pytest  # noqa: E402  (the same suite and runner)


def row(index: int, seconds: float, doc: dict[str, Any], line: str) -> dict[str, Any]:
    drift = (doc.get("meta") or {}).get("drift") or {}
    wall = (drift.get("metrics") or {}).get("wall") or {}
    # --rootdir: the report's path is an argument, and once the file exists pytest would take
    # the folder above both as rootdir, and look for the baseline under it
    return {"session": index, "flagged": len(flagged(doc, "wall")), "factor": round(wall.get("factor", 0.0), 3),
            "limit": round(wall.get("limit", 0.0), 3),
            "suspects_remeasured": len(drift.get("remeasured") or []),
            "flagged_alone": sum(1 for f in doc["findings"] if f["metric"] == "wall"
                                 and (f.get("verdict") or {}).get("call_phase") == "regression"),
            "seconds": round(seconds, 1), "load": round(os.getloadavg()[0], 1), "pytest": line}


def sessions(src: Path, report: Path, count: int, label: str) -> list[dict[str, Any]]:
    rows = []
    for index in range(1, count + 1):
        seconds, doc, line = pytest(src, "--perfpilot-compare", "--rootdir", str(src), report=report)
        assert doc is not None and doc["baseline"], f"nothing compared: {line}"
        rows.append(row(index, seconds, doc, line))
        r = rows[-1]
        print(f"{label} session {index}: {r['flagged']} flagged, factor x{r['factor']:.2f}, "
              f"limit x{r['limit']:.2f}, {r['suspects_remeasured']} re-measured ({r['flagged_alone']} if judged "
              f"alone), {seconds:.0f} s, load {r['load']} ({line})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="perfpilot-toolz-"))
    src = fetch(work)
    report = work / "report.json"
    out: dict[str, Any] = {"suite": "toolz 0.12.1: test_dicttoolz.py test_itertoolz.py", "nproc": os.cpu_count()}
    seconds, _doc, line = pytest(src, "--perfpilot-save", "--rootdir", str(src), report=report)
    out["save_s"] = round(seconds, 1)
    print(f"baseline (wall, 5 rounds): {seconds:.0f} s ({line})", flush=True)
    out["aa_wall"] = sessions(src, report, args.sessions, "A/A wall:10%")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        out["aa_wall_loaded"] = sessions(src, report, args.sessions, f"A/A wall:10% with {args.hogs} busy loops")
    finally:
        for hog in hogs:
            hog.kill()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
