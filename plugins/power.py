"""Power collector: energy per domain, each with its ``source``.

* ``rapl``: Intel/AMD RAPL counters under ``/sys/class/powercap`` where readable (often
  root-only since 2020). Domain ``cpu`` sums every ``package-N`` zone, ``dram`` every
  DRAM zone; core/uncore/psys zones are listed under ``zones`` but not added (the zone
  rule and the wrap handling are :mod:`perfpilot.profilers.hardware`'s). Scope
  ``machine``: RAPL measures the whole socket, other processes included.
* ``nvml_energy``: each GPU's total-energy counter (Volta and newer), domain ``gpu<i>``,
  scope ``device``; else ``nvml_power``: power samples integrated over the ticks.
* ``estimate``: no RAPL, so the CPU domain is estimated from the target's measured CPU
  seconds and a TDP (:func:`perfpilot.profilers.hardware.watts_per_cpu`: ``cpu_tdp_w``
  from config divided by this machine's logical CPUs, else a small table of CPU models,
  else a stated default). Scope ``target``. The entry carries ``assumptions``; it is
  never a measurement.

Series: ``power.cpu_w`` / ``power.dram_w`` every tick. With RAPL they are measured; with
the estimate, ``power.cpu_w`` is the estimate for that tick (the tree's CPU utilisation
over the tick, from the same shared ``/proc`` read as ``cpu.utilization_pct``, times
watts per busy CPU), under the same name so that charts and energy attribution find
one series; whether it was measured is the summary's ``energy.cpu.source``, and
:attr:`PowerCollector.estimated_series` names it for hosts that show series alone (the
daemon). GPU power is in the ``gpu`` collector's ``gpu<i>.power_w``.

``powercap_root`` and ``clock`` are injectable for tests (a fake sysfs tree, a
:class:`perfpilot.testing.FakeClock`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from perfpilot import hookimpl
from perfpilot.config import Settings
from perfpilot.profilers.cputime import TreeCpu, tree_cpu_totals
from perfpilot.profilers.hardware import POWERCAP, NvmlDevices, RaplZone, find_rapl_zones, load_nvml, nvml_devices, watts_per_cpu
from perfpilot.profilers.target import Target


class PowerCollector:
    name = "power"

    def __init__(self, settings: Settings, *, powercap_root: Path | str = POWERCAP,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.powercap_root = Path(powercap_root)
        self.clock = clock
        self.target: Target | None = None
        self.zones: list[RaplZone] = []
        self.rapl_problem = ""
        self.gpus: NvmlDevices | None = None
        self._gpu_energy0: dict[int, int] = {}
        self._gpu_energy_last: dict[int, int] = {}
        self._gpu_power: dict[int, tuple[float, float]] = {}  # i -> (t, watts) of last sample
        self._gpu_integrated: dict[int, float] = {}
        self._gpu_failed: dict[int, str] = {}
        self._last_now: float | None = None
        self.tree = TreeCpu(baseline_existing=False)
        self.watts_per_cpu: tuple[float, str] | None = None
        self.estimated_series: frozenset[str] = frozenset()

    def available(self) -> tuple[bool, str]:
        zones, problem = find_rapl_zones(self.powercap_root)
        parts = [f"RAPL: {len(zones)} zone(s)" if zones else f"CPU energy estimated: {problem}"]
        nvml, why = load_nvml()
        count, why = nvml_devices(nvml) if nvml is not None else (0, why)
        parts.append(f"NVML: {count} GPU(s)" if count else f"no GPU energy: {why}")
        return True, "; ".join(parts)

    def start(self, target: Target) -> None:
        self.target = target
        self.tree = TreeCpu(baseline_existing=not target.launched)
        self.zones, self.rapl_problem = find_rapl_zones(self.powercap_root)
        if not self.zones:
            self.watts_per_cpu = watts_per_cpu(self.settings.cpu_tdp_w)
            self.estimated_series = frozenset({"power.cpu_w"})
        self.gpus, _ = NvmlDevices.open()
        if self.gpus is not None:
            self._gpu_energy0 = self.gpus.energy_mj()
            self._gpu_energy_last = dict(self._gpu_energy0)

    def sample(self, now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        dt = now - self._last_now if self._last_now is not None else 0.0
        if self.zones:
            per_domain: dict[str, float] = {}
            for zone in self.zones:
                joules = zone.read()
                if zone.domain:
                    per_domain[zone.domain] = per_domain.get(zone.domain, 0.0) + joules
            if dt > 0:
                for domain, joules in per_domain.items():
                    out[f"power.{domain}_w"] = round(joules / dt, 3)
        else:
            assert self.target is not None and self.watts_per_cpu is not None
            used = self.tree.update(self.target.snapshot(now).procs)
            if dt > 0:  # the tick's CPU utilisation (cores busy) x watts per busy CPU
                out["power.cpu_w"] = round(used / dt * self.watts_per_cpu[0], 3)
        self._last_now = now
        if self.gpus is not None:
            self._sample_gpus(now)
        return out

    def _sample_gpus(self, now: float) -> None:
        assert self.gpus is not None
        for i in range(len(self.gpus.handles)):
            if i in self._gpu_failed:
                continue
            try:
                if i in self._gpu_energy0:
                    energy = self.gpus.call(i, "nvmlDeviceGetTotalEnergyConsumption")
                    if energy is not None:
                        self._gpu_energy_last[i] = int(energy)
                    continue
                milliwatts = self.gpus.call(i, "nvmlDeviceGetPowerUsage")
            except self.gpus.nvml.NVMLError as exc:
                # Keep what was measured up to here, mark it incomplete, and let the
                # session record the error once (the other domains keep going).
                self._gpu_failed[i] = f"NVML error mid-run: {exc}"
                raise
            if milliwatts is None:
                continue
            watts = milliwatts / 1000.0
            prev = self._gpu_power.get(i)
            if prev is not None and now > prev[0]:
                self._gpu_integrated[i] = self._gpu_integrated.get(i, 0.0) + (prev[1] + watts) / 2 * (now - prev[0])
            self._gpu_power[i] = (now, watts)

    def stop(self) -> dict[str, Any]:
        assert self.target is not None
        target = self.target
        energy: dict[str, dict[str, Any]] = {}
        if self.zones:
            for zone in self.zones:
                try:
                    zone.read()
                except (OSError, ValueError):
                    pass
            for domain in ("cpu", "dram"):
                parts = [z for z in self.zones if z.domain == domain]
                if parts:
                    energy[domain] = {
                        "joules": sum(z.joules for z in parts),
                        "source": "rapl",
                        "scope": "machine",
                        "zones": {z.label: z.joules for z in self.zones if (z.domain == "dram") == (domain == "dram")},
                    }
        else:
            energy["cpu"] = self._estimate(target)
        if self.gpus is not None:
            energy.update(self._gpu_entries(target))
            self.gpus.close()
        return {"energy": energy} if energy else {}

    def _estimate(self, target: Target) -> dict[str, Any]:
        self.tree.update(target.snapshot(self.clock()).procs)  # born since the last update
        user, system, how = tree_cpu_totals(target, self.tree)
        cpu_s = user + system
        watts, basis = self.watts_per_cpu or watts_per_cpu(self.settings.cpu_tdp_w)
        return {
            "joules": cpu_s * watts,
            "source": "estimate",
            "scope": "target",
            "cpu_seconds": cpu_s,
            "watts_per_busy_cpu": watts,
            "assumptions": (
                f"estimate, not a measurement ({self.rapl_problem}): {cpu_s:.3f} CPU-seconds of the "
                f"target ({'exact, rusage' if how == 'rusage' else 'sampled'}) x {watts:.2f} W per busy "
                f"logical CPU ({basis}); power taken as proportional to CPU time at TDP; idle, "
                "uncore, memory and other processes' power not included"
            ),
        }

    def _gpu_entries(self, target: Target) -> dict[str, dict[str, Any]]:
        assert self.gpus is not None
        out: dict[str, dict[str, Any]] = {}
        for i in range(len(self.gpus.handles)):
            failed = self._gpu_failed.get(i)
            if i in self._gpu_energy0:
                if failed is None:
                    try:
                        energy = self.gpus.call(i, "nvmlDeviceGetTotalEnergyConsumption")
                        if energy is not None:
                            self._gpu_energy_last[i] = int(energy)
                    except self.gpus.nvml.NVMLError as exc:
                        failed = f"NVML error at the end: {exc}"
                entry: dict[str, Any] = {
                    "joules": (self._gpu_energy_last[i] - self._gpu_energy0[i]) / 1000.0,
                    "source": "nvml_energy",
                    "scope": "device",
                }
            elif i in self._gpu_power:
                t, watts = self._gpu_power[i]
                end = target.ended_at if target.ended_at is not None else self.clock()
                joules = self._gpu_integrated.get(i, 0.0)
                if failed is None and end > t:
                    joules += watts * (end - t)  # hold the last reading until the end
                entry = {"joules": joules, "source": "nvml_power", "scope": "device",
                         "assumptions": "power samples integrated over the sampling ticks (trapezoid); "
                                        "NVML has no energy counter for this GPU"}
            else:
                continue
            if failed:
                entry["incomplete"] = True
                entry["error"] = failed
            out[f"gpu{i}"] = entry
        return out


@hookimpl
def perfpilot_register_collectors(register: Any) -> None:
    register(PowerCollector)
