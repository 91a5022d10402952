"""The gpu collector against perfpilot.testing.FakeNVML (this machine has no GPU),
in-process with a FakeClock, end to end through profile_command, and in a `perfpilot
profile` subprocess via PERFPILOT_FAKE_NVML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from perfpilot.config import Settings
from perfpilot.plugins.gpu import GpuCollector
from perfpilot.profilers.session import RunOptions, profile_command
from perfpilot.profilers.target import Target
from perfpilot.testing import FakeClock, FakeNVML
from perfpilot.registry import build_plugin_manager

PLUGINS = build_plugin_manager()  # the caller hands the session its collectors

GiB = 1 << 30


def _target(pid: int | None = None) -> Target:
    target = Target(pid=pid or os.getpid(), launched=False)
    target.refresh()
    return target


@pytest.fixture
def fake_nvml_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Write a script, point PERFPILOT_FAKE_NVML at it, restore `pynvml` afterwards."""
    previous = sys.modules.get("pynvml")

    def use(script: dict[str, Any]) -> Path:
        path = tmp_path / f"nvml-{len(list(tmp_path.glob('nvml-*')))}.json"
        path.write_text(json.dumps(script))
        monkeypatch.setenv("PERFPILOT_FAKE_NVML", str(path))
        return path

    yield use
    if previous is None:
        sys.modules.pop("pynvml", None)
    else:
        sys.modules["pynvml"] = previous


# ------------------------------------------------------------------ availability


def test_no_pynvml_means_unavailable_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFPILOT_FAKE_NVML", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    ok, reason = GpuCollector(Settings()).available()
    assert not ok
    assert "nvidia-ml-py" in reason


def test_missing_driver_means_unavailable_with_a_reason() -> None:
    with FakeNVML(init_error="LIBRARY_NOT_FOUND").installed():
        ok, reason = GpuCollector(Settings()).available()
    assert not ok
    assert "driver" in reason


def test_no_gpu_means_unavailable() -> None:
    with FakeNVML(gpus=0).installed():
        ok, reason = GpuCollector(Settings()).available()
    assert (ok, reason) == (False, "NVML is working but sees no GPU")


def test_real_machine_without_gpu_reports_why(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has an NVIDIA GPU")
    monkeypatch.delenv("PERFPILOT_FAKE_NVML", raising=False)
    ok, reason = GpuCollector(Settings()).available()
    assert not ok and reason


def test_available_leaves_nvml_shut_down() -> None:
    fake = FakeNVML(gpus=2)
    with fake.installed():
        assert GpuCollector(Settings()).available() == (True, "2 GPU(s) via NVML")
    assert fake.initialized == 0


# ------------------------------------------------------------------ readings


def test_readings_follow_the_script_and_summary_is_computed_from_them() -> None:
    clock = FakeClock()
    fake = FakeNVML(
        gpus=[
            {"readings": [
                {"t": 0.0, "utilization_pct": 20, "memory_used_bytes": 1 * GiB, "power_w": 100.0},
                {"t": 0.2, "utilization_pct": 80, "memory_used_bytes": 3 * GiB, "power_w": 300.0,
                 "temperature_c": 71, "clocks_event_reasons": 0x4, "pcie_tx_kib_s": 10},
            ]},
            {},
        ],
        clock=clock,
    )
    rows = []
    with fake.installed():
        collector = GpuCollector(Settings())
        collector.start(_target())
        for _ in range(4):
            rows.append(collector.sample(clock()))
            clock.advance(0.1)
        summary = collector.stop()
    assert [r["gpu0.utilization_pct"] for r in rows] == [20, 20, 80, 80]
    assert rows[0]["gpu0.sm_clock_hz"] == 1980e6
    assert rows[3]["gpu0.memory_used_bytes"] == 3 * GiB
    assert rows[3]["gpu0.power_w"] == 300.0
    # the energy counter integrates the power script: 100 W x 0.2 s + 300 W x 0.1 s
    assert rows[3]["gpu0.energy_j"] == pytest.approx(50.0, abs=0.01)
    # PCIe is measured once a second (NVML blocks 20 ms per counter)
    assert "gpu0.pcie_tx_bytes_per_s" in rows[0] and "gpu0.pcie_tx_bytes_per_s" not in rows[1]
    assert summary["gpu_count"] == 2
    assert summary["gpu_utilization_mean_pct"] == pytest.approx((10 + 10 + 40 + 40) / 4)
    assert summary["gpu_memory_peak_bytes"] == 3 * GiB + 512 * 2**20
    assert summary["gpu_memory_peak_source"] == "device"
    assert summary["gpu_temperature_max_c"] == 71
    assert summary["gpu_throttle_reasons"] == ["sw_power_cap"]
    assert summary["gpu_throttled_fraction"] == 0.5
    assert fake.initialized == 0


def test_target_processes_give_per_process_memory_and_sm() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        clock = FakeClock()
        procs = [{"pid": child.pid, "memory_bytes": 2 * GiB, "sm_pct": 55}, {"pid": 1, "memory_bytes": 5 * GiB}]
        fake = FakeNVML(gpus=[{"readings": [{"utilization_pct": 40, "processes": procs}]}, {}], clock=clock)
        with fake.installed():
            collector = GpuCollector(Settings())
            collector.start(_target(child.pid))
            rows = []
            for _ in range(3):
                rows.append(collector.sample(clock()))
                clock.advance(0.1)
            summary = collector.stop()
    finally:
        child.kill()
        child.wait()
    assert rows[-1]["gpu0.target_memory_used_bytes"] == 2 * GiB  # pid 1 is not ours
    assert rows[-1]["gpu0.target_sm_pct"] == 55
    assert "gpu1.target_memory_used_bytes" not in rows[-1]
    assert summary["gpu_memory_peak_bytes"] == 2 * GiB
    assert summary["gpu_memory_peak_source"] == "process"
    assert summary["gpu_sm_mean_pct"] == 55
    assert summary["gpu_utilization_mean_pct"] == 40  # only the GPU the target used


def test_unsupported_queries_are_skipped_without_errors() -> None:
    clock = FakeClock()
    unsupported = ["nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetCurrentClocksEventReasons"]
    fake = FakeNVML(gpus=[{"unsupported": unsupported, "readings": [{"clocks_event_reasons": 0x40}]}], clock=clock)
    with fake.installed():
        collector = GpuCollector(Settings())
        collector.start(_target())
        rows = [collector.sample(clock()) for _ in range(3)]
        collector.stop()
    assert all("gpu0.energy_j" not in r for r in rows)
    assert rows[0]["gpu0.clocks_event_reasons"] == 0x40  # the older throttle-reasons call
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1  # asked once, then skipped


def test_nvml_error_mid_run_is_raised_for_the_session_to_record() -> None:
    fake = FakeNVML(errors=[{"function": "nvmlDeviceGetUtilizationRates", "error": "GPU_IS_LOST", "after_calls": 2}])
    with fake.installed():
        collector = GpuCollector(Settings())
        collector.start(_target())
        collector.sample(1.0)
        collector.sample(1.1)
        with pytest.raises(fake.module.NVMLError) as info:
            collector.sample(1.2)
        collector.stop()
    assert info.value.value == 15
    assert str(info.value) == "GPU is lost"


# ------------------------------------------------------------------ end to end


def test_gpu_lost_mid_run_disables_the_gpu_collector_and_the_rest_keeps_working(fake_nvml_env: Any) -> None:
    fake_nvml_env({
        "gpus": [{"readings": [{"utilization_pct": 50}]}],
        "errors": [{"function": "nvmlDeviceGetUtilizationRates", "error": "GPU_IS_LOST", "after_calls": 2}],
    })
    profile = profile_command([sys.executable, "-c", "import time; time.sleep(1.0)"], Settings(stacks=False),
                              RunOptions(plugin_set=PLUGINS, capture_output=True))
    assert profile.exit_code == 0
    gpu = profile.collectors["gpu"]
    assert gpu["disabled"] is True
    assert any("GPU is lost" in e for e in gpu["errors"])
    assert any("disabled after" in e for e in gpu["errors"])
    assert profile.summary["gpu_utilization_mean_pct"] == 50  # from the ticks before the failure
    values = profile.series["values"]
    last_gpu = max(i for i, v in enumerate(values["gpu0.utilization_pct"]) if v is not None)
    later_cpu = [v for v in values["cpu.utilization_pct"][last_gpu + 1:] if v is not None]
    assert len(later_cpu) >= 3, "the cpu collector must keep sampling after the gpu collector fails"
    assert not profile.collectors["cpu"]["errors"]
    assert profile.summary["energy"]["gpu0"]["source"] == "nvml_energy"  # power does not need utilisation


def test_a_transient_nvml_error_is_recorded_but_sampling_goes_on(fake_nvml_env: Any) -> None:
    fake_nvml_env({"gpus": [{}], "errors": [{"function": "nvmlDeviceGetMemoryInfo", "error": "UNKNOWN",
                                             "after_calls": 1, "count": 1}]})
    profile = profile_command([sys.executable, "-c", "import time; time.sleep(0.6)"], Settings(stacks=False),
                              RunOptions(plugin_set=PLUGINS, capture_output=True))
    gpu = profile.collectors["gpu"]
    assert gpu["disabled"] is False
    assert len(gpu["errors"]) == 1 and "Unknown Error" in gpu["errors"][0]
    assert sum(v is not None for v in profile.series["values"]["gpu0.utilization_pct"]) >= 3


def test_cli_profile_in_a_subprocess_uses_the_fake_from_the_environment(
    perfpilot_cli: Any, tmp_path: Path, python_exe: str
) -> None:
    script = tmp_path / "nvml.json"
    script.write_text(json.dumps({"gpus": [{"name": "NVIDIA H100 80GB HBM3", "readings": [
        {"utilization_pct": 60, "power_w": 250.0, "processes": [{"pid": "child", "memory_bytes": GiB, "sm_pct": 30}]},
    ]}]}))
    out = tmp_path / "run.json"
    result = perfpilot_cli("profile", "--no-stacks", "-o", str(out), "--", python_exe, "-c",
                           "import time; time.sleep(0.8)", env={"PERFPILOT_FAKE_NVML": str(script)})
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    s = data["summary"]
    assert s["gpu_utilization_mean_pct"] == 60
    assert s["gpu_memory_peak_bytes"] == GiB and s["gpu_memory_peak_source"] == "process"
    assert s["gpu_sm_mean_pct"] == 30
    energy = s["energy"]["gpu0"]
    assert energy["source"] == "nvml_energy"
    assert energy["joules"] == pytest.approx(250.0 * s["wall_s"], rel=0.2)


# ------------------------------------------------------------------ the fake itself


def test_fake_rejects_unknown_script_keys_and_error_names() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        FakeNVML.from_dict({"gpu": []})
    with pytest.raises(ValueError, match="unknown NVML error"):
        FakeNVML(errors=[{"function": "nvmlInit", "error": "ON_FIRE"}])
    with pytest.raises(ValueError, match="unknown reading"):
        FakeNVML().set(utilisation=3)


def test_fake_set_changes_readings_from_now_on_and_calls_need_init() -> None:
    clock = FakeClock()
    fake = FakeNVML(clock=clock)
    nvml = fake.module
    with pytest.raises(nvml.NVMLError):
        nvml.nvmlDeviceGetCount()  # like the real library before nvmlInit
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetUtilizationRates(handle).gpu == 0
    clock.advance(1.0)
    fake.set(utilization_pct=75, power_w=100.0)
    assert nvml.nvmlDeviceGetUtilizationRates(handle).gpu == 75
    before = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    clock.advance(2.0)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(handle) - before == 200_000  # mJ
    with pytest.raises(ValueError):
        clock.advance(-1)
