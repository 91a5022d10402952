"""How long ``perfpilot optimize --budget 4`` takes on examples/torch_training, and where
the runs go: wall time of the whole search, and per proposal its status, verdict and the
runs it spent (A + B), side by side for each perfpilot checkout given.

    python benchmarks/torch_optimize_pace.py                       # this checkout
    python benchmarks/torch_optimize_pace.py --before fbdb340      # and an older commit, in one run

``--before REF`` checks REF out into a temporary worktree, installs it (no dependencies:
they come from this environment) into a copy-free overlay venv, and runs the same command
on REF's own copy of the example, so "before" means the example, the proposer and the
verifier as they were at REF. The two searches run one after the other (not interleaved:
each takes minutes), so quote them with the machine's load, which is printed.

Intra-op threads follow each checkout's ``train.toml``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _search(checkout: Path, python: str, budget: int, out: Path, extra: list[str]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pace-"))
    example = work / "torch_training"
    shutil.copytree(checkout / "examples" / "torch_training", example,
                    ignore=shutil.ignore_patterns("checkpoints", ".perfpilot", "__pycache__"))
    env = {**os.environ, "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    done = subprocess.run([python, "-m", "perfpilot", "optimize", "--budget", str(budget), "--output-dir", str(out),
                           *extra], cwd=example, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    report = json.loads((out / "optimize-report.json").read_text()) if (out / "optimize-report.json").is_file() else {}
    shutil.rmtree(work, ignore_errors=True)
    proposals = []
    for p in report.get("proposals", []):
        verdicts = p.get("verdicts") or {}
        first = next(iter(verdicts.values()), {})
        proposals.append({"title": p.get("title"), "status": p.get("status"), "reason": p.get("reason"),
                          "ratio": first.get("ratio"), "runs": (first.get("runs_a") or 0) + (first.get("runs_b") or 0)})
    return {"wall_s": round(wall, 1), "exit_code": done.returncode, "load_at_start": round(load, 2),
            "objective": report.get("objective"), "proposals": proposals, "stop_reason": report.get("stop_reason"),
            "stderr_tail": done.stderr[-600:] if done.returncode not in (0, 1) else ""}


def _checkout(ref: str, base: Path) -> tuple[Path, str]:
    """``ref`` in a worktree, and a python that imports perfpilot from it."""
    tree = base / f"perfpilot-{ref}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True,
                   capture_output=True)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # This environment's packages (torch and perfpilot's dependencies) without copying them.
    site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    Path(site, "_pace_parent.pth").write_text(ours + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(tree)],
                   check=True, capture_output=True)
    return tree, python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--before", metavar="REF", help="also run an older perfpilot commit, for a before/after table")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("optimize_args", nargs="*", help="extra arguments for perfpilot optimize (after --)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pace-checkouts-"))
    runs: dict[str, dict[str, Any]] = {}
    try:
        if args.before:
            tree, python = _checkout(args.before, base)
            runs[f"before ({args.before})"] = _search(tree, python, args.budget, base / "out-before", args.optimize_args)
        runs["after (this checkout)"] = _search(ROOT, sys.executable, args.budget, base / "out-after", args.optimize_args)
    finally:
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base / f"perfpilot-{args.before}")],
                           capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    for name, run in runs.items():
        print(f"== {name}: {run['wall_s']} s wall, exit {run['exit_code']}, objective {run['objective']}, "
              f"load {run['load_at_start']} at start; stopped: {run['stop_reason']}")
        for p in run["proposals"]:
            ratio = f"x{p['ratio']:.3f}" if isinstance(p["ratio"], (int, float)) else "-"
            print(f"   {p['status']:>9}  {ratio:>7}  {p['runs']:>3} runs  {p['title']}  ({p['reason']})")
        if run["stderr_tail"]:
            print("   stderr:", run["stderr_tail"].replace("\n", "\n   "))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
