"""In-process measurement of a block of code or a callable (used by the pytest plugin).

What one :class:`BlockMeter` measurement gives, and where each figure comes from:

``wall``        ``time.perf_counter`` around the block.
``cpu``         ``getrusage(RUSAGE_SELF)`` (all threads) plus ``getrusage(RUSAGE_CHILDREN)``:
                a child process the block started *and waited for* is counted (``subprocess.run``
                waits; a child still running when the block ends is not, because the kernel only
                adds a child's rusage once it is reaped).
``peak_rss``    growth of resident memory over its level when the block started, at its peak:
                on Linux the process's high-water mark is reset by writing ``5`` to
                ``/proc/self/clear_refs`` and ``VmHWM`` is read from ``/proc/self/status``
                afterwards. Where the reset is refused the peak is exact only when the
                lifetime ``ru_maxrss`` grew during the block; otherwise the end-of-block growth
                is reported as a lower bound and ``peak_rss_exact`` is false. A child process
                reaped during the block counts instead when its peak RSS is larger (seen only
                when the lifetime maximum of reaped children grows, and only above this
                process's own peak: Linux starts a child's ru_maxrss at its parent's RSS).
``io_read``/``io_write``  storage bytes from ``/proc/self/io`` (``read_bytes``/``write_bytes``;
                page-cache hits are not storage reads). ``rchar``/``wchar`` are kept too.
``energy``      RAPL package counters where readable (whole-package energy: everything the
                machine ran during the block), NVML total-energy counters for GPUs, otherwise
                an estimate: CPU seconds × watts per busy core, labelled ``estimate`` with its
                assumption. An estimate is never presented as a measurement.
``cpu_wait``    time this process's threads spent runnable but waiting for a CPU (the run
                queue): ``run_delay``, the second field of ``/proc/self/task/<tid>/schedstat``
                (nanoseconds). ``cpu_wait_s`` is the measuring thread's own wait -- the part of
                ``wall`` that a busier machine adds without the code doing more -- and
                ``cpu_wait_threads_s`` that of every thread of the process (threads that ended
                during the block are missed; children's waits are not counted). Absent (None),
                never faked, where the kernel has no schedstat (no ``CONFIG_SCHED_INFO``).
``gpu_memory``  ``torch.cuda.max_memory_allocated`` when torch is already imported by the
                code under test and CUDA is initialised (this module never imports torch).

:func:`measure_calls` times a callable over calibrated rounds (the pytest fixture).
"""

from __future__ import annotations

import gc
import math
import os
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from perfpilot.profilers.hardware import POWERCAP, NvmlDevices, estimate_note, find_rapl_zones
from perfpilot.profilers.procfs import PAGE_SIZE, parse_io

CLEAR_REFS = "/proc/self/clear_refs"
STATUS = "/proc/self/status"
STATM = "/proc/self/statm"
PROC_IO = "/proc/self/io"
TASKS = "/proc/self/task"


@dataclass
class BlockSample:
    """One measurement of one block. Figures in seconds, bytes and joules."""

    wall_s: float
    cpu_user_s: float
    cpu_system_s: float
    cpu_children_s: float
    peak_rss_bytes: float
    peak_rss_exact: bool
    rss_start_bytes: float
    io_read_bytes: float | None = None
    io_write_bytes: float | None = None
    io_rchar: float | None = None
    io_wchar: float | None = None
    energy: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpu_memory_bytes: float | None = None
    cpu_wait_s: float | None = None  # the measuring thread's run-queue wait
    cpu_wait_threads_s: float | None = None  # every thread of the process, this one included

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_system_s + self.cpu_children_s

    @property
    def energy_j(self) -> float | None:
        if not self.energy:
            return None
        return sum(float(entry["joules"]) for entry in self.energy.values())

    @property
    def energy_source(self) -> str | None:
        """``measured`` when any domain was measured, ``estimate`` when all were estimated."""
        if not self.energy:
            return None
        sources = {entry["source"] for entry in self.energy.values()}
        return "estimate" if sources == {"estimate"} else "measured"

    def metrics(self) -> dict[str, float]:
        """Figures under the metric names of :mod:`perfpilot.profilers.metrics`."""
        out: dict[str, float] = {"wall": self.wall_s, "cpu": self.cpu_s, "peak_rss": self.peak_rss_bytes}
        if self.io_read_bytes is not None and self.io_write_bytes is not None:
            out["io_read"] = self.io_read_bytes
            out["io_write"] = self.io_write_bytes
            out["io"] = self.io_read_bytes + self.io_write_bytes
        energy = self.energy_j
        if energy is not None:
            out["energy"] = energy
        if self.gpu_memory_bytes is not None:
            out["gpu_memory"] = self.gpu_memory_bytes
        if self.cpu_wait_s is not None:
            out["cpu_wait"] = self.cpu_wait_s
        return out


@dataclass(eq=False)  # identity: removed from _ACTIVE by object, not by value
class _Start:
    wall: float
    self_ru: resource.struct_rusage
    child_ru: resource.struct_rusage
    rss: float
    io: dict[str, int] | None
    energy: dict[str, float]
    waits: dict[int, int] | None = None  # thread id -> run_delay ns; the measuring thread under key -1
    # highest VmHWM seen before a nested block reset the (process-wide) high-water mark
    carried_hwm: float = 0.0


def _close_all(fds: Any) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class _ProcFiles:
    """/proc/self files kept open: a ``pread`` at offset 0 regenerates them and costs a
    few microseconds, where open/read/close costs 15-25 (this runs twice per test)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.fds: dict[str, int] = {}
        for path, flags in ((STATM, os.O_RDONLY), (STATUS, os.O_RDONLY), (PROC_IO, os.O_RDONLY),
                            (CLEAR_REFS, os.O_WRONLY)):
            try:
                self.fds[path] = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                pass

    def _fd(self, path: str) -> int | None:
        if os.getpid() != self.pid:  # a forked child must read its own /proc/self
            self.close()
            self.__init__()  # type: ignore[misc]
        return self.fds.get(path)

    def read(self, path: str) -> bytes | None:
        fd = self._fd(path)
        if fd is None:
            return None
        try:
            return os.pread(fd, 8192, 0)
        except OSError:
            return None

    def close(self) -> None:
        _close_all(self.fds.values())
        self.fds = {}

    def io(self) -> dict[str, float] | None:
        return parse_io(self.read(PROC_IO))

    def rss(self) -> float:
        text = self.read(STATM)
        return int(text.split()[1]) * PAGE_SIZE if text else 0.0

    def vm_hwm(self) -> float | None:
        text = self.read(STATUS)
        if not text:
            return None
        at = text.find(b"VmHWM:")
        if at < 0:
            return None
        return int(text[at + 6:text.index(b"\n", at)].split()[0]) * 1024

    def reset_hwm(self) -> bool:
        fd = self._fd(CLEAR_REFS)
        if fd is None:
            return False
        try:
            os.write(fd, b"5")
            return True
        except OSError:
            return False


class _RunQueue:
    """Run-queue wait (``run_delay``, ns) of this process's threads from their schedstat files.

    The measuring thread's file is kept open (a ``pread`` costs a few µs); the other threads
    are listed only when the process has any, so a single-threaded test pays one read."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.fds: dict[int, int] = {}
        self.works = self.own() is not None

    def _fd(self, tid: int) -> int | None:
        if os.getpid() != self.pid:  # a forked child has other threads
            self.close()
            self.pid = os.getpid()
        fd = self.fds.get(tid)
        if fd is None:
            try:
                fd = os.open(f"{TASKS}/{tid}/schedstat", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return None
            self.fds[tid] = fd
        return fd

    def own(self) -> int | None:
        """This thread's run_delay in ns, None where there is no schedstat."""
        fd = self._fd(threading.get_native_id())
        if fd is None:
            return None
        try:
            return int(os.pread(fd, 128, 0).split()[1])
        except (OSError, IndexError, ValueError):
            return None

    def read(self) -> dict[int, int] | None:
        own = self.own()
        if own is None:
            return None
        if threading.active_count() == 1:
            return {-1: own}  # no other Python thread: a native one (BLAS, torch) is missed -- the cheap path
        me = threading.get_native_id()
        waits = {-1: own, me: own, -2: 1}  # -2: a full listing, so a thread absent from it started later
        try:
            tids = [int(t) for t in os.listdir(TASKS)]
        except OSError:
            return waits
        for tid in tids:
            if tid == me:
                waits[tid] = own
                continue
            try:
                with open(f"{TASKS}/{tid}/schedstat", "rb") as handle:  # short-lived threads: not kept open
                    waits[tid] = int(handle.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
        return waits

    def close(self) -> None:
        _close_all(self.fds.values())
        self.fds = {}


def _waits(before: dict[int, int], after: dict[int, int]) -> tuple[float, float]:
    """(measuring thread, all threads) run-queue wait in seconds between two readings."""
    own = max(0, after[-1] - before[-1]) / 1e9
    if len(after) == 1:  # the cheap path: this thread only
        return own, own
    # A thread missing from a full listing at the start began during the block: it counts
    # from zero. After a cheap start (one thread) nothing else is known to count from.
    full = -2 in before
    total = sum(max(0, ns - before[tid]) if tid in before else ns
                for tid, ns in after.items() if tid >= 0 and (full or tid in before))
    if not any(tid >= 0 for tid in before):  # a cheap start: this thread is known only as -1
        total += own * 1e9
    return own, max(own, total / 1e9)


class _Rapl:
    """The CPU domain's RAPL zones (the packages: :mod:`perfpilot.profilers.hardware`'s
    zone rule), read as raw counters so that nested blocks need no shared state."""

    def __init__(self, root: Path | str = POWERCAP) -> None:
        zones, _ = find_rapl_zones(root)
        self.zones = [z for z in zones if z.domain == "cpu"]

    def read(self) -> list[int]:
        return [zone.energy_uj() for zone in self.zones]

    def joules(self, before: list[int], after: list[int]) -> float:
        return sum(zone.joules_between(a, b) for zone, a, b in zip(self.zones, before, after))


class _Nvml:
    """NVML total-energy counters (mJ) of GPUs that have one; none without pynvml or a GPU.

    Loaded through :func:`perfpilot.profilers.hardware.load_nvml`, so a FakeNVML
    (``PERFPILOT_FAKE_NVML``, or installed in-process) stands in for it in tests."""

    def __init__(self) -> None:
        self.devices, _ = NvmlDevices.open()
        self.indices = sorted(self.devices.energy_mj()) if self.devices is not None else []

    def read(self) -> dict[int, int]:
        assert self.devices is not None
        return self.devices.energy_mj()


def _torch_cuda() -> Any:
    """The torch module when the code under test already uses CUDA, else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch
    except Exception:  # noqa: BLE001 - a broken CUDA setup means "no GPU memory figure"
        return None
    return None


# Blocks in progress, outermost first. The high-water mark is per process, so a nested
# block (a fixture measuring inside a measured test) must not lose the outer one's peak.
_ACTIVE: list[_Start] = []


class BlockMeter:
    """Measures blocks in this process. Build one per session: it probes once what works."""

    def __init__(self, *, cpu_tdp_w: float | None = None, energy: bool = True,
                 estimate: tuple[float, str] | None = None, powercap_root: Path | str = POWERCAP) -> None:
        self.proc = _ProcFiles()
        self.hwm_resettable = self.proc.reset_hwm() and self.proc.vm_hwm() is not None
        self.proc_io = self.proc.io() is not None
        self.run_queue = _RunQueue()
        self.rapl = _Rapl(powercap_root) if energy else None
        self.nvml = _Nvml() if energy else None
        self.energy = energy
        self.watts_per_core, self.estimate_note = estimate or estimate_note(cpu_tdp_w)

    def capabilities(self) -> dict[str, Any]:
        """What this meter measures here, and how (for reports)."""
        return {
            "peak_rss": "VmHWM reset via /proc/self/clear_refs" if self.hwm_resettable
            else "ru_maxrss (exact only when the lifetime peak grows; else a lower bound)",
            "io": "/proc/self/io" if self.proc_io else "unavailable",
            "cpu_wait": "run_delay from /proc/self/task/*/schedstat" if self.run_queue.works
            else "unavailable (no /proc/<pid>/schedstat: kernel without CONFIG_SCHED_INFO)",
            "energy": ("rapl" if self.rapl and self.rapl.zones else "")
            + (" + nvml" if self.nvml and self.nvml.indices else "")
            or (self.estimate_note if self.energy else "off"),
        }

    def start(self) -> _Start:
        energy: dict[str, float] = {}
        if self.rapl is not None and self.rapl.zones:
            energy.update({f"rapl{i}": v for i, v in enumerate(self.rapl.read())})
        if self.nvml is not None and self.nvml.indices:
            energy.update({f"gpu{i}": float(v) for i, v in self.nvml.read().items()})
        torch = _torch_cuda()
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()
        if self.hwm_resettable:
            if _ACTIVE:
                before = self.proc.vm_hwm() or 0.0
                for outer in _ACTIVE:
                    outer.carried_hwm = max(outer.carried_hwm, before)
            self.proc.reset_hwm()
        rss = self.proc.rss()
        io = self.proc.io() if self.proc_io else None
        waits = self.run_queue.read() if self.run_queue.works else None
        self_ru = resource.getrusage(resource.RUSAGE_SELF)
        child_ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = _Start(time.perf_counter(), self_ru, child_ru, rss, io, energy, waits)
        _ACTIVE.append(start)
        return start

    def stop(self, start: _Start) -> BlockSample:
        wall = time.perf_counter() - start.wall
        self_ru = resource.getrusage(resource.RUSAGE_SELF)
        child_ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        waits = self.run_queue.read() if start.waits is not None else None
        io = self.proc.io() if start.io is not None else None
        for index in range(len(_ACTIVE) - 1, -1, -1):
            if _ACTIVE[index] is start:
                del _ACTIVE[index]
                break
        hwm_now = self.proc.vm_hwm() if self.hwm_resettable else None
        if hwm_now is not None:
            hwm, exact = max(hwm_now, start.carried_hwm), True
        elif self_ru.ru_maxrss > start.self_ru.ru_maxrss:
            hwm, exact = self_ru.ru_maxrss * 1024.0, True
        else:
            hwm, exact = self.proc.rss(), False
        peak = max(0.0, hwm - start.rss)
        # A child's ru_maxrss starts at this process's RSS when it was forked (Linux hands
        # the old mm's high-water mark to the exec'd child, vfork included), so a child's
        # peak is told apart only when it is above this process's own peak in the block.
        child_peak = child_ru.ru_maxrss * 1024.0
        if child_ru.ru_maxrss > start.child_ru.ru_maxrss and child_peak > hwm:
            peak = max(peak, child_peak)
        sample = BlockSample(
            wall_s=wall,
            cpu_user_s=self_ru.ru_utime - start.self_ru.ru_utime,
            cpu_system_s=self_ru.ru_stime - start.self_ru.ru_stime,
            cpu_children_s=(child_ru.ru_utime - start.child_ru.ru_utime) + (child_ru.ru_stime - start.child_ru.ru_stime),
            peak_rss_bytes=peak,
            peak_rss_exact=exact,
            rss_start_bytes=start.rss,
        )
        if io is not None and start.io is not None:
            sample.io_read_bytes = float(io.get("read_bytes", 0) - start.io.get("read_bytes", 0))
            sample.io_write_bytes = float(io.get("write_bytes", 0) - start.io.get("write_bytes", 0))
            sample.io_rchar = float(io.get("rchar", 0) - start.io.get("rchar", 0))
            sample.io_wchar = float(io.get("wchar", 0) - start.io.get("wchar", 0))
        if waits is not None and start.waits is not None:
            sample.cpu_wait_s, sample.cpu_wait_threads_s = _waits(start.waits, waits)
        if self.energy:
            sample.energy = self._energy(start, sample)
        torch = _torch_cuda()
        if torch is not None:
            sample.gpu_memory_bytes = float(torch.cuda.max_memory_allocated())
        return sample

    def _energy(self, start: _Start, sample: BlockSample) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if self.rapl is not None and self.rapl.zones:
            before = [int(start.energy[f"rapl{i}"]) for i in range(len(self.rapl.zones))]
            out["cpu"] = {"joules": self.rapl.joules(before, self.rapl.read()), "source": "rapl",
                          "note": "whole CPU package, not only this process"}
        else:
            out["cpu"] = {"joules": sample.cpu_s * self.watts_per_core, "source": "estimate",
                          "note": self.estimate_note}
        if self.nvml is not None and self.nvml.indices:
            for i, value in self.nvml.read().items():
                if f"gpu{i}" in start.energy:
                    out[f"gpu{i}"] = {"joules": (value - start.energy[f"gpu{i}"]) / 1e3, "source": "nvml_energy",
                                      "note": "whole GPU, not only this process"}
        return out

    def measure(self) -> "_BlockContext":
        """``with meter.measure() as m: ...`` then ``m.sample``."""
        return _BlockContext(self)


class _BlockContext:
    def __init__(self, meter: BlockMeter) -> None:
        self.meter = meter
        self.sample: BlockSample | None = None
        self._start: _Start | None = None

    def __enter__(self) -> "_BlockContext":
        self._start = self.meter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._start is not None
        self.sample = self.meter.stop(self._start)


# ------------------------------------------------------------ repeated rounds


@dataclass
class Distribution:
    """Per-call figures of a callable over rounds: ``wall[i]`` is round i's seconds per call."""

    wall: list[float]
    cpu: list[float]
    iterations: int  # calls per round
    rounds: int
    peak_rss: list[float] = field(default_factory=list)
    cpu_wait: list[float] = field(default_factory=list)  # run-queue wait per call; empty without schedstat
    result: Any = field(default=None, repr=False)
    name: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.wall)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.wall) if len(self.wall) > 1 else 0.0

    @property
    def min(self) -> float:
        return min(self.wall)

    @property
    def max(self) -> float:
        return max(self.wall)

    def samples(self, metric: str) -> list[float]:
        return {"wall": self.wall, "cpu": self.cpu, "peak_rss": self.peak_rss, "cpu_wait": self.cpu_wait}.get(metric, [])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rounds": self.rounds, "iterations": self.iterations, "wall": self.wall,
                "cpu": self.cpu, "peak_rss": self.peak_rss, "cpu_wait": self.cpu_wait, "median_wall_s": self.median,
                "mean_wall_s": self.mean, "stdev_wall_s": self.stdev}


def _timer_resolution() -> float:
    info = time.get_clock_info("perf_counter")
    return max(info.resolution, 1e-9)


def calibrate(fn: Callable[[], Any], *, min_round_s: float) -> tuple[int, Any]:
    """Calls per round so that one round lasts at least ``min_round_s`` (and the result of a call)."""
    iterations = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(iterations):
            result = fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_round_s or iterations >= 1 << 24:
            return iterations, result
        # aim a little past the target so the next try usually succeeds
        scale = min_round_s * 1.2 / elapsed if elapsed > 0 else 10.0
        iterations = max(iterations + 1, min(iterations * 10, math.ceil(iterations * scale)))


def measure_calls(
    fn: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    rounds: int = 10,
    min_rounds: int = 5,
    max_time_s: float = 2.0,
    min_round_s: float | None = None,
    warmup: int = 1,
    meter: BlockMeter | None = None,
    name: str = "",
) -> Distribution:
    """Time ``fn(*args, **kwargs)`` over calibrated rounds.

    Calls per round are calibrated so a round lasts well above the timer's resolution
    (default: max(1 ms, 1000 × resolution)); rounds stop at ``rounds`` or when
    ``max_time_s`` is spent, but never before ``min_rounds``. The garbage collector is left
    on (it is part of what the code costs) but collected before the rounds start.
    """
    if rounds < 1 or min_rounds < 1:
        raise ValueError("rounds and min_rounds must be at least 1")
    kwargs = kwargs or {}

    def call() -> Any:
        return fn(*args, **kwargs)

    result = None
    for _ in range(warmup):
        result = call()
    target = min_round_s if min_round_s is not None else max(1e-3, 1000 * _timer_resolution())
    iterations, result = calibrate(call, min_round_s=target)
    gc.collect()
    meter = meter or BlockMeter(energy=False)
    dist = Distribution(wall=[], cpu=[], iterations=iterations, rounds=0, name=name)
    deadline = time.perf_counter() + max_time_s
    while dist.rounds < rounds and (dist.rounds < min_rounds or time.perf_counter() < deadline):
        start = meter.start()
        for _ in range(iterations):
            result = call()
        sample = meter.stop(start)
        dist.wall.append(sample.wall_s / iterations)
        dist.cpu.append(sample.cpu_s / iterations)
        dist.peak_rss.append(sample.peak_rss_bytes)
        if sample.cpu_wait_s is not None:
            dist.cpu_wait.append(sample.cpu_wait_s / iterations)
        dist.rounds += 1
    dist.result = result
    return dist
