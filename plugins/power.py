"""Power collector: energy per domain, each with its ``source``.

* ``rapl``: Intel/AMD RAPL counters under ``/sys/class/powercap`` where readable (often
  root-only since 2020). Domain ``cpu`` sums every ``package-N`` zone, ``dram`` every
  DRAM zone; core/uncore/psys zones are listed under ``zones`` but not added (they
  are parts of a package, or the whole platform). Counters wrap at
  ``max_energy_range_uj``; one wrap between two ticks is undone (a wrap takes minutes
  even at full power, a tick is 100 ms). Scope ``machine``: RAPL measures the whole
  socket, other processes included.
* ``nvml_energy``: each GPU's total-energy counter (Volta and newer), domain ``gpu<i>``,
  scope ``device``; else ``nvml_power``: power samples integrated over the ticks.
* ``estimate``: no RAPL, so the CPU domain is estimated from the target's measured CPU
  seconds and a TDP: ``cpu_tdp_w`` from config divided by this machine's logical CPUs,
  else a small table of CPU models (TDP / threads per socket), else a stated default.
  Scope ``target``. The entry carries ``assumptions``; it is never a measurement.

Series: ``power.cpu_w`` / ``power.dram_w`` (RAPL), ``power.cpu_estimate_w`` (estimate,
once a second). GPU power is in the ``gpu`` collector's ``gpu<i>.power_w``.

``powercap_root`` and ``clock`` are injectable for tests (a fake sysfs tree, a
:class:`perfpilot.testing.FakeClock`).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psutil

from perfpilot import hookimpl
from perfpilot.config import Settings
from perfpilot.plugins.cpu import TreeCpu, tick_stats, tree_cpu_totals
from perfpilot.plugins.gpu import NvmlDevices, load_nvml, nvml_devices
from perfpilot.profilers.host import cpu_model
from perfpilot.profilers.procfs import proc_stat
from perfpilot.profilers.target import Target

POWERCAP = Path("/sys/class/powercap")
ZONE_RE = re.compile(r"^intel-rapl:\d+(:\d+)?$")  # not intel-rapl-mmio: it repeats package-0
ESTIMATE_INTERVAL_S = 1.0
DEFAULT_W_PER_CPU = 4.0

# (model pattern, TDP watts, logical CPUs per socket): watts per busy logical CPU = TDP / threads
TDP_TABLE: tuple[tuple[str, float, int], ...] = (
    (r"EPYC 9654", 360.0, 192),
    (r"EPYC 7763", 280.0, 128),
    (r"EPYC 7742", 225.0, 128),
    (r"Xeon\(R\) Platinum 8480", 350.0, 112),
    (r"Xeon\(R\) Platinum 8380", 270.0, 80),
    (r"Xeon\(R\) Gold 6248 ", 150.0, 40),
    (r"Xeon\(R\) CPU E5-2686 v4", 145.0, 36),
    (r"Core\(TM\) i9-13900K", 125.0, 32),
    (r"Core\(TM\) i7-12700K", 125.0, 20),
    (r"Ryzen 9 7950X", 170.0, 32),
    (r"Ryzen 9 5950X", 105.0, 32),
)


@dataclass
class RaplZone:
    path: Path
    label: str  # "package-0", "package-0/core", "dram"
    domain: str | None  # "cpu", "dram", or None (detail only)
    max_range_uj: int
    last_uj: int
    joules: float = 0.0

    def read(self) -> float:
        """Joules since the previous read, undoing one counter wrap."""
        current = int((self.path / "energy_uj").read_text())
        delta = current - self.last_uj
        if delta < 0:
            delta += self.max_range_uj
        self.last_uj = current
        self.joules += delta / 1e6
        return delta / 1e6


def _read_text(path: Path) -> str:
    return path.read_text().strip()


def find_rapl_zones(root: Path = POWERCAP) -> tuple[list[RaplZone], str]:
    """Readable RAPL zones under ``root``, or ([], why none)."""
    try:
        entries = sorted(e for e in os.listdir(root) if ZONE_RE.match(e))
    except OSError:
        return [], f"no RAPL ({root} missing: a VM, or not an x86 CPU)"
    if not entries:
        return [], f"no RAPL zones under {root}"
    zones: list[RaplZone] = []
    names: dict[str, str] = {}
    for entry in entries:
        path = root / entry
        try:
            name = _read_text(path / "name")
            names[entry] = name
            last = int(_read_text(path / "energy_uj"))
            max_range = int(_read_text(path / "max_energy_range_uj"))
        except PermissionError:
            return [], (f"RAPL energy counters under {root} are readable by root only "
                        "(run as root, or chmod o+r the energy_uj files)")
        except (OSError, ValueError):
            continue
        parent = entry.rsplit(":", 1)[0] if entry.count(":") == 2 else None
        label = f"{names.get(parent, parent)}/{name}" if parent else name
        if name == "dram":
            domain: str | None = "dram"
        elif parent is None and name.startswith("package"):
            domain = "cpu"
        else:
            domain = None
        zones.append(RaplZone(path, label, domain, max_range, last))
    if not zones:
        return [], f"RAPL zones under {root} could not be read"
    return zones, ""


def watts_per_cpu(settings: Settings, model: str | None = None) -> tuple[float, str]:
    """(watts per busy logical CPU, where that figure comes from)."""
    cpus = psutil.cpu_count(logical=True) or 1
    if settings.cpu_tdp_w:
        return settings.cpu_tdp_w / cpus, f"cpu_tdp_w = {settings.cpu_tdp_w:g} W from config / {cpus} logical CPUs"
    model = model if model is not None else cpu_model()
    for pattern, tdp, threads in TDP_TABLE:
        if re.search(pattern, model):
            return tdp / threads, f"TDP table: {model!r} {tdp:g} W / {threads} threads per socket"
    return DEFAULT_W_PER_CPU, (f"default: CPU model {model!r} is not in the TDP table, "
                               f"{DEFAULT_W_PER_CPU:g} W per busy logical CPU assumed "
                               "(set cpu_tdp_w in [tool.perfpilot] for a better figure)")


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
        self._estimate_last: float | None = None

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
        nvml, _ = load_nvml()
        if nvml is not None and nvml_devices(nvml)[0]:
            self.gpus = NvmlDevices(nvml)
            for i in range(len(self.gpus.handles)):
                energy = self.gpus.call(i, "nvmlDeviceGetTotalEnergyConsumption")
                if energy is not None:
                    self._gpu_energy0[i] = self._gpu_energy_last[i] = int(energy)

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
        elif self._estimate_last is None or now - self._estimate_last >= ESTIMATE_INTERVAL_S:
            assert self.target is not None
            used = self.tree.update(tick_stats(self.target, now))
            if self._estimate_last is not None and now > self._estimate_last:
                watts, _ = watts_per_cpu(self.settings)
                out["power.cpu_estimate_w"] = round(used / (now - self._estimate_last) * watts, 3)
            self._estimate_last = now
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
        self.tree.update({p.pid: proc_stat(p.pid) for p in target.processes()})  # born since the last update
        user, system, how = tree_cpu_totals(target, self.tree)
        cpu_s = user + system
        watts, basis = watts_per_cpu(self.settings)
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
