"""The correctness gate perfpilot runs for every candidate (``test`` in pyproject.toml).

The candidate's knobs reach this test the way they reach the run: ``TRAIN_*``
environment variables and ``train.toml`` in the working directory. A tiny run with
those knobs must train (finite loss that goes down) and end within 2% of a reference
run with every knob at its plain setting -- a tolerance, because bf16 autocast is not
bit-exact.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
TINY = ["--steps", "6", "--width", "64", "--depth", "4", "--effective-batch", "128", "--samples", "1024",
        "--eval-samples", "256", "--threads", "1"]
TOLERANCE = 0.02


def _losses(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(first step's training loss, final eval loss) of one run."""
    done = subprocess.run([sys.executable, str(HERE / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = dict(re.findall(r"^(first_loss|final_loss): (\S+)$", done.stdout, re.MULTILINE))
    assert set(found) == {"first_loss", "final_loss"}, done.stdout
    return float(found["first_loss"]), float(found["final_loss"])


def test_candidate_trains_and_matches_the_plain_run(tmp_path):
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_") and k != "PERFPILOT_METRICS_FILE"}
    (tmp_path / "plain.toml").write_text("")
    _, reference = _losses([*TINY, "--config", str(tmp_path / "plain.toml")], plain_env, tmp_path)

    # The candidate: this folder's train.toml (config knobs) and the inherited TRAIN_* (env knobs).
    env = {k: v for k, v in os.environ.items() if k != "PERFPILOT_METRICS_FILE"}
    first, final = _losses([*TINY, "--config", str(HERE / "train.toml"), "--checkpoint-dir", str(tmp_path / "ck")],
                           env, tmp_path)
    assert final < 0.5 * first, f"the loss did not go down: {first} -> {final}"
    assert abs(final - reference) <= TOLERANCE * reference, (
        f"final loss {final:.6f} differs from the plain run's {reference:.6f} by more than {TOLERANCE:.0%}")
