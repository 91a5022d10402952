"""A scripted stand-in for the ``pynvml`` module (package ``nvidia-ml-py``).

In-process, install it as ``pynvml`` for the duration of a block::

    from perfpilot.testing import FakeClock, FakeNVML

    clock = FakeClock()
    fake = FakeNVML(
        gpus=[{"name": "NVIDIA H100 80GB HBM3", "readings": [
            {"t": 0.0, "utilization_pct": 10, "power_w": 100.0},
            {"t": 1.0, "utilization_pct": 90, "power_w": 400.0, "processes": [{"pid": "child", "memory_bytes": 2**30}]},
        ]}],
        errors=[{"function": "nvmlDeviceGetUtilizationRates", "error": "GPU_IS_LOST", "after_calls": 5}],
        clock=clock,
    )
    with fake.installed():
        ...  # `import pynvml` now returns the fake

In a subprocess (``perfpilot profile`` run by a test), point ``PERFPILOT_FAKE_NVML`` at a
JSON file holding the same keyword arguments (``{"gpus": [...], "errors": [...]}``);
perfpilot's ``gpu`` and ``power`` collectors then use the fake instead of the real
library. It is a testing aid only: never set it to measure real hardware.

Script semantics:

* ``readings``: a timeline. Each entry applies from ``t`` seconds after the fake was
  created (default: the entry's index x ``step_s``) and overrides only the fields it
  names; fields are ``utilization_pct``, ``memory_busy_pct``, ``memory_used_bytes``,
  ``sm_clock_mhz``, ``memory_clock_mhz``, ``pcie_tx_kib_s``, ``pcie_rx_kib_s``,
  ``power_w``, ``temperature_c``, ``clocks_event_reasons`` (bit mask) and
  ``processes`` (``[{"pid": int | "child", "memory_bytes": int, "sm_pct": int}]``;
  ``"child"`` stands for every direct child of the process using the fake, i.e. the
  target that ``perfpilot profile`` launched). :meth:`FakeNVML.set` adds an entry at
  the current time.
* The total-energy counter integrates ``power_w`` over the timeline exactly, starting
  from ``energy_start_mj``.
* ``unsupported``: function names that raise ``NVML_ERROR_NOT_SUPPORTED`` on that GPU.
* ``errors``: ``{"function", "error" (name like "GPU_IS_LOST" or code), "after_calls"
  (calls that succeed first, default 0), "count" (failing calls, default: all),
  "device" (index, default: any)}``. ``init_error`` makes ``nvmlInit`` fail.
* Every call is counted in :attr:`FakeNVML.calls`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

ENV_VAR = "PERFPILOT_FAKE_NVML"

ERROR_CODES = {
    "UNINITIALIZED": 1, "INVALID_ARGUMENT": 2, "NOT_SUPPORTED": 3, "NO_PERMISSION": 4,
    "ALREADY_INITIALIZED": 5, "NOT_FOUND": 6, "INSUFFICIENT_SIZE": 7, "DRIVER_NOT_LOADED": 9,
    "TIMEOUT": 10, "LIBRARY_NOT_FOUND": 12, "FUNCTION_NOT_FOUND": 13, "GPU_IS_LOST": 15,
    "RESET_REQUIRED": 16, "NO_DATA": 21, "UNKNOWN": 999,
}
ERROR_STRINGS = {
    1: "Uninitialized", 2: "Invalid Argument", 3: "Not Supported", 4: "Insufficient Permissions",
    5: "Already Initialized", 6: "Not Found", 7: "Insufficient Size", 9: "Driver Not Loaded",
    10: "Timeout", 12: "NVML Shared Library Not Found", 13: "Function Not Found", 15: "GPU is lost",
    16: "GPU requires restart", 21: "No data", 999: "Unknown Error",
}

DEFAULT_READING: dict[str, Any] = {
    "utilization_pct": 0,
    "memory_busy_pct": 0,
    "memory_used_bytes": 512 * 2**20,
    "sm_clock_mhz": 1980,
    "memory_clock_mhz": 2619,
    "pcie_tx_kib_s": 0,
    "pcie_rx_kib_s": 0,
    "power_w": 70.0,
    "temperature_c": 32,
    "clocks_event_reasons": 0,
    "processes": [],
}


class NVMLError(Exception):
    """Same shape as ``pynvml.NVMLError``: the code is on ``.value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return ERROR_STRINGS.get(self.value, f"NVML error {self.value}")


def _code(error: int | str) -> int:
    if isinstance(error, int):
        return error
    name = error.upper().removeprefix("NVML_ERROR_")
    if name not in ERROR_CODES:
        raise ValueError(f"unknown NVML error {error!r}; known: {', '.join(ERROR_CODES)}")
    return ERROR_CODES[name]


class _Struct(types.SimpleNamespace):
    pass


class FakeGPU:
    """One scripted device; its handle is the object itself."""

    def __init__(self, index: int, spec: Mapping[str, Any], step_s: float) -> None:
        self.index = index
        self.name = str(spec.get("name", "Fake NVIDIA GPU"))
        self.uuid = str(spec.get("uuid", f"GPU-fake-{index:04d}"))
        self.memory_total_bytes = int(spec.get("memory_total_bytes", 80 * 2**30))
        self.power_limit_w = float(spec.get("power_limit_w", 700.0))
        self.energy_start_mj = int(spec.get("energy_start_mj", 1_000_000))
        self.unsupported = set(spec.get("unsupported", ()))
        self.timeline: list[tuple[float, dict[str, Any]]] = []
        for i, entry in enumerate(spec.get("readings", ())):
            entry = dict(entry)
            self.timeline.append((float(entry.pop("t", i * step_s)), entry))
        self.timeline.sort(key=lambda item: item[0])

    def reading(self, elapsed: float) -> dict[str, Any]:
        current = dict(DEFAULT_READING)
        for t, entry in self.timeline:
            if t > elapsed:
                break
            current.update(entry)
        return current

    def energy_mj(self, elapsed: float) -> int:
        """Exact integral of the piecewise-constant power timeline."""
        joules = 0.0
        points = [t for t, entry in self.timeline if "power_w" in entry and t < elapsed]
        edges = [0.0, *[t for t in points if t > 0], elapsed]
        for a, b in zip(edges, edges[1:]):
            if b > a:
                joules += float(self.reading(a)["power_w"]) * (b - a)
        return self.energy_start_mj + int(joules * 1000)


class FakeNVML:
    """Scripted GPUs, readings and injected errors behind the ``pynvml`` API."""

    def __init__(
        self,
        gpus: Sequence[Mapping[str, Any]] | int = 1,
        *,
        errors: Sequence[Mapping[str, Any]] = (),
        init_error: int | str | None = None,
        clock: Callable[[], float] | None = None,
        step_s: float = 0.1,
        driver_version: str = "550.54.15",
    ) -> None:
        specs = [{} for _ in range(gpus)] if isinstance(gpus, int) else list(gpus)
        self.clock = clock or time.monotonic
        self.t0 = self.clock()
        self.gpus = [FakeGPU(i, spec, step_s) for i, spec in enumerate(specs)]
        self.errors = [dict(e, error=_code(e.get("error", "UNKNOWN"))) for e in errors]
        self.init_error = None if init_error is None else _code(init_error)
        self.driver_version = driver_version
        self.calls: Counter[str] = Counter()
        self._rule_calls: Counter[int] = Counter()
        self.initialized = 0
        self.module = self._build_module()

    # ------------------------------------------------------------ scripting

    @classmethod
    def from_dict(cls, script: Mapping[str, Any], clock: Callable[[], float] | None = None) -> "FakeNVML":
        known = {"gpus", "errors", "init_error", "step_s", "driver_version"}
        unknown = set(script) - known
        if unknown:
            raise ValueError(f"fake NVML script: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(script), clock=clock)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> "FakeNVML":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def set(self, gpu: int = 0, **fields: Any) -> None:
        """Change readings of one GPU from now on."""
        unknown = set(fields) - set(DEFAULT_READING)
        if unknown:
            raise ValueError(f"unknown reading field(s) {sorted(unknown)}; known: {sorted(DEFAULT_READING)}")
        self.gpus[gpu].timeline.append((self.elapsed(), fields))
        self.gpus[gpu].timeline.sort(key=lambda item: item[0])

    @contextlib.contextmanager
    def installed(self) -> Iterator["FakeNVML"]:
        """Make ``import pynvml`` return this fake inside the block."""
        previous = sys.modules.get("pynvml")
        sys.modules["pynvml"] = self.module
        try:
            yield self
        finally:
            if previous is None:
                sys.modules.pop("pynvml", None)
            else:
                sys.modules["pynvml"] = previous

    # ------------------------------------------------------------ the API

    def _enter(self, function: str, device: FakeGPU | None = None) -> None:
        self.calls[function] += 1
        if function not in {"nvmlInit", "nvmlInitWithFlags"} and not self.initialized:
            raise NVMLError(ERROR_CODES["UNINITIALIZED"])
        if device is not None and function in device.unsupported:
            raise NVMLError(ERROR_CODES["NOT_SUPPORTED"])
        for i, rule in enumerate(self.errors):
            if rule.get("function") not in (None, function):
                continue
            if rule.get("device") is not None and (device is None or rule["device"] != device.index):
                continue
            self._rule_calls[i] += 1
            n = self._rule_calls[i] - 1 - int(rule.get("after_calls", 0))
            count = rule.get("count")
            if n >= 0 and (count is None or n < int(count)):
                raise NVMLError(rule["error"])

    def _reading(self, device: FakeGPU) -> dict[str, Any]:
        return device.reading(self.elapsed())

    def _processes(self, device: FakeGPU) -> list[dict[str, Any]]:
        out = []
        for proc in self._reading(device)["processes"]:
            if proc.get("pid") == "child":
                import psutil

                for child in psutil.Process().children():
                    out.append({**proc, "pid": child.pid})
            else:
                out.append(dict(proc))
        return out

    def _build_module(self) -> types.ModuleType:
        """The ``pynvml`` stand-in.

        Long because it is a table: one short closure per NVML function, side by side,
        reads as the list of what the fake supports.
        """
        fake = self
        mod = types.ModuleType("pynvml")
        mod.__doc__ = "perfpilot.testing.FakeNVML (not the real NVML)"
        mod.__dict__["__perfpilot_fake__"] = fake
        mod.NVMLError = NVMLError
        for name, code in ERROR_CODES.items():
            setattr(mod, f"NVML_ERROR_{name}", code)
        mod.NVML_SUCCESS = 0
        mod.NVML_TEMPERATURE_GPU = 0
        mod.NVML_CLOCK_GRAPHICS, mod.NVML_CLOCK_SM, mod.NVML_CLOCK_MEM = 0, 1, 2
        mod.NVML_PCIE_UTIL_TX_BYTES, mod.NVML_PCIE_UTIL_RX_BYTES = 0, 1

        def nvmlInit() -> None:
            fake._enter("nvmlInit")
            if fake.init_error is not None:
                raise NVMLError(fake.init_error)
            fake.initialized += 1

        def nvmlShutdown() -> None:
            fake._enter("nvmlShutdown")
            fake.initialized -= 1

        def nvmlSystemGetDriverVersion() -> str:
            fake._enter("nvmlSystemGetDriverVersion")
            return fake.driver_version

        def nvmlDeviceGetCount() -> int:
            fake._enter("nvmlDeviceGetCount")
            return len(fake.gpus)

        def nvmlDeviceGetHandleByIndex(index: int) -> FakeGPU:
            fake._enter("nvmlDeviceGetHandleByIndex")
            if not 0 <= index < len(fake.gpus):
                raise NVMLError(ERROR_CODES["INVALID_ARGUMENT"])
            return fake.gpus[index]

        def nvmlDeviceGetName(h: FakeGPU) -> str:
            fake._enter("nvmlDeviceGetName", h)
            return h.name

        def nvmlDeviceGetUUID(h: FakeGPU) -> str:
            fake._enter("nvmlDeviceGetUUID", h)
            return h.uuid

        def nvmlDeviceGetMemoryInfo(h: FakeGPU, version: Any = None) -> _Struct:
            fake._enter("nvmlDeviceGetMemoryInfo", h)
            used = int(fake._reading(h)["memory_used_bytes"])
            return _Struct(total=h.memory_total_bytes, used=used, free=h.memory_total_bytes - used)

        def nvmlDeviceGetUtilizationRates(h: FakeGPU) -> _Struct:
            fake._enter("nvmlDeviceGetUtilizationRates", h)
            r = fake._reading(h)
            return _Struct(gpu=int(r["utilization_pct"]), memory=int(r["memory_busy_pct"]))

        def nvmlDeviceGetClockInfo(h: FakeGPU, kind: int) -> int:
            fake._enter("nvmlDeviceGetClockInfo", h)
            r = fake._reading(h)
            return int(r["memory_clock_mhz"] if kind == 2 else r["sm_clock_mhz"])

        def nvmlDeviceGetPcieThroughput(h: FakeGPU, counter: int) -> int:
            fake._enter("nvmlDeviceGetPcieThroughput", h)
            r = fake._reading(h)
            return int(r["pcie_tx_kib_s"] if counter == 0 else r["pcie_rx_kib_s"])

        def nvmlDeviceGetPowerUsage(h: FakeGPU) -> int:
            fake._enter("nvmlDeviceGetPowerUsage", h)
            return int(float(fake._reading(h)["power_w"]) * 1000)

        def nvmlDeviceGetEnforcedPowerLimit(h: FakeGPU) -> int:
            fake._enter("nvmlDeviceGetEnforcedPowerLimit", h)
            return int(h.power_limit_w * 1000)

        def nvmlDeviceGetTotalEnergyConsumption(h: FakeGPU) -> int:
            fake._enter("nvmlDeviceGetTotalEnergyConsumption", h)
            return h.energy_mj(fake.elapsed())

        def nvmlDeviceGetTemperature(h: FakeGPU, sensor: int) -> int:
            fake._enter("nvmlDeviceGetTemperature", h)
            return int(fake._reading(h)["temperature_c"])

        def nvmlDeviceGetCurrentClocksEventReasons(h: FakeGPU) -> int:
            fake._enter("nvmlDeviceGetCurrentClocksEventReasons", h)
            return int(fake._reading(h)["clocks_event_reasons"])

        def nvmlDeviceGetCurrentClocksThrottleReasons(h: FakeGPU) -> int:
            fake._enter("nvmlDeviceGetCurrentClocksThrottleReasons", h)
            return int(fake._reading(h)["clocks_event_reasons"])

        def nvmlDeviceGetComputeRunningProcesses(h: FakeGPU) -> list[_Struct]:
            fake._enter("nvmlDeviceGetComputeRunningProcesses", h)
            return [_Struct(pid=p["pid"], usedGpuMemory=p.get("memory_bytes"), gpuInstanceId=0xFFFFFFFF,
                            computeInstanceId=0xFFFFFFFF) for p in fake._processes(h)]

        def nvmlDeviceGetProcessUtilization(h: FakeGPU, last_seen_us: int) -> list[_Struct]:
            fake._enter("nvmlDeviceGetProcessUtilization", h)
            now_us = int(fake.elapsed() * 1e6) + 1
            samples = [_Struct(pid=p["pid"], timeStamp=now_us, smUtil=int(p.get("sm_pct", 0)),
                               memUtil=0, encUtil=0, decUtil=0) for p in fake._processes(h)]
            if not samples or now_us <= last_seen_us:
                raise NVMLError(ERROR_CODES["NOT_FOUND"])  # what NVML says when nothing is new
            return samples

        for fn in list(locals().values()):
            if callable(fn) and getattr(fn, "__name__", "").startswith("nvml"):
                setattr(mod, fn.__name__, fn)
        return mod


_FROM_ENV: dict[tuple[str, int], FakeNVML] = {}


def from_environment() -> FakeNVML | None:
    """The fake named by ``PERFPILOT_FAKE_NVML`` (one per script file and version),
    installed as ``pynvml`` for the rest of the process; None when unset."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return None
    key = (os.path.abspath(path), os.stat(path).st_mtime_ns)
    fake = _FROM_ENV.get(key)
    if fake is None:
        fake = _FROM_ENV[key] = FakeNVML.from_json(path)
    sys.modules["pynvml"] = fake.module
    return fake
