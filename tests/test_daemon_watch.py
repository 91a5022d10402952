"""Watch selectors on real processes: matching, restarts followed, top:N, per-group figures."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from perfpilot.agent.daemon.sampler import ProcessSampler
from perfpilot.agent.daemon.watch import Selector, Watcher
from perfpilot.errors import ConfigError

SLEEPER = "import sys, time; time.sleep(float(sys.argv[1]))"
SPINNER = "import sys, time\nend = time.process_time() + float(sys.argv[1])\nwhile time.process_time() < end: pass\ntime.sleep(60)"


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args])


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []

    def spawn(code: str, *args: str) -> subprocess.Popen:
        proc = _spawn(code, *args)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("text", ["", "name:", "process:x", "pid:abc", "top:0", "cmdline:(unclosed"])
def test_bad_selectors(text: str) -> None:
    with pytest.raises(ConfigError, match="bad watch selector"):
        Selector(text)


def test_duplicate_selector_is_an_error() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        Watcher(["top:1", "top:1"])


def test_cmdline_and_pid_selectors_match_real_processes(procs) -> None:
    tag = f"pp-watch-{uuid.uuid4().hex[:8]}"
    a = procs(SLEEPER, "60", tag)
    b = procs(SLEEPER, "60", tag)
    other = procs(SLEEPER, "60", "something-else")
    time.sleep(0.3)
    watcher = Watcher([f"cmdline:{tag}", f"pid:{other.pid}", "name:no-such-process-name"])
    watcher.refresh()
    groups = {g.watch: g for g in watcher.groups}
    assert groups[f"cmdline:{tag}"].members == {a.pid, b.pid}
    assert groups[f"pid:{other.pid}"].members == {other.pid}
    assert groups["name:no-such-process-name"].members == set()


def test_restarts_are_followed(procs) -> None:
    tag = f"pp-restart-{uuid.uuid4().hex[:8]}"
    first = procs(SLEEPER, "60", tag)
    time.sleep(0.3)
    watcher = Watcher([f"cmdline:{tag}", f"pid:{first.pid}"], restart_window=60)
    sampler = ProcessSampler(watcher)
    watcher.refresh()
    sampler.sample(time.monotonic())
    first.kill()
    first.wait()
    watcher.refresh()  # the exit is seen...
    second = procs(SLEEPER, "60", tag)  # ...then the supervisor starts it again
    time.sleep(0.3)
    watcher.refresh()
    states = sampler.sample(time.monotonic())
    by_watch = {g.watch: g for g in watcher.groups}
    for watch in (f"cmdline:{tag}", f"pid:{first.pid}"):
        group = by_watch[watch]
        assert group.members == {second.pid}, watch
        assert group.restarts == 1, watch
        assert states[watch].restarts_total == 1
        assert states[watch].processes == 1
        assert any(kind == "restart" and str(second.pid) in msg for kind, msg in group.events)


def test_top_n_finds_the_busy_process_and_counts_its_cpu(procs) -> None:
    busy = procs(SPINNER, "1.5")
    time.sleep(0.2)
    watcher = Watcher(["top:10"], top_every=0.0)  # the host is shared: leave room
    sampler = ProcessSampler(watcher)
    watcher.refresh()
    sampler.sample(time.monotonic())
    time.sleep(1.0)
    watcher.refresh()  # ranks by CPU used since the previous ranking
    assert busy.pid in watcher.groups[0].members
    time.sleep(0.5)
    watcher.refresh()
    states = sampler.sample(time.monotonic())
    top = states["top:10"]
    assert top.processes >= 1
    # counted from the first sight: CPU time grows, RSS and threads are real
    assert top.rss_bytes > 1_000_000 and top.threads >= 1


def test_group_cpu_counter_matches_proc(procs) -> None:
    tag = f"pp-cpu-{uuid.uuid4().hex[:8]}"
    watcher = Watcher([f"cmdline:{tag}"])
    sampler = ProcessSampler(watcher)
    watcher.refresh()
    sampler.sample(time.monotonic())
    spinner = procs(SPINNER, "0.8", tag)  # born while watched: all its CPU counts
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        watcher.refresh()
        state = sampler.sample(time.monotonic())[f"cmdline:{tag}"]
        import psutil

        times = psutil.Process(spinner.pid).cpu_times()
        if times.user + times.system >= 0.8:
            break
    watcher.refresh()
    state = sampler.sample(time.monotonic())[f"cmdline:{tag}"]
    truth = sum(psutil.Process(spinner.pid).cpu_times()[:2])
    assert state.cpu_seconds_total == pytest.approx(truth, rel=0.05, abs=0.05)


def test_a_sleeping_python_process_is_idle_for_py_spy_not_a_failure() -> None:
    # py-spy exits 0 with no samples for a process that runs no Python code: that was counted
    # as "py-spy failed: exit status 0" and shown in /healthz as a missing capability.
    import threading

    from perfpilot.agent.daemon.config import SnapshotConfig
    from perfpilot.agent.daemon.snapshots import Snapshotter

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        snap = Snapshotter(SnapshotConfig(duration=1, rate=20), Watcher([f"pid:{proc.pid}"]), threading.Lock(),
                           lambda *args: None)
        if not snap.available:
            pytest.skip(f"no py-spy: {snap.reason}")
        snap.snapshot(proc.pid, [f"pid:{proc.pid}"])
        if snap.stats.failed and ("denied" in str(snap.stats.problems) or "ptrace" in str(snap.stats.problems)):
            pytest.skip(f"py-spy may not attach here: {snap.stats.problems}")
        assert (snap.stats.idle, snap.stats.failed, snap.stats.problems) == (1, 0, {})
    finally:
        proc.kill()
        proc.wait()
