"""The io collector on real processes: storage reads that miss the page cache, exact
syscall chars from the zombie, attach-mode accounting without double counting what a
parent reaps, and the machine-wide disk/network figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from perfpilot.config import Settings
from perfpilot.plugins.io import IoCollector, net_bytes, parse_io, physical_disks
from perfpilot.profilers.session import RunOptions, profile_command, profile_pid
from perfpilot.registry import build_plugin_manager

PLUGINS = build_plugin_manager()  # the caller hands the session its collectors

MiB = 1 << 20
SETTINGS = Settings(stacks=False)


def test_parse_io_reads_every_field() -> None:
    io = parse_io(Path("/proc/self/io").read_bytes())
    assert io is not None
    assert set(io) >= {"rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes"}
    assert io["rchar"] > 0


def test_physical_disks_skip_partitions_loop_and_device_mapper(tmp_path: Path) -> None:
    block = tmp_path / "block"
    (block / "vda" / "device").mkdir(parents=True)
    (block / "nvme0n1" / "device").mkdir(parents=True)
    (block / "loop0").mkdir()
    (block / "dm-0").mkdir()
    assert physical_disks(str(block)) == {"vda", "nvme0n1"}
    assert physical_disks(str(tmp_path / "absent")) == set()


def test_network_counters_agree_with_psutil_read_between_them() -> None:
    before = net_bytes()
    nics = psutil.net_io_counters(pernic=True)
    after = net_bytes()
    recv = sum(c.bytes_recv for name, c in nics.items() if name != "lo")
    sent = sum(c.bytes_sent for name, c in nics.items() if name != "lo")
    # counters only grow: a right parse of /proc/net/dev brackets psutil's read
    assert before[0] <= recv <= after[0] and before[1] <= sent <= after[1]


def test_reads_that_miss_the_page_cache_are_storage_reads(tmp_path: Path) -> None:
    data = tmp_path / "in.bin"
    with open(data, "wb") as fh:
        fh.write(os.urandom(20 * MiB))
        fh.flush()
        os.fsync(fh.fileno())
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # evict: the child must hit the disk
    code = f"f = open({str(data)!r}, 'rb', buffering=0)\nwhile f.read(1 << 20): pass\n"
    profile = profile_command([sys.executable, "-c", code], SETTINGS, RunOptions(plugin_set=PLUGINS, capture_output=True))
    s = profile.summary
    if s["io_read_bytes"] == 0:
        pytest.skip("this filesystem does not account storage reads")
    assert s["io_read_bytes"] == pytest.approx(20 * MiB, rel=0.05)
    assert 20 * MiB <= s["io_read_chars"] <= 20 * MiB + 4 * MiB  # plus the interpreter's imports
    assert s["io_disk_read_bytes"] >= 19 * MiB  # machine-wide, the same read seen from the disk


def test_orphans_io_is_counted(tmp_path: Path) -> None:
    done = tmp_path / "done"
    writer = (f"import os\nfd = os.open('/dev/null', os.O_WRONLY)\n"
              f"for _ in range(64): os.write(fd, b'x' * 65536)\nopen({str(done)!r}, 'w').write('1')\n")
    writer_file = tmp_path / "writer.py"
    writer_file.write_text(writer)
    script = f"({sys.executable} {writer_file} &); while [ ! -s {done} ]; do sleep 0.05; done; sleep 0.2"
    # The writer may live less than one tick; as in the CLI, unseen orphans are claimed.
    profile = profile_command(["sh", "-c", script], SETTINGS, RunOptions(plugin_set=PLUGINS, capture_output=True, claim_unseen_orphans=True))
    assert 4 * MiB <= profile.summary["io_write_chars"] <= 4 * MiB + 256 * 1024
    assert profile.summary["io_write_syscalls"] >= 64


def test_attached_tree_does_not_double_count_what_a_parent_reaps() -> None:
    child_code = ("import os, time\nfd = os.open('/dev/null', os.O_WRONLY)\n"
                  "for _ in range(64): os.write(fd, b'x' * 65536)\ntime.sleep(0.7)\n")
    root_code = ("import subprocess, sys, time\n"
                 "sys.stdout.write('x' * 100000)\n"  # written before attach: not counted
                 "print('ready', flush=True)\nsys.stdin.readline()\n"
                 f"subprocess.run([sys.executable, '-c', {child_code!r}])\n"
                 "time.sleep(0.7)\n")
    root = subprocess.Popen([sys.executable, "-c", root_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    said_go = []

    def go_after_attaching(_elapsed: float, _values: object) -> None:
        if not said_go:  # the first tick has taken the attach baseline
            assert root.stdin is not None
            root.stdin.write("go\n")
            root.stdin.flush()
            said_go.append(True)

    try:
        assert root.stdout is not None and root.stdout.readline().endswith("ready\n")
        profile = profile_pid(root.pid, None, SETTINGS, RunOptions(plugin_set=PLUGINS, on_tick=go_after_attaching))
    finally:
        root.kill()
        root.wait()
    # the child's 4 MiB appear once: in its own counters, then in the parent's after the reap
    assert 4 * MiB <= profile.summary["io_write_chars"] <= 4 * MiB + 256 * 1024


def test_collector_counts_what_this_process_writes_between_samples(tmp_path: Path) -> None:
    from perfpilot.profilers.target import Target

    target = Target(pid=os.getpid(), launched=False)
    target.refresh()
    collector = IoCollector(Settings())
    assert collector.available() == (True, "")
    collector.start(target)
    first = collector.sample(5.0)
    with open(tmp_path / "out.bin", "wb", buffering=0) as fh:
        for _ in range(16):
            fh.write(b"x" * 65536)
    assert collector.sample(5.1) == {}  # not due yet: twice a second
    third = collector.sample(5.6)
    summary = collector.stop()
    assert first["io.write_chars_bytes"] == 0  # attached: counted from the first sample
    assert 1 * MiB <= third["io.write_chars_bytes"] <= 1 * MiB + 64 * 1024
    assert third["io.write_syscalls"] >= 16
    assert "io.disk_write_bytes_per_s" not in first and third["io.disk_write_bytes_per_s"] >= 0
    assert 1 * MiB <= summary["io_write_chars"] <= 1 * MiB + 64 * 1024


def test_storage_writes_and_memory_are_measured_with_the_cpu_collector_disabled(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    code = (f"import os\nb = bytearray({64 * MiB})\nb[::4096] = b'\\x01' * len(b[::4096])\n"
            f"with open({str(out)!r}, 'wb') as fh:\n    fh.write(os.urandom({8 * MiB}))\n"
            "    fh.flush()\n    os.fsync(fh.fileno())\n")
    settings = Settings(stacks=False, disable_plugins=["cpu"])
    profile = profile_command([sys.executable, "-c", code], settings, RunOptions(plugin_set=PLUGINS, capture_output=True))
    s = profile.summary
    assert "cpu" not in profile.collectors and "cpu_user_s" not in s
    assert profile.collectors["io"]["errors"] == [] and profile.collectors["memory"]["errors"] == []
    if s["io_write_bytes"] == 0:
        pytest.skip("this filesystem does not account storage writes")
    assert 8 * MiB <= s["io_write_bytes"] <= 9 * MiB  # the file, plus a little metadata
    assert 8 * MiB <= s["io_write_chars"] <= 8 * MiB + 256 * 1024
    assert s["peak_rss_bytes"] >= 64 * MiB
    assert max(v for v in profile.series["values"]["memory.rss_bytes"] if v is not None) <= s["peak_rss_bytes"]
