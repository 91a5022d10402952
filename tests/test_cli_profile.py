"""`perfpilot profile` through the real console script: exit codes, pass-through,
one-line errors for bad input, Ctrl-C still writes the Profile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perfpilot.profilers.profile import Profile


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def test_output_passes_through_and_profile_is_written(tmp_path, perfpilot_cli):
    out = tmp_path / "run.json"
    r = perfpilot_cli("profile", "-q", "--no-stacks", "-o", str(out), "--",
                      sys.executable, "-c", "import sys; print('to-stdout'); print('to-stderr', file=sys.stderr)")
    assert r.returncode == 0
    assert r.stdout == "to-stdout\n"
    assert "to-stderr" in r.stderr
    profile = Profile.load(out)
    assert profile.target["exit_code"] == 0
    assert profile.summary["wall_s"] > 0
    assert profile.host["cores_logical"] >= 1
    # round trip: load -> save is identical
    again = tmp_path / "again.json"
    profile.save(again)
    assert again.read_text() == out.read_text()


def test_target_exit_code_becomes_ours(tmp_path, perfpilot_cli):
    out = tmp_path / "run.json"
    r = perfpilot_cli("profile", "-q", "--no-stacks", "-o", str(out), "--", sys.executable, "-c", "raise SystemExit(3)")
    assert r.returncode == 3
    assert json.loads(out.read_text())["target"]["exit_code"] == 3


def test_killed_by_signal(tmp_path, perfpilot_cli):
    out = tmp_path / "run.json"
    r = perfpilot_cli("profile", "-q", "--no-stacks", "-o", str(out), "--", "sh", "-c", "kill -KILL $$")
    assert r.returncode == 128 + signal.SIGKILL
    target = json.loads(out.read_text())["target"]
    assert target["signal"] == signal.SIGKILL


def test_command_not_found(tmp_path, perfpilot_cli):
    r = perfpilot_cli("profile", "-o", str(tmp_path / "x.json"), "--", "no-such-command-xyz")
    assert r.returncode == 127
    assert r.stderr.strip().startswith("perfpilot: error: command not found: no-such-command-xyz")
    assert len(r.stderr.strip().splitlines()) == 1
    _no_traceback(r)


def test_not_executable(tmp_path, perfpilot_cli):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    r = perfpilot_cli("profile", "-o", str(tmp_path / "x.json"), "--", str(script))
    if os.geteuid() == 0 and os.access(script, os.X_OK):
        pytest.skip("root can execute anything here")
    assert r.returncode == 126
    _no_traceback(r)


def test_empty_command_is_a_usage_error(perfpilot_cli):
    r = perfpilot_cli("profile")
    assert r.returncode == 2
    assert "nothing to profile" in r.stderr
    _no_traceback(r)


def test_missing_pid(perfpilot_cli):
    r = perfpilot_cli("profile", "--pid", "999999999", "--duration", "1s")
    assert r.returncode == 125
    assert "no process with pid 999999999" in r.stderr
    _no_traceback(r)


@pytest.mark.parametrize("interval", ["0", "-5ms", "often"])
def test_invalid_interval(interval, perfpilot_cli):
    r = perfpilot_cli("profile", "--interval", interval, "--", "true")
    assert r.returncode == 125
    assert "interval" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    _no_traceback(r)


def test_broken_config_file(tmp_path, perfpilot_cli):
    (tmp_path / "pyproject.toml").write_text("[tool.perfpilot]\ninterval = \n")
    r = perfpilot_cli("profile", "--", "true", cwd=tmp_path)
    assert r.returncode == 125
    assert "not valid TOML" in r.stderr
    _no_traceback(r)
    (tmp_path / "pyproject.toml").write_text("[tool.perfpilot]\nsampling = 3\n")
    r = perfpilot_cli("profile", "--", "true", cwd=tmp_path)
    assert r.returncode == 125 and "unknown key 'sampling'" in r.stderr


def test_unknown_collector_flag(perfpilot_cli):
    r = perfpilot_cli("profile", "--plugins", "cpu,warp-drive", "--", "true")
    assert r.returncode == 125
    assert "unknown collector(s): warp-drive" in r.stderr
    _no_traceback(r)


def test_attach_to_pid(tmp_path, perfpilot_cli):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time\nx=0\nt=time.time()\nwhile time.time()-t<3: x+=1"])
    try:
        out = tmp_path / "attach.json"
        r = perfpilot_cli("profile", "-q", "--no-stacks", "--pid", str(sleeper.pid), "--duration", "1s", "-o", str(out))
        assert r.returncode == 0, r.stderr
        data = json.loads(out.read_text())
        assert data["target"]["attached"] is True and data["target"]["pid"] == sleeper.pid
        assert 0.8 < data["duration_s"] < 3.0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_ctrl_c_stops_target_and_writes_profile(tmp_path):
    exe = Path(sys.executable).parent / "perfpilot"
    out = tmp_path / "run.json"
    proc = subprocess.Popen([str(exe), "profile", "-q", "--no-stacks", "-o", str(out), "--", "sleep", "60"],
                            start_new_session=True, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    data = json.loads(out.read_text())
    assert data["target"]["interrupted"] is True
    assert data["duration_s"] < 20
    assert "Traceback" not in err


@pytest.mark.parametrize("flag", ["-o", "--html"])
def test_unwritable_output_is_refused_before_the_target_runs(tmp_path, perfpilot_cli, flag):
    """A long run must not be spent and then lost because its output cannot be written."""
    ran = tmp_path / "ran"
    args = ["profile", "-q", "--no-stacks", flag, str(tmp_path / "missing-dir" / "out")]
    if flag != "-o":
        args += ["-o", str(tmp_path / "run.json")]
    r = perfpilot_cli(*args, "--", "touch", str(ran))
    assert r.returncode == 125
    assert r.stderr.strip() == (f"perfpilot: error: cannot write {tmp_path / 'missing-dir' / 'out'}: directory "
                                f"{tmp_path / 'missing-dir'} does not exist (create it first or choose another path)")
    assert not ran.exists()


def _run_on_a_terminal(args: list[str]) -> str:
    """Run perfpilot with stdout and stderr on a pseudo-terminal; return what it showed."""
    import pty

    exe = Path(sys.executable).parent / "perfpilot"
    main, secondary = pty.openpty()
    proc = subprocess.Popen([str(exe), *args], stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(main)
    return b"".join(chunks).decode(errors="replace")


def test_live_line_stays_out_of_the_targets_terminal_output(tmp_path):
    target = [sys.executable, "-c", "import time\nfor i in range(12):\n    print('line', i, flush=True); time.sleep(0.1)"]
    shown = _run_on_a_terminal(["profile", "--no-stacks", "-o", str(tmp_path / "a.json"), "--", *target])
    assert "line 11" in shown
    assert "procs" not in shown  # no status line spliced into the target's lines
    forced = _run_on_a_terminal(["profile", "--no-stacks", "--live", "-o", str(tmp_path / "b.json"), "--", *target])
    assert "procs" in forced
