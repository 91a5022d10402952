"""One tick of daemon telemetry: watched processes, the host, the registered collectors
and GPUs.

Why per-process telemetry reads psutil here instead of running the registered
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
from perfpilot.profilers.collector import CollectorSet
from perfpilot.profilers.target import Target

HOST_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


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
    members: list[dict[str, Any]] = field(default_factory=list)

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


CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SLOW_EVERY = 10  # /proc/PID/io and the fd table are read every 10th tick: they move slowly


def _read_stat(pid: int, boot_time: float) -> tuple[float, int, int, float]:
    """(cpu seconds, threads, rss bytes, create time) from one read of /proc/PID/stat.

    One file per process per tick instead of psutil's four (stat, statm, status, io):
    at 50 processes and 1 s this is most of the daemon's CPU budget.
    """
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state) of proc(5): utime=14, stime=15, num_threads=20, starttime=22, rss=24
    utime, stime = int(fields[11]), int(fields[12])
    return ((utime + stime) / CLK_TCK, int(fields[17]), int(fields[21]) * PAGE_SIZE,
            round(boot_time + int(fields[19]) / CLK_TCK, 2))


def _read_process(pid: int, name: str, boot_time: float, denied: set[str], slow: bool,
                  last: "ProcessReading | None") -> ProcessReading:
    try:
        cpu, threads, rss, create_time = _read_stat(pid, boot_time)
    except FileNotFoundError:
        raise psutil.NoSuchProcess(pid) from None
    except (IndexError, ValueError):
        raise psutil.ZombieProcess(pid) from None
    if last is not None and last.create_time != create_time:
        last = None  # the pid was reused: nothing of the old process carries over
    fds = last.fds if last is not None else None
    read_bytes = last.read_bytes if last is not None else None
    write_bytes = last.write_bytes if last is not None else None
    if slow or last is None:
        if "fds" not in denied:
            try:
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except PermissionError:
                denied.add("fds")
            except OSError:
                pass
        if "io" not in denied:
            try:
                io = psutil.Process(pid).io_counters()
                read_bytes, write_bytes = io.read_bytes, io.write_bytes
            except (psutil.AccessDenied, AttributeError):
                denied.add("io")
            except psutil.Error:
                pass
    return ProcessReading(pid, name, cpu, rss, threads, fds, read_bytes, write_bytes, create_time)


class ProcessSampler:
    """Reads every watched process once per tick and folds them into groups."""

    def __init__(self, watcher: Watcher, *, started_at: float | None = None) -> None:
        self.watcher = watcher
        self.started_at = time.time() if started_at is None else started_at
        self.states = {g.watch: WatchState(g.watch) for g in watcher.groups}
        self._prev: dict[int, tuple[float, ProcessReading]] = {}
        # What this user may not read for *some* process (another user's /proc/PID/io):
        # retried every tick per process would cost more than it tells.
        self.denied: dict[int, set[str]] = {}
        self.missing: set[str] = set()
        self.boot_time = psutil.boot_time()
        self._ticks = 0

    def sample(self, now: float) -> dict[str, WatchState]:
        pids: set[int] = set()
        for group in self.watcher.groups:
            pids |= group.members
        readings: dict[int, ProcessReading] = {}
        self._ticks += 1
        slow = self._ticks % SLOW_EVERY == 1
        for pid in pids:
            info = self.watcher.info(pid)
            if info is None:
                continue
            denied = self.denied.setdefault(pid, set())
            prev = self._prev.get(pid)
            try:
                readings[pid] = _read_process(pid, info.name, self.boot_time, denied, slow,
                                              prev[1] if prev else None)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # gone since the rescan; the next rescan counts the exit
            except psutil.AccessDenied:
                denied.add("all")
                continue
            if denied:
                self.missing |= denied
        deltas: dict[int, tuple[float, float, float, float]] = {}
        for pid, reading in readings.items():
            prev = self._prev.get(pid)
            if prev is not None and prev[1].create_time == reading.create_time:
                t_prev, r_prev = prev
                dt = max(now - t_prev, 1e-6)
                d_cpu = max(0.0, reading.cpu_total - r_prev.cpu_total)
                d_read = max(0, (reading.read_bytes or 0) - (r_prev.read_bytes or 0))
                d_write = max(0, (reading.write_bytes or 0) - (r_prev.write_bytes or 0))
                deltas[pid] = (d_cpu, d_cpu / dt * 100.0, d_read, d_write)
            elif reading.create_time >= self.started_at - 1.0:
                # Born while we watch (a restart): all of its CPU and I/O is new.
                life = max(now - reading.create_time, 1e-3)
                deltas[pid] = (reading.cpu_total, min(reading.cpu_total / life * 100.0, 100.0 * reading.threads),
                               reading.read_bytes or 0, reading.write_bytes or 0)
            else:
                # Running before we started: counters start from here, as process-exporter's do.
                deltas[pid] = (0.0, 0.0, 0, 0)
        self._prev = {pid: (now, r) for pid, r in readings.items()}
        for pid in list(self.denied):
            if pid not in readings:
                del self.denied[pid]
        for group in self.watcher.groups:
            state = self.states[group.watch]
            members = [readings[p] for p in group.members if p in readings]
            state.processes = len(members)
            state.rss_bytes = sum(r.rss for r in members)
            state.threads = sum(r.threads for r in members)
            fds = [r.fds for r in members if r.fds is not None]
            state.open_fds = sum(fds) if fds else None
            state.cpu_pct = sum(deltas[r.pid][1] for r in members)
            state.cpu_seconds_total += sum(deltas[r.pid][0] for r in members)
            if any(r.read_bytes is not None for r in members):
                state.read_bytes_total = (state.read_bytes_total or 0.0) + sum(deltas[r.pid][2] for r in members)
                state.write_bytes_total = (state.write_bytes_total or 0.0) + sum(deltas[r.pid][3] for r in members)
            state.restarts_total = group.restarts
            state.members = sorted(
                ({"pid": r.pid, "name": r.name, "cpu_pct": round(deltas[r.pid][1], 2), "rss_bytes": r.rss,
                  "threads": r.threads} for r in members),
                key=lambda m: -m["cpu_pct"],
            )[:50]
        return self.states


class HostProbe:
    """Host CPU modes, memory and load straight from /proc (what findings need).

    Read here rather than from the cpu/memory collectors so that findings (steal, I/O
    wait, saturation) never depend on which collectors are installed or enabled.
    """

    def __init__(self) -> None:
        self._prev: Any = None
        self.totals = {mode: 0.0 for mode in HOST_MODES}
        self.cores = psutil.cpu_count() or 1

    def sample(self) -> dict[str, float]:
        times = psutil.cpu_times()
        out: dict[str, float] = {}
        for mode in HOST_MODES:
            self.totals[mode] = float(getattr(times, mode, 0.0))
        if self._prev is not None:
            deltas = {m: max(0.0, getattr(times, m, 0.0) - getattr(self._prev, m, 0.0)) for m in HOST_MODES}
            # guest time is already inside user on Linux; idle+iowait is "not running".
            total = sum(deltas.values()) or 1e-9
            out["cpu.utilization_pct"] = 100.0 * (1.0 - (deltas["idle"] + deltas["iowait"]) / total)
            out["cpu.iowait_pct"] = 100.0 * deltas["iowait"] / total
            out["cpu.steal_pct"] = 100.0 * deltas["steal"] / total
        self._prev = times
        memory = psutil.virtual_memory()
        out["memory.total_bytes"] = float(memory.total)
        out["memory.available_bytes"] = float(memory.available)
        out["memory.used_bytes"] = float(memory.total - memory.available)
        out["memory.swap_used_bytes"] = float(psutil.swap_memory().used)
        load1, load5, load15 = os.getloadavg()
        out["cpu.load1"], out["cpu.load5"], out["cpu.load15"] = load1, load5, load15
        return {k: round(v, 3) for k, v in out.items()}


class GpuProbe:
    """Per-device utilization and per-process GPU memory through NVML, if present.

    ``nvml`` is the ``pynvml`` module, or a fake with the same functions where there
    is no GPU (``perfpilot.testing`` ships one).
    """

    def __init__(self, nvml: Any = None) -> None:
        self.nvml = nvml
        self.reason = ""
        self.handles: list[Any] = []

    def start(self) -> bool:
        try:
            if self.nvml is None:
                if os.environ.get("PERFPILOT_FAKE_NVML"):
                    # A test's scripted GPU (perfpilot.testing): never set on a real host.
                    from perfpilot.testing.fake_nvml import from_environment

                    from_environment()
                import pynvml

                self.nvml = pynvml
            self.nvml.nvmlInit()
            self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.nvml.nvmlDeviceGetCount())]
        except Exception as exc:  # noqa: BLE001 - no driver, no library, no GPU: all mean "none"
            self.reason = f"NVML unavailable: {exc}"
            self.handles = []
            return False
        if not self.handles:
            self.reason = "no GPUs visible to NVML"
        return bool(self.handles)

    def sample(self) -> tuple[dict[str, float], dict[int, float]]:
        """(device metrics, pid -> GPU memory bytes over all devices)."""
        devices: dict[str, float] = {}
        per_pid: dict[int, float] = {}
        for index, handle in enumerate(self.handles):
            try:
                util = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                devices[f"gpu{index}.utilization_pct"] = float(util.gpu)
                devices[f"gpu{index}.memory_used_bytes"] = float(memory.used)
                for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    used = getattr(proc, "usedGpuMemory", None) or 0
                    per_pid[int(proc.pid)] = per_pid.get(int(proc.pid), 0.0) + float(used)
            except Exception as exc:  # noqa: BLE001 - one bad read must not stop the tick
                self.reason = f"NVML read failed: {exc}"
        return devices, per_pid

    def stop(self) -> None:
        if self.handles:
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass


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
        return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def stop(self) -> None:
        self.collectors.stop()

    def status(self) -> dict[str, dict[str, Any]]:
        return self.collectors.status()
