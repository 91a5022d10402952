"""The correctness gate perfpilot runs for every candidate (``test`` in pyproject.toml).

The candidate's knobs reach this test the way they reach the run: ``TRAIN_*``
environment variables and ``train.toml`` in the working directory. A tiny run with
those knobs must train (finite loss that goes down) and end within 2% of a reference
run with every knob at its plain setting -- a tolerance, because bf16 autocast is not
bit-exact.

Both runs train in this process (one interpreter, one torch import: the gate runs for
every candidate, twice, so its start-up is paid dozens of times per search).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

import train  # noqa: E402 - the example's own module, beside this folder

TINY = ["--steps", "6", "--width", "64", "--depth", "4", "--effective-batch", "128", "--samples", "1024",
        "--eval-samples", "256", "--threads", "1"]
TOLERANCE = 0.02


def _losses(args: list[str]) -> tuple[float, float]:
    """(first step's training loss, final eval loss) of one run in this process."""
    figures, _ = train.train(train.load_config(args))
    return figures["first_loss"], figures["final_loss"]


def test_candidate_trains_and_matches_the_plain_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PERFPILOT_METRICS_FILE", raising=False)
    candidate_env = {k: v for k, v in os.environ.items() if k.startswith("TRAIN_")}
    for name in candidate_env:
        monkeypatch.delenv(name)
    (tmp_path / "plain.toml").write_text("")
    _, reference = _losses([*TINY, "--config", str(tmp_path / "plain.toml"), "--checkpoint-dir", str(tmp_path / "ref")])

    # The candidate: this folder's train.toml (config knobs) and the inherited TRAIN_* (env knobs).
    for name, value in candidate_env.items():
        monkeypatch.setenv(name, value)
    first, final = _losses([*TINY, "--config", str(HERE / "train.toml"), "--checkpoint-dir", str(tmp_path / "ck")])
    assert final < 0.5 * first, f"the loss did not go down: {first} -> {final}"
    assert abs(final - reference) <= TOLERANCE * reference, (
        f"final loss {final:.6f} differs from the plain run's {reference:.6f} by more than {TOLERANCE:.0%}")
