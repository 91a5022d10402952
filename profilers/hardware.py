"""Hardware energy and GPU readers, written once for every part of perfpilot that reads
them: the ``power`` and ``gpu`` collectors, the pytest meter
(:mod:`perfpilot.profilers.block`) and the daemon's GPU probe.

RAPL (``/sys/class/powercap``)
    :func:`find_rapl_zones` is the one zone rule. Zones are ``intel-rapl:N`` (a package
    or, on some machines, ``psys``) and ``intel-rapl:N:M`` (parts of package N: core,
    uncore, dram); ``intel-rapl-mmio:*`` is skipped because it repeats package-0. Domain
    ``cpu`` is the sum of every top-level zone named ``package-*``, domain ``dram`` every
    zone named ``dram``; the others (core, uncore, psys) are detail, never added in
    (parts of a package, or the whole platform). Counters wrap at
    ``max_energy_range_uj``; one wrap between two reads is undone (a wrap takes minutes
    even at full power).

NVML (``pynvml``, package ``nvidia-ml-py``)
    :func:`load_nvml` is the one loader, with the testing seam: with
    ``PERFPILOT_FAKE_NVML=<script.json>`` set, :class:`perfpilot.testing.FakeNVML` stands
    in for ``pynvml`` (a subprocess run by a test), and a fake installed in-process with
    ``FakeNVML.installed()`` is what ``import pynvml`` returns anyway.
    :class:`NvmlDevices` is initialised NVML with handles and a memory of unsupported
    queries.

CPU watts estimate
    :func:`watts_per_cpu`: watts per busy logical CPU where there is no RAPL, from
    ``cpu_tdp_w`` (:class:`~perfpilot.config.Settings`, i.e. ``[tool.perfpilot]`` or
    ``PERFPILOT_CPU_TDP_W``), else a small table of CPU models, else a stated default.
    Always labelled an estimate by whoever reports it.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psutil

from perfpilot.profilers.host import cpu_model

# ------------------------------------------------------------------ RAPL

POWERCAP = Path("/sys/class/powercap")
ZONE_RE = re.compile(r"^intel-rapl:\d+(:\d+)?$")  # not intel-rapl-mmio: it repeats package-0


@dataclass
class RaplZone:
    path: Path
    label: str  # "package-0", "package-0/core", "package-0/dram"
    domain: str | None  # "cpu", "dram", or None (detail only)
    max_range_uj: int
    last_uj: int
    joules: float = 0.0

    def energy_uj(self) -> int:
        """The raw counter, microjoules (wraps at :attr:`max_range_uj`)."""
        return int((self.path / "energy_uj").read_text())

    def joules_between(self, before_uj: int, after_uj: int) -> float:
        """Joules between two raw readings, undoing one counter wrap."""
        delta = after_uj - before_uj
        if delta < 0:
            delta += self.max_range_uj
        return delta / 1e6

    def read(self) -> float:
        """Joules since the previous read (added to :attr:`joules`)."""
        current = self.energy_uj()
        delta = self.joules_between(self.last_uj, current)
        self.last_uj = current
        self.joules += delta
        return delta


def _read_text(path: Path) -> str:
    return path.read_text().strip()


def _zone_domain(name: str, top_level: bool) -> str | None:
    if name == "dram":
        return "dram"
    if top_level and name.startswith("package"):
        return "cpu"
    return None


def find_rapl_zones(root: Path | str = POWERCAP) -> tuple[list[RaplZone], str]:
    """Readable RAPL zones under ``root``, or ([], why none)."""
    root = Path(root)
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
        zones.append(RaplZone(path, label, _zone_domain(name, parent is None), max_range, last))
    if not zones:
        return [], f"RAPL zones under {root} could not be read"
    return zones, ""


# ------------------------------------------------------------------ NVML

FAKE_ENV_VAR = "PERFPILOT_FAKE_NVML"

# NVML return codes (stable across NVML versions)
ERR_NOT_SUPPORTED, ERR_NO_PERMISSION, ERR_NOT_FOUND = 3, 4, 6
ERR_DRIVER_NOT_LOADED, ERR_LIBRARY_NOT_FOUND, ERR_FUNCTION_NOT_FOUND = 9, 12, 13


def load_nvml() -> tuple[Any, str]:
    """(the pynvml module or its fake, "") or (None, why not)."""
    if os.environ.get(FAKE_ENV_VAR):
        from perfpilot.testing.fake_nvml import from_environment

        fake = from_environment()
        assert fake is not None
        return fake.module, ""
    try:
        return importlib.import_module("pynvml"), ""
    except ImportError:
        return None, "pynvml is not installed (pip install nvidia-ml-py)"


def nvml_start_problem(exc: BaseException) -> str:
    """Why nvmlInit failed, in words a user can act on."""
    value = getattr(exc, "value", None)
    if value == ERR_LIBRARY_NOT_FOUND:
        return "no NVIDIA driver (libnvidia-ml.so.1 not found)"
    if value == ERR_DRIVER_NOT_LOADED:
        return "NVIDIA driver is not loaded (check nvidia-smi)"
    if value == ERR_NO_PERMISSION:
        return "no permission to use NVML (check /dev/nvidia* permissions)"
    return f"NVML failed to start: {exc}"


def nvml_devices(nvml: Any) -> tuple[int, str]:
    """(number of GPUs, "") or (0, why none); leaves NVML shut down."""
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError or a broken library: both mean "no GPU"
        return 0, nvml_start_problem(exc)
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as exc:  # noqa: BLE001
        return 0, f"NVML could not count GPUs: {exc}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    if count == 0:
        return 0, "NVML is working but sees no GPU"
    return count, ""


class NvmlDevices:
    """Initialised NVML with per-device handles and a memory of unsupported queries."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        self.unsupported: set[tuple[int, str]] = set()

    @classmethod
    def open(cls) -> tuple[NvmlDevices | None, str]:
        """Devices through :func:`load_nvml`, or (None, why there are none)."""
        nvml, why = load_nvml()
        if nvml is None:
            return None, why
        try:
            devices = cls(nvml)
        except Exception as exc:  # noqa: BLE001 - no driver, broken library: "no GPU", said why
            return None, nvml_start_problem(exc)
        if not devices.handles:
            devices.close()
            return None, "NVML is working but sees no GPU"
        return devices, ""

    def call(self, index: int, function: str, *args: Any) -> Any:
        """``nvml.<function>(handle, *args)``; None when the GPU does not support it."""
        if (index, function) in self.unsupported:
            return None
        fn: Callable[..., Any] | None = getattr(self.nvml, function, None)
        if fn is None:  # older nvidia-ml-py
            self.unsupported.add((index, function))
            return None
        try:
            return fn(self.handles[index], *args)
        except self.nvml.NVMLError as exc:
            if getattr(exc, "value", None) in (ERR_NOT_SUPPORTED, ERR_FUNCTION_NOT_FOUND, ERR_NO_PERMISSION):
                self.unsupported.add((index, function))
                return None
            raise

    def energy_mj(self) -> dict[int, int]:
        """Total-energy counters (millijoules) of the GPUs that have one (Volta and newer)."""
        out: dict[int, int] = {}
        for i in range(len(self.handles)):
            energy = self.call(i, "nvmlDeviceGetTotalEnergyConsumption")
            if energy is not None:
                out[i] = int(energy)
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a failed NVML must not mask results
            pass


# ------------------------------------------------------------------ the CPU estimate

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


def watts_per_cpu(cpu_tdp_w: float | None, model: str | None = None) -> tuple[float, str]:
    """(watts per busy logical CPU, where that figure comes from).

    ``cpu_tdp_w`` is the configured TDP (``Settings.cpu_tdp_w``); callers pass it, so
    the environment is read in one place, by Settings.
    """
    cpus = psutil.cpu_count(logical=True) or 1
    if cpu_tdp_w:
        return cpu_tdp_w / cpus, f"cpu_tdp_w = {cpu_tdp_w:g} W from config / {cpus} logical CPUs"
    model = model if model is not None else cpu_model()
    for pattern, tdp, threads in TDP_TABLE:
        if re.search(pattern, model):
            return tdp / threads, f"TDP table: {model!r} {tdp:g} W / {threads} threads per socket"
    return DEFAULT_W_PER_CPU, (f"default: CPU model {model!r} is not in the TDP table, "
                               f"{DEFAULT_W_PER_CPU:g} W per busy logical CPU assumed "
                               "(set cpu_tdp_w in [tool.perfpilot] for a better figure)")


def estimate_note(cpu_tdp_w: float | None) -> tuple[float, str]:
    """(watts per busy logical CPU, the estimate's assumption in one line) for reports."""
    watts, basis = watts_per_cpu(cpu_tdp_w)
    return watts, f"estimate: cpu seconds x {watts:.3g} W per busy logical CPU ({basis})"
