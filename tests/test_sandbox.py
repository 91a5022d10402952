"""Candidates under bubblewrap: real bwrap, real processes, nothing sent off this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perfpilot.agent.loop import Optimizer
from perfpilot.agent.proposers.llm_proposer import LLMProposer
from perfpilot.agent.sandbox import BWRAP_ENV, Sandbox, parse_mode
from perfpilot.config import Settings
from perfpilot.errors import ConfigError
from perfpilot.testing import ScriptedBackend

PY = sys.executable
SANDBOX = Sandbox.create("auto")
needs_bwrap = pytest.mark.skipif(not SANDBOX.active, reason=SANDBOX.note or "no sandbox")


@needs_bwrap
def test_only_the_writable_copy_can_be_written_and_only_loopback_exists(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    escaped = Path("/var/tmp") / f"perfpilot-sandbox-escape-{os.getpid()}"
    script = ("import os, socket, sys\n"
              "open('inside.txt', 'w').write('ok')\n"
              "print(sorted(name for _, name in socket.if_nameindex()))\n"
              "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\n"
              f"print(os.path.exists({str(tmp_path)!r} + '/copy'), os.listdir('/tmp'))\n"  # /tmp: private
              "open('/tmp/scratch', 'w').write('fine')\n"
              f"open({str(escaped)!r}, 'w').write('no')\n")
    try:
        done = subprocess.run(SANDBOX.wrap([PY, "-c", script], copy), cwd=copy, capture_output=True, text=True,
                              timeout=30)
        assert done.returncode != 0 and "Read-only file system" in done.stderr, done.stderr
        assert not escaped.exists()
    finally:
        escaped.unlink(missing_ok=True)
    lines = done.stdout.splitlines()
    assert lines[:2] == ["['lo']", "['lo']"]  # the interfaces as seen from inside
    assert lines[2].startswith("True [")  # the copy is there, bound at its own path under the private /tmp
    assert (copy / "inside.txt").read_text() == "ok"
    assert "outside its copy of the project" in SANDBOX.explain(done.stderr) and SANDBOX.explain("Error") == ""


def test_modes_and_a_missing_bwrap(monkeypatch):
    assert parse_mode("OFF") == "off" and parse_mode(True) == "on" and parse_mode("auto") == "auto"
    with pytest.raises(ConfigError, match="expected auto, on or off"):
        parse_mode("maybe")
    assert Sandbox.create("off").wrap(["x"], Path("/")) == ["x"]
    monkeypatch.setenv(BWRAP_ENV, "/nonexistent/bwrap")
    auto = Sandbox.create("auto")
    assert not auto.active and "not installed" in auto.note and "--sandbox off" in auto.note
    assert len(auto.note.splitlines()) == 1
    with pytest.raises(ConfigError, match="sandbox = on, but bubblewrap"):
        Sandbox.create("on")


APP = 'MODE = "normal"\n\n\ndef answer():\n    return 42\n'


@needs_bwrap
def test_a_candidate_writing_outside_the_workspace_fails_with_the_reason(tmp_path):
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    (project / "app.py").write_text(APP)
    target = Path("/var/tmp") / f"perfpilot-sandbox-planted-{os.getpid()}"
    (project / "tests" / "check.py").write_text(
        "import sys; sys.path.insert(0, '.'); import app\n"
        f"if app.MODE == 'escape': open({str(target)!r}, 'w').write('x')\n"
        "assert app.answer() == 42\n")
    diff = ('--- a/app.py\n+++ b/app.py\n@@ -1,4 +1,4 @@\n-MODE = "normal"\n+MODE = "escape"\n \n \n'
            " def answer():\n")
    backend = ScriptedBackend().enqueue(json.dumps({"proposals": [{"kind": "patch", "title": "t", "diff": diff}]}))
    settings = Settings(run=f"{PY} -c pass", test=f"{PY} tests/check.py", objective="cpu", runs=2, min_runs=2,
                        budget=1, stacks=False, plugins=["cpu"])
    try:
        result = Optimizer(settings, project, LLMProposer(Settings(), backend), proposer_name="t").run()
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
    [outcome] = result.outcomes
    assert (outcome.status, outcome.reason) == ("rejected", "tests failed")
    assert "Read-only file system" in outcome.detail and "outside its copy of the project" in outcome.detail
    tmp_note = SANDBOX.explain(f"FileNotFoundError: [Errno 2] No such file or directory: '{tmp_path}/x'")
    assert "/tmp is private" in tmp_note


CPU_WORK = "import sys; n = int(sys.argv[1]); sum(i * i for i in range(n))"


@needs_bwrap
@pytest.mark.slow
def test_verdicts_match_with_and_without_the_sandbox_and_stacks_still_seen(tmp_path):
    from perfpilot.profilers.measure import Arm, compare
    from perfpilot.profilers.session import RunOptions, profile_command
    from perfpilot.registry import build_plugin_manager

    plugin_set = build_plugin_manager()
    settings = Settings(stacks=False, plugins=["cpu"], interval=0.05)
    verdicts = {}
    for mode in ("off", "auto"):
        box = Sandbox.create(mode)
        arm = lambda n, label: Arm(box.wrap([PY, "-c", CPU_WORK, str(n)], tmp_path), cwd=str(tmp_path),  # noqa: E731
                                   label=label)
        comparison = compare(arm(900_000, "a"), arm(300_000, "b"), metrics=["cpu"], primary="cpu",
                             settings=settings, max_runs=4, min_runs=3, warmup=0, threshold=0.05, confidence=0.95,
                             plugin_set=plugin_set)
        verdicts[mode] = comparison.verdicts["cpu"]
    assert verdicts["off"].verdict == verdicts["auto"].verdict == "faster"
    assert verdicts["off"].improved and verdicts["auto"].improved
    # py-spy, outside, still samples the Python process inside (by its real PID, through bwrap)
    script = tmp_path / "hot.py"
    script.write_text("def hot_loop_in_sandbox():\n    return sum(i * i for i in range(3_000_000))\n\n"
                      "hot_loop_in_sandbox()\n")
    profile = profile_command(SANDBOX.wrap([PY, str(script)], tmp_path), Settings(stacks=True, plugins=["cpu"]),
                              RunOptions(cwd=str(tmp_path), capture_output=True, plugin_set=plugin_set))
    assert profile.exit_code == 0
    assert any("hot_loop_in_sandbox" in str(spot.get("function")) for spot in profile.hotspots), profile.hotspots


def test_an_interpreter_under_tmp_stays_visible_over_the_private_tmp(monkeypatch, tmp_path):
    # A venv made under /tmp (mktemp -d, CI clones) must not vanish under --tmpfs /tmp.
    from perfpilot.agent import sandbox

    venv = Path("/tmp") / tmp_path.name / "venv"
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "exec_prefix", str(venv))
    kept = sandbox._kept_from_tmp()
    assert str(venv) in kept and "/tmp" not in kept
    flags = sandbox._flags("bwrap", tmp_path)
    assert flags.index("--ro-bind-try") > flags.index("--tmpfs")  # mounted over the private /tmp
