"""The power collector: RAPL parsing against a fake powercap tree (this machine has no
RAPL), counter wrap-around, GPU energy from FakeNVML (counter, and integrated power with
a FakeClock), and the labelled CPU estimate that this machine really gets."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from perfpilot import hookimpl
from perfpilot.config import Settings
from perfpilot.plugins.power import PowerCollector
from perfpilot.profilers.hardware import find_rapl_zones, watts_per_cpu
from perfpilot.profilers.session import RunOptions, profile_command
from perfpilot.profilers.target import Target
from perfpilot.registry import build_plugin_manager
from perfpilot.testing import FakeClock, FakeNVML

PLUGINS = build_plugin_manager()  # the caller hands the session its collectors

MAX_RANGE = 262_143_328_850  # a real package's max_energy_range_uj


def make_zone(root: Path, entry: str, name: str, energy_uj: int, max_range: int = MAX_RANGE) -> Path:
    zone = root / entry
    zone.mkdir(parents=True)
    (zone / "name").write_text(name + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two sockets: packages with core/uncore subzones and DRAM, plus an MMIO duplicate."""
    root = tmp_path / "powercap"
    (root / "intel-rapl").mkdir(parents=True)  # the control type: no counters
    make_zone(root, "intel-rapl:0", "package-0", 1_000_000)
    make_zone(root, "intel-rapl:0:0", "core", 500_000)
    make_zone(root, "intel-rapl:0:1", "dram", 200_000)
    make_zone(root, "intel-rapl:1", "package-1", 3_000_000)
    make_zone(root, "intel-rapl:1:0", "dram", 100_000)
    make_zone(root, "intel-rapl-mmio:0", "package-0", 9_999_999)
    return root


def bump(root: Path, entry: str, joules: float, max_range: int = MAX_RANGE) -> None:
    path = root / entry / "energy_uj"
    path.write_text(f"{(int(path.read_text()) + int(joules * 1e6)) % max_range}\n")


def _target(pid: int | None = None) -> Target:
    target = Target(pid=pid or os.getpid(), launched=False)
    target.refresh()
    return target


# ------------------------------------------------------------------ RAPL


def test_rapl_zones_are_found_with_domains_and_mmio_is_skipped(powercap: Path) -> None:
    zones, problem = find_rapl_zones(powercap)
    assert problem == ""
    labels = {z.label: z.domain for z in zones}
    assert labels == {
        "package-0": "cpu", "package-0/core": None, "package-0/dram": "dram",
        "package-1": "cpu", "package-1/dram": "dram",
    }


def test_no_powercap_directory_gives_a_reason(tmp_path: Path) -> None:
    zones, problem = find_rapl_zones(tmp_path / "absent")
    assert zones == [] and "no RAPL" in problem


def test_root_only_counters_give_a_reason_to_an_unprivileged_user(powercap: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    for zone in powercap.glob("intel-rapl:*"):
        (zone / "energy_uj").chmod(0o400)
    for path in [powercap, *powercap.parents]:
        if path == Path("/"):
            break
        path.chmod(path.stat().st_mode | 0o055)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, look, report, exit
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            zones, problem = find_rapl_zones(powercap)
            os.write(write_end, json.dumps([len(zones), problem]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        count, problem = json.loads(fh.read())
    os.waitpid(pid, 0)
    assert count == 0
    assert "readable by root only" in problem


def test_rapl_energy_and_power_series_per_domain(powercap: Path) -> None:
    clock = FakeClock()
    collector = PowerCollector(Settings(), powercap_root=powercap, clock=clock)
    collector.start(_target())
    collector.sample(clock())
    bump(powercap, "intel-rapl:0", 10.0)
    bump(powercap, "intel-rapl:0:0", 6.0)
    bump(powercap, "intel-rapl:1", 20.0)
    bump(powercap, "intel-rapl:0:1", 2.0)
    clock.advance(0.5)
    row = collector.sample(clock())
    assert row["power.cpu_w"] == pytest.approx(60.0)  # (10 + 20) J / 0.5 s; core is inside package-0
    assert row["power.dram_w"] == pytest.approx(4.0)
    bump(powercap, "intel-rapl:1", 1.0)  # after the last tick: stop() reads the counters again
    summary = collector.stop()
    cpu, dram = summary["energy"]["cpu"], summary["energy"]["dram"]
    assert cpu["source"] == dram["source"] == "rapl"
    assert cpu["scope"] == "machine"
    assert cpu["joules"] == pytest.approx(31.0)
    assert dram["joules"] == pytest.approx(2.0)
    assert cpu["zones"]["package-0/core"] == pytest.approx(6.0)
    assert "package-0/dram" not in cpu["zones"]
    assert dram["zones"] == {"package-0/dram": pytest.approx(2.0), "package-1/dram": 0.0}


def test_rapl_counter_wraparound(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    make_zone(root, "intel-rapl:0", "package-0", MAX_RANGE - 5_000_000)  # 5 J before the top
    clock = FakeClock()
    collector = PowerCollector(Settings(), powercap_root=root, clock=clock)
    collector.start(_target())
    collector.sample(clock())
    (root / "intel-rapl:0" / "energy_uj").write_text("3000000\n")  # wrapped, then 3 J more
    clock.advance(0.5)
    row = collector.sample(clock())
    assert row["power.cpu_w"] == pytest.approx(8.0 / 0.5)
    assert collector.stop()["energy"]["cpu"]["joules"] == pytest.approx(8.0)


def test_rapl_through_a_real_profile(powercap: Path) -> None:
    bumps = []

    def on_tick(_elapsed: float, _values: Any) -> None:
        bump(powercap, "intel-rapl:0", 1.0)
        bumps.append(1)

    class FakeSysfsPower:
        @hookimpl
        def perfpilot_register_collectors(self, register: Any) -> None:
            register("power", lambda settings: PowerCollector(settings, powercap_root=powercap))

    # disable= rather than relying on override order (the registry lets the first registration win)
    plugin_set = build_plugin_manager(disable="power", extra_plugins=[(FakeSysfsPower(), "fake_sysfs_power")])
    profile = profile_command([sys.executable, "-c", "import time; time.sleep(0.5)"], Settings(stacks=False),
                              RunOptions(capture_output=True, plugin_set=plugin_set, on_tick=on_tick))
    cpu = profile.summary["energy"]["cpu"]
    assert cpu["source"] == "rapl"
    assert cpu["joules"] == pytest.approx(len(bumps))
    assert "power.cpu_w" in profile.series["values"]


# ------------------------------------------------------------------ GPUs


def test_gpu_energy_from_the_nvml_counter(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeNVML(gpus=[{"readings": [{"t": 0, "power_w": 100.0}, {"t": 1.0, "power_w": 200.0}]}], clock=clock)
    with fake.installed():
        collector = PowerCollector(Settings(), powercap_root=tmp_path / "none", clock=clock)
        collector.start(_target())
        for _ in range(5):
            collector.sample(clock())
            clock.advance(0.5)
        summary = collector.stop()
    gpu = summary["energy"]["gpu0"]
    assert gpu["source"] == "nvml_energy" and gpu["scope"] == "device"
    assert gpu["joules"] == pytest.approx(100 * 1.0 + 200 * 1.5)  # counter read again at stop (t = 2.5)
    assert summary["energy"]["cpu"]["source"] == "estimate"


def test_gpu_energy_falls_back_to_integrating_power(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeNVML(gpus=[{"unsupported": ["nvmlDeviceGetTotalEnergyConsumption"],
                           "readings": [{"t": 0, "power_w": 100.0}, {"t": 1.0, "power_w": 200.0}]}], clock=clock)
    with fake.installed():
        collector = PowerCollector(Settings(), powercap_root=tmp_path / "none", clock=clock)
        collector.start(_target())
        for _ in range(5):  # t = 0, 0.5, 1.0, 1.5, 2.0
            collector.sample(clock())
            clock.advance(0.5)
        summary = collector.stop()  # stop at t = 2.5 holds the last reading
    gpu = summary["energy"]["gpu0"]
    assert gpu["source"] == "nvml_power"
    # trapezoids: 50 + 75 + 100 + 100, then 200 W held for the last 0.5 s
    assert gpu["joules"] == pytest.approx(325.0 + 100.0)
    assert "integrated" in gpu["assumptions"]


def test_nvml_failure_marks_gpu_energy_incomplete_and_keeps_the_rest(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeNVML(gpus=[{"readings": [{"power_w": 100.0}]}], clock=clock,
                    errors=[{"function": "nvmlDeviceGetTotalEnergyConsumption", "error": "GPU_IS_LOST", "after_calls": 3}])
    with fake.installed():
        collector = PowerCollector(Settings(), powercap_root=tmp_path / "none", clock=clock)
        collector.start(_target())  # call 1
        collector.sample(clock())  # call 2
        clock.advance(1.0)
        collector.sample(clock())  # call 3
        clock.advance(1.0)
        with pytest.raises(fake.module.NVMLError):
            collector.sample(clock())
        clock.advance(1.0)
        collector.sample(clock())  # the GPU is left alone from now on
        summary = collector.stop()
    gpu = summary["energy"]["gpu0"]
    assert gpu["incomplete"] is True and "GPU is lost" in gpu["error"]
    assert gpu["joules"] == pytest.approx(100.0)  # up to the last good reading
    assert summary["energy"]["cpu"]["source"] == "estimate"


# ------------------------------------------------------------------ the estimate


def test_watts_per_cpu_from_config_table_or_a_stated_default() -> None:
    cpus = psutil.cpu_count(logical=True)
    watts, basis = watts_per_cpu(Settings(cpu_tdp_w=50.0).cpu_tdp_w)
    assert watts == pytest.approx(50.0 / cpus) and "cpu_tdp_w" in basis
    watts, basis = watts_per_cpu(None, model="AMD EPYC 7763 64-Core Processor")
    assert watts == pytest.approx(280.0 / 128) and "TDP table" in basis
    watts, basis = watts_per_cpu(None, model="Intel(R) Xeon(R) Processor")
    assert watts == 4.0 and "not in the TDP table" in basis


def test_this_machine_gets_an_honest_labelled_estimate(tmp_path: Path) -> None:
    if find_rapl_zones()[0]:
        pytest.skip("this machine has readable RAPL counters")
    code = "import time\nwhile time.process_time() < 0.3: pass\n"
    settings = Settings(stacks=False, cpu_tdp_w=20.0)
    profile = profile_command([sys.executable, "-c", code], settings, RunOptions(plugin_set=PLUGINS, capture_output=True))
    entry = profile.summary["energy"]["cpu"]
    cpu_s = profile.summary["cpu_user_s"] + profile.summary["cpu_system_s"]
    assert entry["source"] == "estimate" and entry["scope"] == "target"
    assert entry["cpu_seconds"] == pytest.approx(cpu_s)
    assert entry["joules"] == pytest.approx(cpu_s * 20.0 / psutil.cpu_count(logical=True))
    assert entry["assumptions"].startswith("estimate, not a measurement")
    assert "cpu_tdp_w = 20 W" in entry["assumptions"]
    # The estimate per tick, under the series name RAPL uses (the summary says it is an
    # estimate): one point per tick that has a CPU utilisation, each that tick's busy
    # cores x the stated watts per busy CPU.
    values = profile.series["values"]
    watts, util = values["power.cpu_w"], values["cpu.utilization_pct"]
    per_cpu = entry["watts_per_busy_cpu"]
    pairs = [(w, u) for w, u in zip(watts, util) if u is not None]
    assert len(pairs) >= 3 and all(w is not None for w, _ in pairs)
    assert sum(1 for w in watts if w is not None) == len(pairs)
    for w, u in pairs:  # both from the tick's one /proc read; rounding only
        assert w == pytest.approx(u / 100.0 * per_cpu, abs=0.01)
    # Each point x its tick is that tick's estimated joules: together, the CPU seconds the
    # ticks saw (all but the start-up before the first tick and the exit after the last).
    times = profile.series["t"]
    ticked = sum(w * (t - t_prev) for w, t, t_prev in zip(watts[1:], times[1:], times) if w is not None)
    assert 0.5 * entry["joules"] <= ticked <= entry["joules"] + 0.01
