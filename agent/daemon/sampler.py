"""One tick of daemon telemetry: watched processes, the host, the registered collectors
and GPUs.

Why per-process telemetry reads /proc here instead of running the registered
collectors per process: a collector observes *one* :class:`~perfpilot.profilers.target.Target`
tree for the life of a run (``start``/``sample``/``stop``), which is the shape of
``perfpilot profile``. The daemon watches many groups whose members come and go, and at
a 1 s interval over 50 processes it must stay under 1% of a core; one ``oneshot()`` read
per process per tick does that, a collector set per process would not. The registered
collectors still run, once, for host telemetry (their host-wide metrics: system memory,
disks, GPUs, power), observing the daemon's own process as their target -- so the
tree-level figures they report describe the daemon itself, a free self-check.

Privileges: CPU time, RSS and threads of any process are world-readable; another
user's ``/proc/PID/io`` and fd table need root or ``CAP_SYS_PTRACE`` (reported as
missing, never faked); py-spy snapshots need ptrace (see snapshots.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from perfpilot.agent.daemon.watch import Watcher
from perfpilot.profilers import procfs
from perfpilot.profilers.collector import CollectorSet
from perfpilot.profilers.hardware import NvmlDevices, nvml_start_problem
from perfpilot.profilers.target import Target

HOST_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
MEMINFO_KEYS = {b"MemTotal", b"MemFree", b"MemAvailable", b"SwapTotal", b"SwapFree"}


@dataclass
class ProcessReading:
    pid: int
    name: str
    cpu_total: float
    rss: int
    threads: int
    fds: int | None
    read_bytes: int | None
    write_bytes: int | None
    create_time: float


@dataclass
class WatchState:
    """Per-group figures; the ``*_total`` ones only ever grow (Prometheus counters)."""

    watch: str
    processes: int = 0
    cpu_seconds_total: float = 0.0
    cpu_pct: float = 0.0
    rss_bytes: int = 0
    threads: int = 0
    open_fds: int | None = None
    read_bytes_total: float | None = None
    write_bytes_total: float | None = None
    restarts_total: int = 0
    gpu_memory_bytes: float | None = None
    rows: list[tuple[int, str, float, int, int]] = field(default_factory=list)  # pid, name, cpu%, rss, threads

    @property
    def members(self) -> list[dict[str, Any]]:
        """The processes, busiest first (at most 50), for the JSON API."""
        rows = sorted(self.rows, key=lambda r: -r[2])[:50]
        return [{"pid": pid, "name": name, "cpu_pct": round(cpu, 2), "rss_bytes": rss, "threads": threads}
                for pid, name, cpu, rss, threads in rows]

    def metrics(self) -> dict[str, float]:
        """Store metric names (``<domain>.<quantity>_<unit>``)."""
        out: dict[str, float] = {
            "process.count": float(self.processes),
            "cpu.utilization_pct": round(self.cpu_pct, 3),
            "cpu.time_s": round(self.cpu_seconds_total, 3),
            "memory.rss_bytes": float(self.rss_bytes),
            "process.threads": float(self.threads),
            "process.restarts": float(self.restarts_total),
        }
        if self.open_fds is not None:
            out["process.open_fds"] = float(self.open_fds)
        if self.read_bytes_total is not None:
            out["io.read_bytes"] = float(self.read_bytes_total)
        if self.write_bytes_total is not None:
            out["io.write_bytes"] = float(self.write_bytes_total)
        if self.gpu_memory_bytes is not None:
            out["gpu.memory_used_bytes"] = float(self.gpu_memory_bytes)
        return out


SLOW_EVERY = 10  # /proc/PID/io and the fd table are read every 10th tick: they move slowly


@dataclass
class _Slow:
    """What is read every SLOW_EVERY ticks, carried between reads."""

    fds: int | None = None
    read_bytes: int | None = None
    write_bytes: int | None = None


def _read_slow(pid: int, denied: set[str]) -> _Slow:
    slow = _Slow()
    if "fds" not in denied:
        try:
            slow.fds = len(os.listdir(f"/proc/{pid}/fd"))
        except PermissionError:
            denied.add("fds")
        except OSError:
            pass
    if "io" not in denied:
        try:
            with open(f"/proc/{pid}/io", "rb") as fh:
                for line in fh:
                    if line.startswith(b"read_bytes:"):
                        slow.read_bytes = int(line.split()[1])
                    elif line.startswith(b"write_bytes:"):
                        slow.write_bytes = int(line.split()[1])
        except PermissionError:
            denied.add("io")
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}"):
                pass  # gone: the next rescan counts the exit
            else:
                denied.add("io")  # a kernel without task I/O accounting
        except (OSError, ValueError, IndexError):
            pass
    return slow


class ProcessSampler:
    """Reads every watched process once per tick and folds them into groups."""

    def __init__(self, watcher: Watcher, *, started_at: float | None = None) -> None:
        self.watcher = watcher
        self.started_at = time.time() if started_at is None else started_at
        self.states = {g.watch: WatchState(g.watch) for g in watcher.groups}
        self._prev: dict[int, tuple[float, ProcessReading]] = {}
        self._slow: dict[int, tuple[float, _Slow]] = {}  # pid -> (create time, last slow read)
        # What this user may not read for *some* process (another user's /proc/PID/io):
        # retried every tick per process would cost more than it tells.
        self.denied: dict[int, set[str]] = {}
        self.missing: set[str] = set()
        self.stats = procfs.StatReader()
        self._ticks = 0

    def sample(self, now: float) -> dict[str, WatchState]:
        groups = self.watcher.groups
        if len(groups) == 1:
            pids: set[int] = groups[0].members
        else:
            pids = set()
            for group in groups:
                pids |= group.members
        self._ticks += 1
        readings, deltas = self._read(pids, now, slow_tick=self._ticks % SLOW_EVERY == 1)
        self._prev = {pid: (now, r) for pid, r in readings.items()}
        if len(self._slow) > len(readings):
            for pid in [p for p in self._slow if p not in readings]:
                del self._slow[pid]
                self.denied.pop(pid, None)
        self.stats.retain(readings)
        for group in groups:
            state = self.states[group.watch]
            state.restarts_total = group.restarts
            _fold(state, [(readings[p], deltas[p]) for p in group.members if p in readings])
        return self.states

    def _read(self, pids: set[int], now: float, slow_tick: bool
              ) -> tuple[dict[int, ProcessReading], dict[int, tuple[float, float, float, float]]]:
        """Each watched process once: its reading, and (cpu s, cpu %, read bytes, written
        bytes) since the previous tick."""
        procs = self.watcher.table.procs
        readings: dict[int, ProcessReading] = {}
        deltas: dict[int, tuple[float, float, float, float]] = {}
        read = self.stats.read
        for pid in pids:
            info = procs.get(pid)
            if info is None:
                continue
            stat = read(pid)
            if stat is None or stat.state == "Z":
                continue  # gone since the rescan; the next rescan counts the exit
            ctime = stat.create_time
            carried = self._slow.get(pid)
            if carried is None or carried[0] != ctime or slow_tick:
                denied = self.denied.setdefault(pid, set())
                carried = (ctime, _read_slow(pid, denied))
                self._slow[pid] = carried
                if denied:
                    self.missing |= denied
            extra = carried[1]
            reading = ProcessReading(pid, info.name, stat.cpu_seconds, stat.rss_bytes, stat.threads, extra.fds,
                                     extra.read_bytes, extra.write_bytes, ctime)
            readings[pid] = reading
            deltas[pid] = self._delta(reading, now)
        return readings, deltas

    def _delta(self, reading: ProcessReading, now: float) -> tuple[float, float, float, float]:
        prev = self._prev.get(reading.pid)
        if prev is not None and prev[1].create_time == reading.create_time:
            t_prev, r_prev = prev
            d_cpu = max(0.0, reading.cpu_total - r_prev.cpu_total)
            d_read = max(0, (reading.read_bytes or 0) - (r_prev.read_bytes or 0))
            d_write = max(0, (reading.write_bytes or 0) - (r_prev.write_bytes or 0))
            return d_cpu, d_cpu / max(now - t_prev, 1e-6) * 100.0, d_read, d_write
        if reading.create_time >= self.started_at - 1.0:
            # Born while we watch (a restart): all of its CPU and I/O is new.
            life = max(now - reading.create_time, 1e-3)
            return (reading.cpu_total, min(reading.cpu_total / life * 100.0, 100.0 * reading.threads),
                    reading.read_bytes or 0, reading.write_bytes or 0)
        # Running before we started: counters start from here, as process-exporter's do.
        return 0.0, 0.0, 0, 0


def _fold(state: WatchState, members: list[tuple[ProcessReading, tuple[float, float, float, float]]]) -> None:
    """One group's figures from its members' readings and deltas this tick."""
    state.processes = len(members)
    if not members:
        state.rss_bytes = state.threads = 0
        state.cpu_pct = 0.0
        state.open_fds = None
        state.rows = []
        return
    rss = threads = 0
    cpu_pct = cpu_s = d_read = d_write = 0.0
    fds: int | None = None
    has_io = False
    for reading, delta in members:
        rss += reading.rss
        threads += reading.threads
        cpu_s += delta[0]
        cpu_pct += delta[1]
        if reading.fds is not None:
            fds = (fds or 0) + reading.fds
        if reading.read_bytes is not None:
            has_io = True
            d_read += delta[2]
            d_write += delta[3]
    state.rss_bytes, state.threads, state.open_fds = rss, threads, fds
    state.cpu_pct = cpu_pct
    state.cpu_seconds_total += cpu_s
    if has_io:
        state.read_bytes_total = (state.read_bytes_total or 0.0) + d_read
        state.write_bytes_total = (state.write_bytes_total or 0.0) + d_write
    # A new list each tick (published states share it); rows become dicts only when asked.
    state.rows = [(r.pid, r.name, d[1], r.rss, r.threads) for r, d in members]


class HostProbe:
    """Host CPU modes, memory and load straight from /proc (what findings need).

    Read here rather than from the cpu/memory collectors so that findings (steal, I/O
    wait, saturation) never depend on which collectors are installed or enabled.
    """

    def __init__(self) -> None:
        self._prev: list[float] | None = None
        self.totals = {mode: 0.0 for mode in HOST_MODES}
        self.cores = psutil.cpu_count() or 1
        self._files = procfs.ProcFiles()

    def _read(self, name: str, size: int) -> bytes:
        data = self._files.read(0, name, size)
        if data is None:  # never on Linux; zeros here would read as a fully busy host
            raise OSError(f"/proc/{name} is not readable")
        return data

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        # First line of /proc/stat: user nice system idle iowait irq softirq steal (USER_HZ).
        stat = self._read("stat", 256)
        times = [int(v) / procfs.CLK_TCK for v in stat.split(b"\n", 1)[0].split()[1:9]]
        times += [0.0] * (len(HOST_MODES) - len(times))
        self.totals = dict(zip(HOST_MODES, times))
        if self._prev is not None:
            deltas = dict(zip(HOST_MODES, (max(0.0, a - b) for a, b in zip(times, self._prev))))
            # guest time is already inside user on Linux; idle+iowait is "not running".
            total = sum(deltas.values()) or 1e-9
            out["cpu.utilization_pct"] = 100.0 * (1.0 - (deltas["idle"] + deltas["iowait"]) / total)
            out["cpu.iowait_pct"] = 100.0 * deltas["iowait"] / total
            out["cpu.steal_pct"] = 100.0 * deltas["steal"] / total
        self._prev = times
        meminfo: dict[bytes, int] = {}
        for line in self._read("meminfo", 8192).splitlines():
            key, _, rest = line.partition(b":")
            if key in MEMINFO_KEYS:
                meminfo[key] = int(rest.split()[0]) * 1024
        total_mem = meminfo.get(b"MemTotal", 0)
        available = meminfo.get(b"MemAvailable", meminfo.get(b"MemFree", 0))
        out["memory.total_bytes"] = float(total_mem)
        out["memory.available_bytes"] = float(available)
        out["memory.used_bytes"] = float(total_mem - available)
        out["memory.swap_used_bytes"] = float(meminfo.get(b"SwapTotal", 0) - meminfo.get(b"SwapFree", 0))
        load1, load5, load15 = os.getloadavg()
        out["cpu.load1"], out["cpu.load5"], out["cpu.load15"] = load1, load5, load15
        return {k: round(v, 3) for k, v in out.items()}

    def close(self) -> None:
        self._files.close()


class GpuProbe:
    """Per-device utilization and per-process GPU memory through NVML, if present.

    ``nvml`` is a pynvml-like module to use instead of loading one (tests pass a
    :class:`perfpilot.testing.FakeNVML`'s); otherwise NVML comes from
    :func:`perfpilot.profilers.hardware.load_nvml`, the loader every collector uses.
    """

    def __init__(self, nvml: Any = None) -> None:
        self.nvml = nvml
        self.reason = ""
        self.devices: NvmlDevices | None = None

    def start(self) -> bool:
        if self.nvml is None:
            self.devices, why = NvmlDevices.open()
        else:
            try:
                self.devices, why = NvmlDevices(self.nvml), ""
            except Exception as exc:  # noqa: BLE001 - no driver, no library, no GPU: all mean "none"
                self.devices, why = None, nvml_start_problem(exc)
        if self.devices is not None and not self.devices.handles:
            self.devices, why = None, "NVML is working but sees no GPU"
        self.reason = "" if self.devices is not None else f"NVML unavailable: {why}"
        return self.devices is not None

    def sample(self) -> tuple[dict[str, float], dict[int, float]]:
        """(device metrics, pid -> GPU memory bytes over all devices)."""
        devices: dict[str, float] = {}
        per_pid: dict[int, float] = {}
        dev = self.devices
        for index in range(len(dev.handles) if dev is not None else 0):
            assert dev is not None
            try:
                util = dev.call(index, "nvmlDeviceGetUtilizationRates")
                memory = dev.call(index, "nvmlDeviceGetMemoryInfo")
                if util is not None:
                    devices[f"gpu{index}.utilization_pct"] = float(util.gpu)
                if memory is not None:
                    devices[f"gpu{index}.memory_used_bytes"] = float(memory.used)
                for proc in dev.call(index, "nvmlDeviceGetComputeRunningProcesses") or ():
                    used = getattr(proc, "usedGpuMemory", None) or 0
                    per_pid[int(proc.pid)] = per_pid.get(int(proc.pid), 0.0) + float(used)
            except Exception as exc:  # noqa: BLE001 - one bad read must not stop the tick
                self.reason = f"NVML read failed: {exc}"
        return devices, per_pid

    def stop(self) -> None:
        if self.devices is not None:
            self.devices.close()


def _estimate_name(metric: str) -> str:
    """``power.cpu_w`` -> ``power.cpu_estimate_w``."""
    stem, sep, unit = metric.rpartition("_")
    return f"{stem}_estimate_{unit}" if sep else f"{metric}_estimate"


class CollectorRunner:
    """The registered collectors, isolated by :class:`CollectorSet`, on the daemon's own tree."""

    def __init__(self, instances: list[Any]) -> None:
        self.collectors = CollectorSet(instances)
        self.target = Target(pid=os.getpid(), launched=False, command=None, cwd=os.getcwd())
        self.t0 = time.monotonic()

    def start(self) -> None:
        self.collectors.check_available()
        self.target.refresh()
        self.collectors.start(self.target)

    def sample(self) -> dict[str, float]:
        self.target.refresh()
        values = self.collectors.sample(time.monotonic() - self.t0)
        estimated = self._estimated_series()
        return {(_estimate_name(k) if k in estimated else k): float(v) for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def _estimated_series(self) -> set[str]:
        """Series a collector says are estimates (the power collector's CPU watts without
        RAPL): a profile says so in its summary's energy source, but /metrics shows series
        alone, so here they keep a name of their own."""
        out: set[str] = set()
        for slot in self.collectors.slots:
            out |= set(getattr(slot.collector, "estimated_series", ()))
        return out

    def stop(self) -> None:
        self.collectors.stop()

    def status(self) -> dict[str, dict[str, Any]]:
        return self.collectors.status()
