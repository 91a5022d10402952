"""Cold start: -X importtime parsing, the stderr tee, and `perfpilot profile --imports`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from perfpilot.profilers import imports
from perfpilot.profilers.profile import Profile

SAMPLE = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |     _codecs
import time:       400 |        500 |   codecs
import time:        50 |         50 |   encodings.aliases
import time:      1000 |       1550 | encodings
import time:       cached |       cached |   sys
import time:       300 |        300 | json.decoder
import time:      2000 |       2300 | json
import time: self [us] | cumulative | imported package
import time:        70 |         70 | worker_only
"""


def test_parse_nesting_parents_and_processes() -> None:
    processes = imports.parse(SAMPLE.splitlines())
    assert len(processes) == 2
    root = {e.module: e for e in processes[0]}
    assert set(root) == {"_codecs", "codecs", "encodings.aliases", "encodings", "json.decoder", "json"}
    assert root["_codecs"].parent == "codecs" and root["_codecs"].depth == 2
    assert root["codecs"].parent == "encodings" and root["encodings.aliases"].parent == "encodings"
    assert root["encodings"].parent is None and root["encodings"].cumulative_us == 1550
    # json.decoder printed at depth 0 right before json: a sibling, not a child
    assert root["json.decoder"].parent is None
    assert [e.module for e in processes[1]] == ["worker_only"]


def test_summary_ranks_by_cumulative_and_self() -> None:
    summary = imports.summarise(imports.parse(SAMPLE.splitlines()))
    assert summary["count"] == 6 and summary["processes"] == 2
    assert summary["total_us"] == 1550 + 300 + 2300
    assert [e["module"] for e in summary["slowest"][:2]] == ["json", "encodings"]
    assert summary["slowest_self"][0]["module"] == "json"
    assert "2 Python processes" in summary["note"]


def test_summary_of_nothing_says_why() -> None:
    summary = imports.summarise(imports.parse(["hello", "world"]))
    assert summary["count"] == 0 and "not a Python program" in summary["note"]


def test_python_command_detection() -> None:
    assert imports.is_python_command(["python3.11", "x.py"])
    assert imports.is_python_command(["/usr/bin/python", "-m", "x"])
    assert not imports.is_python_command(["pytest", "-q"])
    assert not imports.is_python_command(["sh", "-c", "python x.py"])


def test_tee_keeps_import_lines_and_passes_the_rest_through(capfd) -> None:
    tee = imports.StderrTee()
    try:
        code = ("import sys; w=sys.stderr.write; w('before\\n'); w('import time:  5 |  5 | fake\\n'); "
                "w('progress 50%\\r'); w('after\\n'); w('import time: 7 | 9 | last')")
        subprocess.run([sys.executable, "-c", code], check=True)
    finally:
        captured = tee.close()
    assert captured == ["import time:  5 |  5 | fake", "import time: 7 | 9 | last"]
    err = capfd.readouterr().err
    assert err == "before\nprogress 50%\rafter\n"


@pytest.mark.slow
def test_profile_imports_reports_the_slowest(perfpilot_cli, python_exe, tmp_path) -> None:
    out = tmp_path / "run.json"
    code = "import json, decimal, sys; print('to stderr', file=sys.stderr); print('to stdout')"
    result = perfpilot_cli("profile", "--imports", "--no-stacks", "-o", str(out), "--", python_exe, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "to stdout\n"
    assert "to stderr" in result.stderr
    assert "import time:" not in result.stderr  # taken out of the target's stderr
    profile = Profile.load(out)
    info = profile.annotations["imports"]
    modules = {e["module"] for e in info["slowest"]}
    assert "decimal" in modules or "_pydecimal" in modules or "_decimal" in modules
    assert info["count"] >= 5 and info["how"] == "-X importtime"
    assert profile.summary["import_time_s"] == pytest.approx(info["total_us"] / 1e6)
    assert profile.target["command"][1:3] == ["-X", "importtime"]
    assert "slowest imports" in result.stderr  # terminal table


@pytest.mark.slow
def test_imports_of_a_non_python_command_says_so(perfpilot_cli, tmp_path) -> None:
    out = tmp_path / "run.json"
    result = perfpilot_cli("profile", "--imports", "--no-stacks", "-o", str(out), "--", "sh", "-c", "echo hi >&2")
    assert result.returncode == 0, result.stderr
    assert "hi" in result.stderr
    info = Profile.load(out).annotations["imports"]
    assert info["how"] == "PYTHONPROFILEIMPORTTIME=1" and "not a Python program" in info["note"]


def test_imports_with_pid_is_a_usage_error(perfpilot_cli) -> None:
    result = perfpilot_cli("profile", "--imports", "--pid", str(os.getpid()))
    assert result.returncode == 2
    assert "--imports needs a command" in result.stderr and "Traceback" not in result.stderr


def test_imports_with_missing_command_restores_stderr(perfpilot_cli, tmp_path) -> None:
    result = perfpilot_cli("profile", "--imports", "-o", str(tmp_path / "r.json"), "--", "no-such-command-xyz")
    assert result.returncode == 127
    assert result.stderr.strip().splitlines()[-1].startswith("perfpilot: error: command not found")
