"""Bad input to `profile`, `report`, `compare` and `optimize`: one line, a non-zero exit,
never a traceback, and nothing run that cannot be written (in-process through the CLI's
own entry point; the targets are real processes)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from perfpilot.cli import main

PY = sys.executable


def run(capsys, *args: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as caught:
        main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return caught.value.code, [line for line in err.splitlines() if line.startswith("perfpilot: error:")]


def one_line(capsys, *args: str) -> str:
    code, errors = run(capsys, *args)
    assert code == 125 and len(errors) == 1, (code, errors)
    return errors[0]


def test_profiles_that_are_not_utf8_or_have_wrong_types(tmp_path, capsys):
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"schema_version": 1, "summary": "\xff\xfe"}')
    assert "not UTF-8 text" in one_line(capsys, "report", str(binary))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "summary": "x"}))
    line = one_line(capsys, "compare", str(bad), "vs", str(bad))
    assert "'summary' must be a JSON object, got str 'x'" in line
    bad.write_text(json.dumps({"schema_version": 1, "hotspots": [1, 2]}))
    assert "every hotspots entry must be an object" in one_line(capsys, "report", str(bad))


def test_interval_too_long_or_too_short_is_refused_before_running(tmp_path, capsys):
    out = tmp_path / "p.json"
    line = one_line(capsys, "profile", "--interval", "99999999999999999999h", "-o", str(out), "--", "true")
    assert "too long; the most is 365 days" in line
    line = one_line(capsys, "profile", "--interval", "1ns", "-o", str(out), "--", "true")
    assert "below the minimum of 10ms" in line
    assert not out.exists()


def test_unwritable_output_folder_is_found_before_the_target_runs(tmp_path, capsys):
    if os.geteuid() == 0:
        folder = Path("/sys")  # permission bits do not stop root; sysfs does
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    marker = tmp_path / "target-ran"
    line = one_line(capsys, "profile", "-o", str(folder / "p.json"), "--", PY, "-c", f"open({str(marker)!r}, 'w')")
    assert f"cannot write {folder / 'p.json'}" in line and "before the target runs" in line
    assert not marker.exists()


def test_a_failed_export_after_the_run_exits_non_zero_and_keeps_the_profile(tmp_path, capsys):
    doomed = tmp_path / "doomed"
    doomed.mkdir()
    out = tmp_path / "p.json"
    # the target removes the --html folder while it runs: only writing can find that out
    code, errors = run(capsys, "profile", "-q", "--no-stacks", "-o", str(out), "--html", str(doomed / "r.html"),
                       "--", "rm", "-rf", str(doomed))
    assert code == 125 and len(errors) == 1 and "r.html" in errors[0]
    assert json.loads(out.read_text())["target"]["exit_code"] == 0


def test_config_and_mock_replies_that_are_not_utf8(tmp_path, capsys, monkeypatch):
    config = tmp_path / "perfpilot.toml"
    config.write_bytes(b'run = "\xff"\n')
    assert "not UTF-8 text" in one_line(capsys, "profile", "--config", str(config), "--", "true")
    replies = tmp_path / "replies.json"
    replies.write_bytes(b'["\xff"]')
    monkeypatch.chdir(tmp_path)
    config.unlink()
    line = one_line(capsys, "optimize", "--run", "true", "--backend", "mock", "--mock-replies", str(replies))
    assert "replies.json: not UTF-8 text" in line
