"""GPU collector: NVIDIA GPUs through NVML (``import pynvml``, package ``nvidia-ml-py``).

Per GPU ``i``, every tick: ``gpu<i>.utilization_pct`` (SM busy), ``gpu<i>.memory_busy_pct``
(memory controller busy), ``gpu<i>.memory_used_bytes``, ``gpu<i>.sm_clock_hz``,
``gpu<i>.memory_clock_hz``, ``gpu<i>.power_w``, ``gpu<i>.energy_j`` (NVML's total-energy
counter since the run started), ``gpu<i>.temperature_c``, ``gpu<i>.clocks_event_reasons``
(NVML's throttle bit mask); once a second ``gpu<i>.pcie_tx_bytes_per_s`` /
``gpu<i>.pcie_rx_bytes_per_s`` (NVML measures each over 20 ms, blocking the caller, so
not every tick). For the target's processes: ``gpu<i>.target_memory_used_bytes`` and
``gpu<i>.target_sm_pct`` when NVML lists them (inside a container with its own PID
namespace NVML reports host pids, which match nothing: then only device figures exist).

Totals: ``gpu_utilization_mean_pct`` (over the GPUs the target used when known, else all),
``gpu_memory_peak_bytes`` (the target's processes when NVML listed them, else whole
devices; ``gpu_memory_peak_source`` says which), ``gpu_count``, ``gpu_power_peak_w``,
``gpu_temperature_max_c``, ``gpu_sm_mean_pct`` (target), ``gpu_throttled_fraction`` (share
of ticks with a performance-limiting reason), ``gpu_throttle_reasons`` (names seen).

A query a GPU does not support is skipped from then on. Any other NVML error is raised,
so the session records it and disables the collector after repeated failures.
No ``pynvml``, no driver or no GPU: ``available()`` says which, and nothing fails.

NVML is loaded and wrapped by :mod:`perfpilot.profilers.hardware` (one loader for the
collectors, the pytest meter and the daemon), which holds the testing seam: with
``PERFPILOT_FAKE_NVML=<script.json>`` set, :class:`perfpilot.testing.FakeNVML` stands in
for ``pynvml``.
"""

from __future__ import annotations

from typing import Any

from perfpilot import hookimpl
from perfpilot.config import Settings
from perfpilot.profilers.hardware import ERR_NOT_FOUND, NvmlDevices, load_nvml, nvml_devices
from perfpilot.profilers.target import Target

PCIE_INTERVAL_S = 1.0

CLOCKS_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
PERFORMANCE_LIMITING = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


class GpuCollector:
    name = "gpu"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.target: Target | None = None
        self.devices: NvmlDevices | None = None
        self._energy0: dict[int, int] = {}
        self._pcie_last: float | None = None
        self._last_seen_us: dict[int, int] = {}
        self._ticks = 0
        self._util: list[dict[int, float]] = []
        self._device_mem_peak = 0
        self._target_mem_peak: int | None = None
        self._target_gpus: set[int] = set()
        self._sm: list[float] = []
        self._power_peak: float | None = None
        self._temp_max: float | None = None
        self._reasons_seen = 0
        self._throttled_ticks = 0

    def available(self) -> tuple[bool, str]:
        nvml, why = load_nvml()
        if nvml is None:
            return False, why
        count, why = nvml_devices(nvml)
        if not count:
            return False, why
        return True, f"{count} GPU(s) via NVML"

    def start(self, target: Target) -> None:
        nvml, why = load_nvml()
        if nvml is None:
            raise RuntimeError(why)
        self.target = target
        self.devices = NvmlDevices(nvml)

    def sample(self, now: float) -> dict[str, float]:
        assert self.devices is not None and self.target is not None
        dev = self.devices
        nvml = dev.nvml
        pids = {p.pid for p in self.target.processes()}
        out: dict[str, float] = {}
        util_now: dict[int, float] = {}
        device_mem = 0
        target_mem: int | None = None
        sm_total: float | None = None
        throttled = False
        pcie = self._pcie_last is None or now - self._pcie_last >= PCIE_INTERVAL_S
        for i in range(len(dev.handles)):
            p = f"gpu{i}."
            rates = dev.call(i, "nvmlDeviceGetUtilizationRates")
            if rates is not None:
                util_now[i] = float(rates.gpu)
                out[p + "utilization_pct"] = float(rates.gpu)
                out[p + "memory_busy_pct"] = float(rates.memory)
            mem = dev.call(i, "nvmlDeviceGetMemoryInfo")
            if mem is not None:
                out[p + "memory_used_bytes"] = float(mem.used)
                device_mem += int(mem.used)
            for key, kind in (("sm_clock_hz", nvml.NVML_CLOCK_SM), ("memory_clock_hz", nvml.NVML_CLOCK_MEM)):
                mhz = dev.call(i, "nvmlDeviceGetClockInfo", kind)
                if mhz is not None:
                    out[p + key] = float(mhz) * 1e6
            milliwatts = dev.call(i, "nvmlDeviceGetPowerUsage")
            if milliwatts is not None:
                watts = milliwatts / 1000.0
                out[p + "power_w"] = watts
                self._power_peak = max(self._power_peak or 0.0, watts)
            energy = dev.call(i, "nvmlDeviceGetTotalEnergyConsumption")
            if energy is not None:
                base = self._energy0.setdefault(i, int(energy))
                out[p + "energy_j"] = (int(energy) - base) / 1000.0
            temp = dev.call(i, "nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)
            if temp is not None:
                out[p + "temperature_c"] = float(temp)
                self._temp_max = max(self._temp_max or float(temp), float(temp))
            reasons = dev.call(i, "nvmlDeviceGetCurrentClocksEventReasons")
            if reasons is None:
                reasons = dev.call(i, "nvmlDeviceGetCurrentClocksThrottleReasons")
            if reasons is not None:
                out[p + "clocks_event_reasons"] = float(reasons)
                self._reasons_seen |= int(reasons)
                throttled = throttled or bool(int(reasons) & PERFORMANCE_LIMITING)
            if pcie:
                for key, counter in (("pcie_tx_bytes_per_s", nvml.NVML_PCIE_UTIL_TX_BYTES),
                                     ("pcie_rx_bytes_per_s", nvml.NVML_PCIE_UTIL_RX_BYTES)):
                    kib = dev.call(i, "nvmlDeviceGetPcieThroughput", counter)
                    if kib is not None:
                        out[p + key] = float(kib) * 1024.0
            used = self._target_memory(i, pids)
            if used is not None:
                out[p + "target_memory_used_bytes"] = float(used)
                target_mem = (target_mem or 0) + used
            sm = self._target_sm(i, pids)
            if sm is not None:
                out[p + "target_sm_pct"] = sm
                sm_total = (sm_total or 0.0) + sm
        if pcie:
            self._pcie_last = now
        self._ticks += 1
        self._throttled_ticks += throttled
        self._util.append(util_now)
        self._device_mem_peak = max(self._device_mem_peak, device_mem)
        if target_mem is not None:
            self._target_mem_peak = max(self._target_mem_peak or 0, target_mem)
        if sm_total is not None:
            self._sm.append(sm_total)
        return out

    def _target_memory(self, i: int, pids: set[int]) -> int | None:
        assert self.devices is not None
        running = self.devices.call(i, "nvmlDeviceGetComputeRunningProcesses")
        if not running:
            return None
        mine = [p for p in running if p.pid in pids]
        if not mine:
            return None
        self._target_gpus.add(i)
        return sum(int(p.usedGpuMemory or 0) for p in mine)

    def _target_sm(self, i: int, pids: set[int]) -> float | None:
        assert self.devices is not None
        nvml = self.devices.nvml
        try:
            samples = self.devices.call(i, "nvmlDeviceGetProcessUtilization", self._last_seen_us.get(i, 0))
        except nvml.NVMLError as exc:
            # NOT_FOUND (or a bare SUCCESS) is how NVML says "no new samples".
            if getattr(exc, "value", None) in (ERR_NOT_FOUND, 0):
                return None
            raise
        if not samples:
            return None
        latest: dict[int, Any] = {}
        for s in samples:
            self._last_seen_us[i] = max(self._last_seen_us.get(i, 0), int(s.timeStamp))
            if s.pid in pids and (s.pid not in latest or s.timeStamp > latest[s.pid].timeStamp):
                latest[s.pid] = s
        if not latest:
            return None
        self._target_gpus.add(i)
        return float(sum(s.smUtil for s in latest.values()))

    def stop(self) -> dict[str, Any]:
        if self.devices is not None:
            self.devices.close()
        out: dict[str, Any] = {"gpu_count": len(self.devices.handles) if self.devices else 0}
        means = []
        for tick in self._util:
            chosen = [v for i, v in tick.items() if not self._target_gpus or i in self._target_gpus]
            if chosen:
                means.append(sum(chosen) / len(chosen))
        if means:
            out["gpu_utilization_mean_pct"] = sum(means) / len(means)
        if self._target_mem_peak is not None:
            out["gpu_memory_peak_bytes"] = self._target_mem_peak
            out["gpu_memory_peak_source"] = "process"
        elif self._ticks:
            out["gpu_memory_peak_bytes"] = self._device_mem_peak
            out["gpu_memory_peak_source"] = "device"
        if self._sm:
            out["gpu_sm_mean_pct"] = sum(self._sm) / len(self._sm)
        if self._power_peak is not None:
            out["gpu_power_peak_w"] = self._power_peak
        if self._temp_max is not None:
            out["gpu_temperature_max_c"] = self._temp_max
        if self._ticks:
            out["gpu_throttled_fraction"] = self._throttled_ticks / self._ticks
            out["gpu_throttle_reasons"] = [n for bit, n in CLOCKS_EVENT_REASONS.items() if self._reasons_seen & bit]
        return out


@hookimpl
def perfpilot_register_collectors(register: Any) -> None:
    register(GpuCollector)
