"""I/O collector: the tree's storage bytes, bytes through read/write syscalls ("chars"),
syscall counts, and the machine's disk and network throughput.

Totals (``summary``):

``io_read_bytes`` / ``io_write_bytes``
    bytes the tree caused to be fetched from / sent to storage (page cache hits and
    tmpfs do not count, as in ``/proc/<pid>/io``). Launched: exact, from rusage
    ``inblock``/``oublock`` x 512 (the kernel keeps these as ``read_bytes >> 9``), plus
    live descendants at the end. Attached: sampled.
``io_read_chars`` / ``io_write_chars``, ``io_read_syscalls`` / ``io_write_syscalls``,
``io_cancelled_write_bytes``
    launched: exact, from the root's ``/proc/<pid>/io`` read while it was a zombie
    (it includes every descendant it waited for), plus reaped orphans and live
    descendants. Attached: sampled (see below).
``io_disk_read_bytes`` / ``io_disk_write_bytes``, ``io_net_recv_bytes`` /
``io_net_sent_bytes``
    machine-wide during the run (physical disks only, network without ``lo``).

Series (twice a second): cumulative ``io.read_bytes``, ``io.write_bytes``,
``io.read_chars_bytes``, ``io.write_chars_bytes``, ``io.read_syscalls``,
``io.write_syscalls`` for the tree; ``io.disk_read_bytes_per_s``,
``io.disk_write_bytes_per_s``, ``io.net_recv_bytes_per_s``, ``io.net_sent_bytes_per_s``.

Sampled accounting keeps the last values of processes that exited, except when their
parent in the tree reaped them: the kernel then adds the child's counters to the
parent's, so the child's values move into the parent (its pre-attach baseline too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from perfpilot import hookimpl
from perfpilot.config import Settings
from perfpilot.profilers.procfs import ProcFiles, parse_io, read_file
from perfpilot.profilers.snapshot import ProcSample, TreeSnapshot
from perfpilot.profilers.target import IO_FIELDS, Target, add_io, read_proc_io

SAMPLE_INTERVAL_S = 0.5
SECTOR = 512  # /proc/diskstats and rusage count 512-byte units whatever the device


@dataclass
class _ProcIO:
    starttime: int
    ppid: int
    first: dict[str, float]
    last: dict[str, float]


def _sub(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) - b.get(k, 0.0) for k in IO_FIELDS}


ZERO = {k: 0.0 for k in IO_FIELDS}


def physical_disks(sys_block: str = "/sys/block") -> set[str]:
    """Whole physical disks (those with a ``device`` link): no partitions, loop, dm, md."""
    try:
        names = os.listdir(sys_block)
    except OSError:
        return set()
    return {n for n in names if os.path.exists(os.path.join(sys_block, n, "device"))}


def disk_sectors(disks: set[str], files: ProcFiles | None = None) -> tuple[int, int]:
    """(sectors read, sectors written) summed over ``disks``."""
    data = (files.read(0, "diskstats", 65536) if files else read_file("/proc/diskstats")) or b""
    read = written = 0
    for line in data.splitlines():
        parts = line.split()
        if len(parts) > 9 and parts[2].decode() in disks:
            read += int(parts[5])
            written += int(parts[9])
    return read, written


def net_bytes(files: ProcFiles | None = None) -> tuple[int, int]:
    """(received, sent) bytes over every interface but loopback."""
    data = (files.read(0, "net/dev", 65536) if files else read_file("/proc/net/dev")) or b""
    recv = sent = 0
    for line in data.splitlines()[2:]:
        name, _, rest = line.partition(b":")
        if name.strip() == b"lo":
            continue
        fields = rest.split()
        if len(fields) >= 9:
            recv += int(fields[0])
            sent += int(fields[8])
    return recv, sent


class IoCollector:
    name = "io"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.target: Target | None = None
        self.procs: dict[int, _ProcIO] = {}
        self.gone = dict(ZERO)
        self._last_now: float | None = None
        self._disks: set[str] = set()
        self._disk0 = self._disk_prev = (0, 0)
        self._net0 = self._net_prev = (0, 0)

    def available(self) -> tuple[bool, str]:
        if not os.path.exists("/proc/self/io"):
            return False, "needs Linux /proc/<pid>/io (kernel without task I/O accounting?)"
        return True, ""

    def start(self, target: Target) -> None:
        self.target = target
        self._disks = physical_disks()
        self._disk0 = self._disk_prev = disk_sectors(self._disks)
        self._net0 = self._net_prev = net_bytes()

    def sample(self, now: float) -> dict[str, float]:
        if self._last_now is not None and now - self._last_now < SAMPLE_INTERVAL_S:
            return {}
        assert self.target is not None
        first = self._last_now is None
        self._update(self.target.snapshot(now).procs, first)
        totals = self._sampled()
        out = {
            "io.read_bytes": totals["read_bytes"],
            "io.write_bytes": totals["write_bytes"],
            "io.read_chars_bytes": totals["rchar"],
            "io.write_chars_bytes": totals["wchar"],
            "io.read_syscalls": totals["syscr"],
            "io.write_syscalls": totals["syscw"],
        }
        files = self.target.proc_files
        disk, net = disk_sectors(self._disks, files), net_bytes(files)
        if not first and now > self._last_now:  # type: ignore[operator]
            dt = now - self._last_now  # type: ignore[operator]
            out["io.disk_read_bytes_per_s"] = round((disk[0] - self._disk_prev[0]) * SECTOR / dt, 1)
            out["io.disk_write_bytes_per_s"] = round((disk[1] - self._disk_prev[1]) * SECTOR / dt, 1)
            out["io.net_recv_bytes_per_s"] = round((net[0] - self._net_prev[0]) / dt, 1)
            out["io.net_sent_bytes_per_s"] = round((net[1] - self._net_prev[1]) / dt, 1)
        self._disk_prev, self._net_prev = disk, net
        self._last_now = now
        return out

    def _update(self, procs: Mapping[int, ProcSample], first: bool) -> None:
        assert self.target is not None
        seen: set[int] = set()
        files = self.target.proc_files
        for pid, proc in procs.items():
            io = parse_io(files.read(pid, "io"))
            if io is None:
                continue
            seen.add(pid)
            rec = self.procs.get(pid)
            if rec is not None and rec.starttime != proc.starttime:
                self.gone = add_io(self.gone, _sub(rec.last, rec.first))  # pid reused
                rec = None
            if rec is None:
                # Attached: what already ran counts from now; later arrivals from birth.
                base = dict(io) if (first and not self.target.launched) else dict(ZERO)
                rec = self.procs[pid] = _ProcIO(proc.starttime, proc.ppid, base, io)
            rec.last = io
            rec.ppid = proc.ppid
        for pid in [p for p in self.procs if p not in seen]:
            rec = self.procs.pop(pid)
            parent = self.procs.get(rec.ppid)
            if parent is not None and rec.ppid in seen:
                # Reaped by its (live) parent: its counters are now in the parent's.
                parent.first = add_io(parent.first, rec.first)
            else:
                self.gone = add_io(self.gone, _sub(rec.last, rec.first))

    def _stats_now(self) -> Mapping[int, ProcSample]:
        assert self.target is not None
        # Not the cached tick: the tree as it is now, at the end of the run.
        return TreeSnapshot.read(0.0, (p.pid for p in self.target.processes()), ProcFiles(max_open=0)).procs

    def _sampled(self) -> dict[str, float]:
        total = dict(self.gone)
        for rec in self.procs.values():
            total = add_io(total, _sub(rec.last, rec.first))
        return total

    def _alive_descendants(self) -> dict[str, float]:
        assert self.target is not None
        total = dict(ZERO)
        for proc in self.target.processes():
            if proc.pid == self.target.pid:
                continue
            io = read_proc_io(proc.pid)
            if io is not None:
                total = add_io(total, io)
        return total

    def stop(self) -> dict[str, Any]:
        assert self.target is not None
        target = self.target
        exact = target.exact_totals() if target.launched else None
        if exact is not None:
            alive = self._alive_descendants()
            storage_read = exact["inblock"] * SECTOR + alive["read_bytes"]
            storage_write = exact["oublock"] * SECTOR + alive["write_bytes"]
            if target.exit_io is not None:
                chars = add_io(add_io(target.exit_io, target.orphan_io or ZERO), alive)
            else:
                self._update(self._stats_now(), self._last_now is None)
                chars = self._sampled()
        else:
            self._update(self._stats_now(), self._last_now is None)
            chars = self._sampled()
            storage_read, storage_write = chars["read_bytes"], chars["write_bytes"]
        disk, net = disk_sectors(self._disks), net_bytes()
        return {
            "io_read_bytes": int(storage_read),
            "io_write_bytes": int(storage_write),
            "io_read_chars": int(chars["rchar"]),
            "io_write_chars": int(chars["wchar"]),
            "io_read_syscalls": int(chars["syscr"]),
            "io_write_syscalls": int(chars["syscw"]),
            "io_cancelled_write_bytes": int(chars["cancelled_write_bytes"]),
            "io_disk_read_bytes": (disk[0] - self._disk0[0]) * SECTOR,
            "io_disk_write_bytes": (disk[1] - self._disk0[1]) * SECTOR,
            "io_net_recv_bytes": net[0] - self._net0[0],
            "io_net_sent_bytes": net[1] - self._net0[1],
        }


@hookimpl
def perfpilot_register_collectors(register: Any) -> None:
    register(IoCollector)
