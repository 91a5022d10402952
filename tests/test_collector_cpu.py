"""The cpu collector on real processes: per-process accounting from /proc/<pid>/stat,
attach baselines, exact context switches, machine-wide figures, shared per-tick reads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from perfpilot.config import Settings
from perfpilot.plugins.cpu import CpuCollector, ProcFiles, TreeCpu, proc_stat, tick_stats
from perfpilot.profilers.session import RunOptions, profile_command
from perfpilot.profilers.target import Target

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
        tree.update({stepped.pid: proc_stat(stepped.pid)})
    assert sum(attached.sampled_totals()) == 0.0
    assert sum(launched.sampled_totals()) >= 0.3  # counts from birth
    _go(stepped, "done")
    used = attached.update({stepped.pid: proc_stat(stepped.pid)})
    assert used == pytest.approx(0.2, abs=0.03)  # /proc times tick at 10 ms
    assert sum(attached.sampled_totals()) == pytest.approx(0.2, abs=0.03)


def test_exited_processes_keep_their_last_cpu_times(stepped: subprocess.Popen[str]) -> None:
    tree = TreeCpu(baseline_existing=False)
    tree.update({stepped.pid: proc_stat(stepped.pid)})
    before = sum(tree.sampled_totals())
    stepped.kill()
    stepped.wait()
    tree.update({stepped.pid: proc_stat(stepped.pid)})  # gone: None
    assert stepped.pid not in tree.procs
    assert sum(tree.sampled_totals()) == before


def test_collector_reports_machine_wide_and_tree_series() -> None:
    target = Target(pid=os.getpid(), launched=False)
    target.refresh()
    collector = CpuCollector(Settings())
    assert collector.available() == (True, "")
    collector.start(target)
    first = collector.sample(100.0)
    a = time.process_time()
    while time.process_time() - a < 0.05:
        pass
    second = collector.sample(101.2)
    summary = collector.stop()
    assert first["cpu.processes"] >= 1
    assert "cpu.utilization_pct" not in first and second["cpu.utilization_pct"] >= 0
    for key in ("cpu.system_busy_pct", "cpu.steal_pct", "cpu.iowait_pct", "cpu.load_1m", "cpu.core0_busy_pct"):
        assert key in second, key
    assert 0 <= second["cpu.system_busy_pct"] <= 100
    assert "cpu.ctx_switches_voluntary_per_s" in second  # once a second: due at 101.2
    # attached: since the first sample, in clock ticks (10 ms) summed as floats
    assert summary["cpu_user_s"] + summary["cpu_system_s"] >= 0.04 - 1e-9
    assert summary["cpu_load_1m_max"] >= 0


def test_context_switches_are_exact_from_rusage(tmp_path) -> None:
    report = tmp_path / "ctx"
    code = (
        "import resource, time\n"
        "for _ in range(200): time.sleep(0.0005)\n"
        "ru = resource.getrusage(resource.RUSAGE_SELF)\n"
        f"open({str(report)!r}, 'w').write(repr((ru.ru_nvcsw, ru.ru_nivcsw)))\n"
    )
    profile = profile_command([sys.executable, "-c", code], Settings(stacks=False), RunOptions(capture_output=True))
    vol, invol = eval(report.read_text())  # noqa: S307 - our own repr
    assert vol >= 200
    assert vol <= profile.summary["cpu_ctx_switches_voluntary"] <= vol + 50
    assert profile.summary["cpu_ctx_switches_involuntary"] >= invol


def test_collectors_of_one_tick_share_one_stat_read_per_process() -> None:
    target = Target(pid=os.getpid(), launched=False)
    target.refresh()
    first = tick_stats(target, 1.0)
    assert tick_stats(target, 1.0) is first
    assert tick_stats(target, 1.1) is not first
    assert first[os.getpid()] is not None


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
