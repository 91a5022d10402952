"""The optimiser's verifier: an unchanged baseline is not measured again, and a change to
it (a new commit, another environment) is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from perfpilot.agent.verification import RunSpec, engine_verifier
from perfpilot.config import Settings
from perfpilot.registry import build_plugin_manager

PY = sys.executable


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_the_baseline_is_reused_until_it_changes(tmp_path):
    base, cand = tmp_path / "base", tmp_path / "cand"
    for folder in (base, cand):
        folder.mkdir()
        (folder / "app.py").write_text("sum(range(20000))\n")
        _git("init", "-q", cwd=folder)
        _git("add", "-A", cwd=folder)
        _git("commit", "-qm", "init", cwd=folder)
    settings = Settings(run=f"{PY} app.py", runs=5, min_runs=5, stacks=False, plugins=["cpu"])
    verify = engine_verifier(settings, build_plugin_manager(), None)
    a = RunSpec([PY, "app.py"], {}, base, "baseline")
    b = RunSpec([PY, "app.py"], {}, cand, "candidate")

    first = verify(a, b, ["cpu"], "cpu")
    assert first.measured == 2 * first.runs and not any("reused" in n for n in first.notes)
    second = verify(a, b, ["cpu"], "cpu")
    # Reused, or (when both fresh anchor runs fall outside the kept runs' range: a few percent
    # by chance, more when the machine's speed moved) dropped and measured afresh, with a note.
    if any(n.startswith("5 baseline runs reused") for n in second.notes):
        assert second.measured < 2 * second.runs
    else:
        assert any("reused runs were dropped" in n for n in second.notes), second.notes

    (base / "app.py").write_text("sum(range(20001))\n")  # an accepted change commits the baseline
    _git("commit", "-qam", "accepted", cwd=base)
    third = verify(a, b, ["cpu"], "cpu")
    assert third.measured == 2 * third.runs and not any("reused" in n for n in third.notes)
    other_env = verify(RunSpec([PY, "app.py"], {"X": "1"}, base, "baseline"), b, ["cpu"], "cpu")
    assert not any("reused" in n for n in other_env.notes)
