"""The memory collector on real processes: RSS from the shared stat read, USS/PSS from
smaps_rollup at a throttled rate, exact faults, system memory, attach-mode peaks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from perfpilot.config import Settings
from perfpilot.plugins.memory import SMAPS_MIN_INTERVAL_S, MemoryCollector, proc_smaps_rollup, system_memory
from perfpilot.profilers.session import RunOptions, profile_command, profile_pid
from perfpilot.profilers.target import Target, own_hwm_bytes
from perfpilot.registry import build_plugin_manager

PLUGINS = build_plugin_manager()  # the caller hands the session its collectors

MiB = 1 << 20


def test_smaps_rollup_gives_uss_not_above_pss_not_above_rss() -> None:
    uss, pss = proc_smaps_rollup(os.getpid())  # type: ignore[misc]
    rss = psutil.Process().memory_info().rss
    assert 0 < uss <= pss <= rss * 1.01


def test_system_memory_fields() -> None:
    info = system_memory()
    assert 0 < info["MemAvailable"] <= info["MemTotal"] == psutil.virtual_memory().total


def test_collector_series_and_throttled_uss_pss() -> None:
    # A small child, not this test process: the smaps pass stretches its own period
    # by its cost, which grows with the size of whatever process it reads.
    child = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        # exec sets the name before the new image's pages are mapped, and on a loaded
        # machine the new image may not have run at all yet: wait until it sleeps in
        # nanosleep (its pages are in by then)
        while time.monotonic() < deadline:
            proc = psutil.Process(child.pid)
            if proc.name() == "sleep" and proc.status() == psutil.STATUS_SLEEPING and proc.memory_info().rss > 0:
                break
            time.sleep(0.01)
        target = Target(pid=child.pid, launched=False)
        target.refresh()
        collector = MemoryCollector(Settings())
        assert collector.available()[0]
        collector.start(target)
        first = collector.sample(10.0)
        second = collector.sample(10.1)
        third = collector.sample(10.0 + SMAPS_MIN_INTERVAL_S + 0.05)
        summary = collector.stop()
        rss = psutil.Process(child.pid).memory_info().rss
    finally:
        child.kill()
        child.wait()
    assert first["memory.rss_bytes"] == pytest.approx(rss, rel=0.2)
    assert "memory.uss_bytes" in first and "memory.uss_bytes" not in second and "memory.pss_bytes" in third
    assert "memory.system_available_bytes" in first and "memory.swap_used_bytes" in first
    assert "memory.minor_faults_per_s" in third
    assert summary["peak_rss_bytes"] >= summary["memory_rss_mean_bytes"] > 0
    assert summary["memory_uss_peak_bytes"] <= summary["memory_pss_peak_bytes"]
    assert summary["memory_system_available_min_bytes"] <= psutil.virtual_memory().total


def test_page_faults_are_exact_from_rusage(tmp_path) -> None:
    report = tmp_path / "faults"
    # Above this process's own peak, so the child's rusage maxrss is its own (a smaller
    # child's is perfpilot's high-water mark, see plugins/memory.py).
    size = max(100 * MiB, (own_hwm_bytes() or 0) + 64 * MiB)
    code = (
        "import resource\n"
        f"b = bytearray({size})\n"
        "for i in range(0, len(b), 4096): b[i] = 1\n"  # touch every page: >= size / 4096 minor faults
        "ru = resource.getrusage(resource.RUSAGE_SELF)\n"
        f"open({str(report)!r}, 'w').write(repr(ru.ru_minflt))\n"
    )
    profile = profile_command([sys.executable, "-c", code], Settings(stacks=False), RunOptions(plugin_set=PLUGINS, capture_output=True))
    own = int(report.read_text())
    assert own >= size // 4096
    assert own <= profile.summary["memory_minor_faults"] <= own + 2000
    assert profile.summary["peak_rss_source"] == "rusage"
    assert profile.summary["peak_rss_bytes"] >= size


def test_attached_peak_rss_is_sampled_and_faults_count_from_attach() -> None:
    code = ("import resource, sys, time\nb = b'\\x01' * (200 << 20)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt, flush=True)\ntime.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        faults_before = int(child.stdout.readline())
        profile = profile_pid(child.pid, 0.35, Settings(stacks=False), RunOptions(plugin_set=PLUGINS))
    finally:
        child.kill()
        child.wait()
    assert profile.summary["peak_rss_bytes"] == pytest.approx(200 * MiB, rel=0.10)
    assert profile.summary["peak_rss_source"] == "sampled"
    # the 200 MiB were touched before the attach: a sleeping process adds next to none
    assert faults_before > 200
    assert 0 <= profile.summary["memory_minor_faults"] < faults_before / 10
