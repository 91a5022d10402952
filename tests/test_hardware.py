"""perfpilot.profilers.hardware as each of its users sees it: the pytest meter (BlockMeter)
takes the same RAPL zones as the power collector and its GPU energy through the same
NVML loader, so FakeNVML reaches it; the daemon's GPU probe and host info likewise."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from perfpilot.agent.daemon.sampler import GpuProbe
from perfpilot.config import Settings
from perfpilot.plugins.power import PowerCollector
from perfpilot.profilers.block import BlockMeter
from perfpilot.profilers.hardware import estimate_note, watts_per_cpu
from perfpilot.profilers.host import gpu_names
from perfpilot.profilers.target import Target
from perfpilot.testing import FakeClock, FakeNVML


def _zone(root: Path, entry: str, name: str, uj: int) -> None:
    (root / entry).mkdir(parents=True)
    (root / entry / "name").write_text(name + "\n")
    (root / entry / "energy_uj").write_text(f"{uj}\n")
    (root / entry / "max_energy_range_uj").write_text("262143328850\n")


def _bump(root: Path, entry: str, joules: float) -> None:
    path = root / entry / "energy_uj"
    path.write_text(f"{int(path.read_text()) + int(joules * 1e6)}\n")


def test_meter_and_collector_add_the_same_rapl_zones(tmp_path: Path) -> None:
    # psys is a top-level zone on many laptops: the whole platform, packages included.
    # Counting it as CPU energy (the meter's old rule: every intel-rapl:N) doubles it.
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", 1_000_000)
    _zone(root, "intel-rapl:0:0", "core", 1_000_000)
    _zone(root, "intel-rapl:1", "psys", 1_000_000)
    meter = BlockMeter(powercap_root=root)
    clock = FakeClock()
    collector = PowerCollector(Settings(), powercap_root=root, clock=clock)
    target = Target(pid=os.getpid(), launched=False)
    target.refresh()
    collector.start(target)
    start = meter.start()
    for entry, joules in (("intel-rapl:0", 3.0), ("intel-rapl:0:0", 2.0), ("intel-rapl:1", 5.0)):
        _bump(root, entry, joules)
    sample = meter.stop(start)
    assert sample.energy["cpu"] == {"joules": pytest.approx(3.0), "source": "rapl",
                                    "note": "whole CPU package, not only this process"}
    assert collector.stop()["energy"]["cpu"]["joules"] == pytest.approx(3.0)


def test_meter_reads_gpu_energy_through_the_fake_nvml_seam(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeNVML(gpus=[{"readings": [{"t": 0, "power_w": 100.0}]},
                          {"unsupported": ["nvmlDeviceGetTotalEnergyConsumption"]}], clock=clock)
    with fake.installed():
        meter = BlockMeter(powercap_root=tmp_path / "none", cpu_tdp_w=8.0)
        start = meter.start()
        clock.advance(2.0)
        sample = meter.stop(start)
    assert sample.energy["gpu0"]["joules"] == pytest.approx(200.0) and sample.energy["gpu0"]["source"] == "nvml_energy"
    assert "gpu1" not in sample.energy  # no counter: nothing faked
    assert sample.energy["cpu"]["source"] == "estimate"
    assert "nvml" in meter.capabilities()["energy"]
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] >= 2


def test_the_meter_and_the_collector_estimate_with_the_same_watts(monkeypatch: pytest.MonkeyPatch) -> None:
    # PERFPILOT_CPU_TDP_W reaches both only through Settings: the meter no longer reads it itself
    monkeypatch.setenv("PERFPILOT_CPU_TDP_W", "999")
    meter = BlockMeter(energy=True, cpu_tdp_w=16.0, powercap_root="/nonexistent")
    watts, _ = watts_per_cpu(16.0)
    assert meter.watts_per_core == watts == estimate_note(16.0)[0]
    assert "cpu_tdp_w = 16 W" in meter.estimate_note


def test_daemon_probe_and_host_info_load_nvml_like_the_collectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "nvml.json"
    script.write_text('{"gpus": [{"name": "Fake H100", "readings": [{"utilization_pct": 40, '
                      '"processes": [{"pid": 4242, "memory_bytes": 1024}]}]}]}')
    monkeypatch.setenv("PERFPILOT_FAKE_NVML", str(script))
    previous = sys.modules.get("pynvml")
    try:
        probe = GpuProbe()
        assert probe.start(), probe.reason
        devices, per_pid = probe.sample()
        probe.stop()
        names = gpu_names()
    finally:
        if previous is None:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = previous
    assert devices["gpu0.utilization_pct"] == 40.0 and per_pid == {4242: 1024.0}
    assert [g["name"] for g in names] == ["Fake H100"]
