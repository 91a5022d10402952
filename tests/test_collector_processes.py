"""The processes collector against real processes: a rank is read from the environment a
process has after its exec, even when the process was first seen between fork and exec."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

from perfpilot.config import Settings
from perfpilot.plugins.processes import ProcessesCollector
from perfpilot.profilers.target import Target

# A launcher that forks a worker which waits 0.5 s before exec'ing with RANK set (torchrun's
# workers go the same way; on a loaded machine the window between fork and exec is long).
LAUNCHER = textwrap.dedent("""
    import os, sys, time
    pid = os.fork()
    if pid == 0:
        time.sleep(0.5)
        os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(3)"], {**os.environ, "RANK": "1"})
    os.waitpid(pid, 0)
""")


def test_a_worker_seen_before_its_exec_still_gets_its_rank() -> None:
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER])
    rows: list[dict] = []
    try:
        target = Target(pid=launcher.pid, launched=False)
        collector = ProcessesCollector(Settings())
        collector.start(target)
        deadline = time.monotonic() + 10
        now = 0.0
        before_exec = None
        while time.monotonic() < deadline:
            target.refresh()
            collector.sample(now)
            now += 0.1
            rows = collector.annotate()["processes"]
            if before_exec is None and len(rows) == 2:  # the fork is seen, before its exec
                before_exec = [r["rank"] for r in rows]
            if any(r["rank"] == 1 for r in rows):
                break
            time.sleep(0.1)
        collector.stop()
        rows = collector.annotate()["processes"]
    finally:
        launcher.kill()
        launcher.wait()
        for row in rows:  # the worker, orphaned by the launcher's kill (its own pid, not a pattern)
            if row["pid"] != launcher.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(row["pid"], signal.SIGKILL)
    assert before_exec == [None, None], before_exec  # it was first seen with the launcher's environment
    [worker] = [r for r in rows if r["rank"] == 1]
    assert "time.sleep(3)" in worker["command"]
