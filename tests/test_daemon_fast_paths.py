"""The cheap paths that keep the daemon under 1% of a core are also correct paths:
the cached /metrics renderer writes exactly what prometheus-client writes, and the O(1)
finding windows count what a full pass over the window counts. (The kept-open /proc
reads are checked in test_procfs.py; the cost itself in test_daemon_cost.py and
benchmarks/daemon_footprint.py.)
"""

from __future__ import annotations

import random

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from perfpilot.agent.daemon.exporter import DaemonMetrics, TextRenderer, families
from perfpilot.agent.daemon.findings import Series
from perfpilot.agent.daemon.sampler import WatchState


def _state(cpu: float) -> dict:
    odd = 'cmdline:^python "x\\y"\nz é'  # quotes, backslash, newline, non-ASCII in a label value
    watches = {}
    for name, rss in (("name:web", 123456789), (odd, 42)):
        state = WatchState(name, processes=2, cpu_seconds_total=cpu, cpu_pct=cpu / 3, rss_bytes=rss, threads=7)
        state.read_bytes_total = 1e12 + cpu  # Go-style exponent formatting
        watches[name] = state
    return {
        "version": "1.0", "db": "/tmp/x.db", "watches": watches,
        "host": {"memory.total_bytes": 8e9, "cpu.load1": 0.25},
        "host_cpu_totals": {"user": 12.5, "idle": 1e7},
        "collectors": {"gpu0.power_w": 71.5, "gpu1.power_w": 70.0, "cpu.utilization_pct": 3.0,
                       "power.cpu_w": float("nan"), "memory.rss_bytes": 5e7},
        "collector_status": {"cpu": {"available": True, "errors": []}, "gpu": {"available": False, "errors": ["x"]}},
        "findings_active": {"cpu_saturation": 1}, "findings_raised": {"cpu_saturation": 2, "io_wait": 0},
        "self": {"ticks": 10, "store_bytes": 4096, "flushed_until": 1.7e9, "proposals": 1},
    }


def test_renderer_writes_what_prometheus_client_writes() -> None:
    holder = {"state": _state(1.5)}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonMetrics(lambda: holder["state"]))
    renderer = TextRenderer()
    for cpu in (1.5, 2.75, 1e-7):  # the second and third renders come from the prefix cache
        holder["state"] = _state(cpu)
        ours = renderer.render(families(holder["state"]))
        assert ours == generate_latest(registry)
        parsed = {s.name: s for f in text_string_to_metric_families(ours.decode()) for s in f.samples}
        assert parsed["perfpilot_watch_cpu_seconds_total"].value in (cpu,)
        assert parsed["perfpilot_gpu_power_watts"].labels in ({"gpu": "0"}, {"gpu": "1"})
    odd_labels = [s.labels["watch"] for f in text_string_to_metric_families(ours.decode()) for s in f.samples
                  if s.name == "perfpilot_watch_threads"]
    assert 'cmdline:^python "x\\y"\nz é' in odd_labels


def test_collector_metrics_say_whose_figures_they_are() -> None:
    # The collectors observe the daemon's own tree: its cpu.utilization_pct used to be exported
    # as perfpilot_cpu_utilization_percent (0% on a saturated host), every HELP the same line,
    # per-core figures as one name per core, and rates as "_per_seconds".
    state = {"collectors": {"cpu.utilization_pct": 0.5, "memory.rss_bytes": 5e7, "cpu.system_busy_pct": 97.0,
                            "cpu.core0_busy_pct": 96.0, "cpu.core1_busy_pct": 98.0,
                            "memory.system_used_bytes": 1e9, "io.disk_read_bytes_per_s": 10.0,
                            "cpu.ctx_switches_voluntary_per_s": 2.0, "gpu0.target_memory_used_bytes": 0.0}}
    text = TextRenderer().render(families(state)).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["perfpilot_daemon_cpu_utilization_percent"].samples[0].value == 0.5
    assert parsed["perfpilot_daemon_memory_rss_bytes"].documentation.startswith("The daemon's own process")
    assert "perfpilot_cpu_utilization_percent" not in parsed and "perfpilot_memory_rss_bytes" not in parsed
    assert parsed["perfpilot_cpu_system_busy_percent"].documentation == \
        "Host-wide cpu.system_busy_pct from the cpu collector."
    cores = {s.labels["core"]: s.value for s in parsed["perfpilot_cpu_core_busy_percent"].samples}
    assert cores == {"0": 96.0, "1": 98.0}
    assert "perfpilot_daemon_gpu_target_memory_used_bytes" in parsed
    assert "per_second" not in text  # rates stay in /api/latest


def test_families_without_samples_are_left_out() -> None:
    text = TextRenderer().render(families({"watches": {"name:idle": WatchState("name:idle")}})).decode()
    assert "perfpilot_watch_read_bytes_total" not in text  # I/O unreadable: no empty family
    assert 'perfpilot_watch_processes{watch="name:idle"} 0.0' in text


def test_running_window_counts_match_a_full_pass() -> None:
    rng = random.Random(7)
    series = Series(keep=30.0, test=lambda v: v >= 50.0)
    t = 0.0
    for _ in range(5000):
        t += rng.choice((0.5, 1.0, 1.0, 3.0))
        series.add(t, rng.uniform(0, 100))
        points = series.points
        assert series.hits == sum(1 for _t, v, _h in points if v >= 50.0)
        assert abs(series.total - sum(v for _t, v, _h in points)) < 1e-6
        assert all(t - ts <= 30.0 for ts, _v, _h in points)
