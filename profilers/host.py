"""Facts about the machine a Profile was recorded on (cached per process)."""

from __future__ import annotations

import functools
import hashlib
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import psutil


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_id() -> str:
    """A stable, anonymised id for baselines stored per machine."""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            raw = Path(candidate).read_text().strip()
        except OSError:
            continue
        if raw:
            return hashlib.sha256(raw.encode()).hexdigest()[:16]
    return hashlib.sha256(f"{socket.gethostname()}|{cpu_model()}".encode()).hexdigest()[:16]


def gpu_names() -> list[dict[str, Any]]:
    """GPUs NVML can see; empty when there is no NVML or no GPU."""
    from perfpilot.profilers.hardware import NvmlDevices  # it needs cpu_model() from here

    devices, _ = NvmlDevices.open()
    if devices is None:
        return []
    try:
        gpus = []
        for index in range(len(devices.handles)):
            name = devices.call(index, "nvmlDeviceGetName")
            memory = devices.call(index, "nvmlDeviceGetMemoryInfo")
            gpus.append({"index": index, "name": name if isinstance(name, str) else bytes(name or b"").decode(),
                         "memory_bytes": int(memory.total) if memory is not None else None})
        return gpus
    except Exception:  # noqa: BLE001 - any NVML failure means "no GPUs visible"
        return []
    finally:
        devices.close()


@functools.lru_cache(maxsize=1)
def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "machine_id": machine_id(),
        "cpu_model": cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        "gpus": gpu_names(),
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.release()}",
    }
