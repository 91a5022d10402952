"""perfpilot.profilers.procfs against real processes: what the collectors and the daemon
read through it (stat fields, Stat records, argv, kept-open descriptors) matches what the
kernel reports by other routes, and a kept descriptor never reads a reaped pid's successor."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from perfpilot.agent.daemon.watch import Watcher
from perfpilot.profilers import procfs


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _wait_exec(pid: int, name: str) -> None:
    """Until the forked child runs ``name`` (before exec it still has our comm)."""
    deadline = time.monotonic() + 30
    while (stat := procfs.read_stat(pid)) is None or stat.name != name:
        assert time.monotonic() < deadline, f"pid {pid} never became {name}"
        time.sleep(0.01)


def test_stat_fields_and_stat_agree_with_the_kernel_by_other_routes() -> None:
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        data = procfs.read_file("/proc/self/stat")
        fields = procfs.stat_fields(data)
        stat = procfs.read_stat(os.getpid())
        threads = len(os.listdir("/proc/self/task"))
    finally:
        release.set()
        worker.join()
    assert fields is not None and stat is not None
    me = psutil.Process()
    assert int(fields[procfs.STAT_PPID]) == os.getppid()
    assert stat.state == "R" and fields[procfs.STAT_STATE] == b"R"  # reading itself: running
    assert stat.threads == threads >= 2
    assert stat.name == me.name()[:15]
    times = os.times()
    # CPU seconds, not wall time: the same kernel counters through times(2), a few ticks apart.
    assert abs(stat.cpu_seconds - (times.user + times.system)) < 0.2
    assert abs(stat.rss_bytes - me.memory_info().rss) < 8 * 2**20
    assert abs(stat.create_time - me.create_time()) < 0.02
    # two reads of the same file: a clock tick of CPU time (a CI run saw 13.65 vs 13.66 s)
    # or a page of RSS may land between them
    again = procfs.parse_stat(data)  # type: ignore[arg-type]
    assert again is not None
    assert (again.name, again.state, again.threads, again.create_time) == \
        (stat.name, stat.state, stat.threads, stat.create_time)
    assert abs(again.cpu_seconds - stat.cpu_seconds) <= 0.05
    assert abs(again.rss_bytes - stat.rss_bytes) < 2**20


def test_parse_stat_takes_the_last_parenthesis_and_rejects_other_text() -> None:
    line = b"42 (a) (b) c) S 1 42 42 0 -1 4194560 7 0 3 0 250 150 10 5 20 0 3 0 1000 123 17 rest\n"
    fields = procfs.stat_fields(line)
    assert fields is not None
    assert fields[procfs.STAT_STATE] == b"S" and int(fields[procfs.STAT_PPID]) == 1
    assert (int(fields[procfs.STAT_MINFLT]), int(fields[procfs.STAT_MAJFLT])) == (7, 3)
    assert int(fields[procfs.STAT_STARTTIME]) == 1000 and int(fields[procfs.STAT_RSS]) == 17
    stat = procfs.parse_stat(line)
    assert stat.name == "a) (b) c" and stat.threads == 3
    assert stat.cpu_seconds == pytest.approx(400 / procfs.CLK_TCK)  # utime + stime, not the children's
    assert stat.rss_bytes == 17 * procfs.PAGE_SIZE
    assert stat.create_time == procfs.create_time(1000)
    assert procfs.stat_fields(b"") is None and procfs.stat_fields(None) is None
    with pytest.raises(ValueError):
        procfs.parse_stat(b"no command name here")
    with pytest.raises(IndexError):
        procfs.parse_stat(b"1 (short) S 1")


def test_gone_processes_read_as_none_and_zombies_have_no_argv() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    zombie = procfs.read_stat(child.pid)
    while zombie is not None and zombie.state != "Z":
        assert time.monotonic() < deadline, "child never exited"
        time.sleep(0.02)
        zombie = procfs.read_stat(child.pid)
    assert zombie is not None
    assert procfs.read_cmdline(child.pid) == ()  # a zombie keeps its stat but not its argv
    child.wait()
    after = procfs.read_stat(child.pid)
    assert after is None or after.create_time != zombie.create_time  # reaped (or the pid is someone else's)
    assert procfs.read_file("/proc/no-such-file") is None
    assert procfs.proc_stat(2**22 + 1) is None  # above pid_max: never a process


def test_long_argv_is_read_whole() -> None:
    # /proc/PID/cmdline can be megabytes; a one-read cap would cut it silently.
    args = ["x" * 100_000, "y" * 100_000, "é"]
    code = "import time; print('ready', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"  # exec'd: argv is the new one
        argv = procfs.read_cmdline(child.pid)
        assert argv is not None and argv[3:] == tuple(args)
    finally:
        child.kill()
        child.wait()


def test_proc_files_keep_at_most_max_open_and_never_read_a_reaped_pid() -> None:
    before = _open_fds()
    files = procfs.ProcFiles(max_open=2)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert procfs.stat_fields(files.read(child.pid, "stat")) is not None
        assert files.read(0, "meminfo", 8192).startswith(b"MemTotal:")  # type: ignore[union-attr]
        assert files.read(os.getpid(), "stat") is not None  # over the limit: opened per read
        assert _open_fds() == before + 2
        again = files.read(child.pid, "stat")
        assert procfs.stat_fields(again)[procfs.STAT_STARTTIME] == procfs.proc_stat(child.pid)[procfs.STAT_STARTTIME]  # type: ignore[index]
    finally:
        child.kill()
        child.wait()
    assert files.read(child.pid, "stat") is None  # ESRCH on the kept descriptor, whoever has the pid now
    assert _open_fds() == before + 1
    files.retain(set())  # system files (pid 0) stay open
    assert files.read(0, "meminfo") is not None and _open_fds() == before + 1
    files.close()
    files.close()
    assert _open_fds() == before


def test_stat_reader_follows_its_processes_and_releases_descriptors() -> None:
    before = _open_fds()
    reader = procfs.StatReader(max_open=8)
    kids = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        for kid in kids:
            _wait_exec(kid.pid, "sleep")
        first = {p.pid: reader.read(p.pid) for p in kids}
        assert all(s is not None and s.name == "sleep" for s in first.values())
        assert _open_fds() == before + 3
        reader.retain({kids[0].pid})
        assert _open_fds() == before + 1
        assert reader.read(kids[0].pid) == procfs.read_stat(kids[0].pid)
    finally:
        for p in kids:
            p.kill()
            p.wait()
    assert reader.read(kids[0].pid) is None
    reader.close()
    assert _open_fds() == before


def test_stat_parses_names_with_spaces_and_parentheses(tmp_path: Path) -> None:
    weird = tmp_path / "we (i) rd"
    weird.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(weird), "30"])
    try:
        time.sleep(0.2)
        stat = procfs.read_stat(proc.pid)
        assert stat is not None and stat.name == "we (i) rd" and stat.threads == 1 and stat.rss_bytes > 0
        assert abs(stat.create_time - time.time()) < 60
        assert procfs.read_cmdline(proc.pid) == (str(weird), "30")
        watcher = Watcher(["name:we (i) rd"])
        watcher.refresh()
        assert watcher.groups[0].members == {proc.pid}
    finally:
        proc.kill()
        proc.wait()


def test_kept_open_stat_never_reads_a_reaped_process() -> None:
    reader = procfs.StatReader()
    proc = subprocess.Popen(["sleep", "30"])
    try:
        # Until the child has exec'd and gone to sleep its figures are still moving.
        deadline = time.monotonic() + 10
        while True:
            first = reader.read(proc.pid)
            if (first is not None and first.name == "sleep" and first.state == "S") or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert first is not None and first.state in "SR"
        assert reader.read(proc.pid) == first  # the same descriptor, re-read
    finally:
        proc.kill()
        proc.wait()
    assert reader.read(proc.pid) is None  # reaped: ESRCH on the old descriptor, whatever owns the pid now
    reader.close()
    assert procfs.read_stat(os.getpid()) is not None
