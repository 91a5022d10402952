"""The cpu collector on real processes: per-process accounting from /proc/<pid>/stat,
attach baselines, exact context switches, machine-wide figures, shared per-tick reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from perfpilot.config import Settings
from perfpilot.profilers.cputime import TreeCpu
from perfpilot.profilers.procfs import ProcFiles
from perfpilot.profilers.session import RunOptions, profile_command
from perfpilot.profilers.snapshot import ProcSample, TreeSnapshot
from perfpilot.profilers.target import Target
from perfpilot.registry import build_plugin_manager

PLUGINS = build_plugin_manager()  # the caller hands the session its collectors

# Burns 0.3 s, says "ready", waits for a line, burns 0.2 s more, says "done", waits.
STEPPED = textwrap.dedent(
    """
    import sys, time
    def burn(s):
        a = time.process_time()
        while time.process_time() - a < s:
            pass
    burn(0.3)
    print("ready", flush=True)
    sys.stdin.readline()
    burn(0.2)
    print("done", flush=True)
    sys.stdin.readline()
    """
)


def _now(pid: int) -> dict[int, ProcSample]:
    """The process as one tick sees it (empty once it is gone)."""
    return dict(TreeSnapshot.read(0.0, [pid], ProcFiles(max_open=0)).procs)


def _burn(seconds: float) -> None:
    a = time.process_time()
    while time.process_time() - a < seconds:
        pass


@pytest.fixture
def stepped() -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", STEPPED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    yield child
    child.kill()
    child.wait()


def _go(child: subprocess.Popen[str], expect: str) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline() == expect + "\n"


def test_attach_counts_cpu_from_the_moment_of_attach(stepped: subprocess.Popen[str]) -> None:
    attached = TreeCpu(baseline_existing=True)
    launched = TreeCpu(baseline_existing=False)
    for tree in (attached, launched):
        tree.update(_now(stepped.pid))
    assert sum(attached.sampled_totals()) == 0.0
    assert sum(launched.sampled_totals()) >= 0.3  # counts from birth
    _go(stepped, "done")
    used = attached.update(_now(stepped.pid))
    assert used == pytest.approx(0.2, abs=0.03)  # /proc times tick at 10 ms
    assert sum(attached.sampled_totals()) == pytest.approx(0.2, abs=0.03)


def test_exited_processes_keep_their_last_cpu_times(stepped: subprocess.Popen[str]) -> None:
    tree = TreeCpu(baseline_existing=False)
    tree.update(_now(stepped.pid))
    before = sum(tree.sampled_totals())
    stepped.kill()
    stepped.wait()
    tree.update(_now(stepped.pid))  # gone: absent
    assert stepped.pid not in tree.procs
    assert sum(tree.sampled_totals()) == before


ATTACHED = textwrap.dedent(
    """
    import json, os, resource, time
    from perfpilot.config import Settings
    from perfpilot.plugins.cpu import CpuCollector
    from perfpilot.profilers.target import Target

    def burn(s):
        a = time.process_time()
        while time.process_time() - a < s:
            pass

    target = Target(pid=os.getpid(), launched=False)
    target.refresh()
    collector = CpuCollector(Settings())
    out = {"available": collector.available()}
    collector.start(target)
    ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    out["first"] = collector.sample(t0)
    burn(0.25)
    t1 = time.monotonic()
    out["second"] = collector.sample(t1)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    out["summary"] = collector.stop()
    out["used"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    out["span"] = t1 - t0
    print(json.dumps(out))
    """
)


def test_attached_cpu_time_and_utilisation_match_this_process_rusage() -> None:
    # In a fresh interpreter with no children: the test process itself may have some left by
    # other tests, and an attached target is the whole tree.
    done = subprocess.run([sys.executable, "-c", ATTACHED], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    first, second, summary, used, span = out["first"], out["second"], out["summary"], out["used"], out["span"]
    assert out["available"] == [True, ""]
    assert first["cpu.processes"] == 1
    assert "cpu.utilization_pct" not in first
    # /proc counts whole 10 ms clock ticks per field: a few ticks apart at most
    assert summary["cpu_user_s"] + summary["cpu_system_s"] == pytest.approx(used, abs=0.04)
    assert second["cpu.utilization_pct"] == pytest.approx(100.0 * used / span, abs=100 * 0.04 / span)
    assert summary["cpu_utilization_peak_pct"] == pytest.approx(second["cpu.utilization_pct"], abs=0.01)
    for key in ("cpu.system_busy_pct", "cpu.steal_pct", "cpu.iowait_pct", "cpu.load_1m", "cpu.core0_busy_pct"):
        assert key in second, key
    assert 0 <= second["cpu.system_busy_pct"] <= 100


def test_launched_tree_cpu_time_is_what_its_processes_used(tmp_path) -> None:
    report = tmp_path / "used"
    # A parent burns 0.15 s and waits for a child that burns 0.25 s: its rusage of itself
    # and its children is the tree's CPU time, measured from inside.
    code = textwrap.dedent(f"""
        import resource, subprocess, sys, time
        def burn(s):
            a = time.process_time()
            while time.process_time() - a < s:
                pass
        subprocess.run([sys.executable, "-c", "import time\\nwhile time.process_time() < 0.25: pass"])
        burn(0.15)
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        open({str(report)!r}, "w").write(repr(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime))
    """)
    profile = profile_command([sys.executable, "-c", code], Settings(stacks=False), RunOptions(plugin_set=PLUGINS, capture_output=True))
    inside = float(report.read_text())
    total = profile.summary["cpu_user_s"] + profile.summary["cpu_system_s"]
    assert inside >= 0.4
    # exact rusage: at least what it had used when it wrote the file, plus only its exit
    assert inside <= total <= inside + 0.05
    assert profile.summary["cpu_utilization_mean_pct"] == pytest.approx(100 * total / profile.summary["wall_s"])


def test_context_switches_are_exact_from_rusage(tmp_path) -> None:
    report = tmp_path / "ctx"
    code = (
        "import resource, time\n"
        "for _ in range(200): time.sleep(0.0005)\n"
        "ru = resource.getrusage(resource.RUSAGE_SELF)\n"
        f"open({str(report)!r}, 'w').write(repr((ru.ru_nvcsw, ru.ru_nivcsw)))\n"
    )
    profile = profile_command([sys.executable, "-c", code], Settings(stacks=False), RunOptions(plugin_set=PLUGINS, capture_output=True))
    vol, invol = eval(report.read_text())  # noqa: S307 - our own repr
    assert vol >= 200
    assert vol <= profile.summary["cpu_ctx_switches_voluntary"] <= vol + 50
    assert profile.summary["cpu_ctx_switches_involuntary"] >= invol


def test_collectors_of_one_tick_share_one_stat_read_per_process() -> None:
    target = Target(pid=os.getpid(), launched=False)
    target.refresh()
    first = target.snapshot(1.0)
    assert target.snapshot(1.0) is first
    assert target.snapshot(1.1) is not first
    me = first.procs[os.getpid()]
    assert me.ppid == os.getppid() and me.rss_bytes > 0
    assert me.starttime == target.snapshot(1.2).procs[os.getpid()].starttime  # names this process


def test_kept_open_proc_files_never_read_a_reused_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    files = ProcFiles(max_open=1)
    assert files.read(child.pid, "stat") is not None
    assert files.read(os.getpid(), "stat") is not None  # over the limit: opened per read
    assert len(files._fds) == 1
    child.kill()
    child.wait()
    assert files.read(child.pid, "stat") is None  # ESRCH on the kept descriptor
    assert files._fds == {}
    files.read(os.getpid(), "stat")
    files.retain(set())
    assert files._fds == {}
    files.close()
