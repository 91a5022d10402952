"""Figures that only grow are Prometheus counters (``_total``), via prometheus-client.

The daemon's own I/O totals (bytes and syscalls from /proc/self/io) were exported as
gauges, so rate() did not apply and a restart's drop read as a real fall. The reset
itself is judged by Prometheus: examples/prometheus/tests/perfpilot-recording.test.yml
runs rate() across one with the real promtool.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from perfpilot.agent.daemon.exporter import DaemonMetrics, TextRenderer, families, is_counter

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
IO = {"io.read_bytes": 4096.0, "io.write_bytes": 1.5e6, "io.read_chars_bytes": 2.5e7, "io.write_chars_bytes": 3e5,
      "io.read_syscalls": 812.0, "io.write_syscalls": 77.0}


def _state(scale: float) -> dict:
    return {"collectors": {**{k: v * scale for k, v in IO.items()}, "gpu0.energy_j": 120.5 * scale,
                           "gpu0.power_w": 70.0, "memory.rss_bytes": 5e7, "acme.requests_total": 9.0 * scale}}


def _render(state: dict) -> tuple[bytes, bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonMetrics(lambda: state))
    return TextRenderer().render(families(state)), generate_latest(registry)


def test_the_daemons_own_io_totals_are_total_counters() -> None:
    ours, client = _render(_state(1.0))
    assert ours == client  # the fast renderer and prometheus-client's CounterMetricFamily agree
    parsed = {f.name: f for f in text_string_to_metric_families(ours.decode())}
    for metric, name in (("io.read_bytes", "perfpilot_daemon_io_read_bytes"),
                         ("io.write_bytes", "perfpilot_daemon_io_write_bytes"),
                         ("io.read_chars_bytes", "perfpilot_daemon_io_read_chars_bytes"),
                         ("io.write_chars_bytes", "perfpilot_daemon_io_write_chars_bytes"),
                         ("io.read_syscalls", "perfpilot_daemon_io_read_syscalls"),
                         ("io.write_syscalls", "perfpilot_daemon_io_write_syscalls")):
        assert parsed[name].type == "counter", name
        assert [(s.name, s.value) for s in parsed[name].samples] == [(name + "_total", IO[metric])]
        assert f"# TYPE {name}_total counter" in ours.decode()
    assert parsed["perfpilot_gpu_energy_joules"].type == "counter"  # NVML's total-energy counter
    assert parsed["perfpilot_gpu_energy_joules"].samples[0].labels == {"gpu": "0"}
    assert parsed["perfpilot_acme_requests"].type == "counter"  # a plugin's `..._total` figure
    assert parsed["perfpilot_gpu_power_watts"].type == "gauge"
    assert parsed["perfpilot_daemon_memory_rss_bytes"].type == "gauge"
    assert not is_counter("memory.rss_bytes") and not is_counter("io.disk_read_bytes_per_s")


def test_a_reading_that_goes_back_is_exposed_as_a_counter_reset() -> None:
    # The process behind the figures restarted: its totals start again from zero. The exposed
    # counter drops with them (not clamped, not carried over): Prometheus reads a drop as a
    # reset and rate() counts across it (checked with promtool in the recording-rule tests).
    before = {s.name: s.value for f in text_string_to_metric_families(_render(_state(1.0))[0].decode())
              for s in f.samples}
    after = {s.name: s.value for f in text_string_to_metric_families(_render(_state(0.01))[0].decode())
             for s in f.samples}
    name = "perfpilot_daemon_io_read_chars_bytes_total"
    assert after[name] == pytest.approx(IO["io.read_chars_bytes"] * 0.01) and after[name] < before[name]


@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason=f"no promtool at {PROMTOOL}")
def test_promtool_finds_nothing_to_fix_in_the_counters() -> None:
    ours, _client = _render(_state(1.0))
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=ours, capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        (result.stdout + result.stderr).decode()


def test_collector_errors_keep_counting_past_the_kept_messages() -> None:
    # The status keeps the first few messages only; the counter must not stop there.
    from perfpilot.profilers.collector import MAX_ERRORS_KEPT, CollectorSlot

    slot = CollectorSlot(collector=None, name="flaky", available=True)
    for i in range(MAX_ERRORS_KEPT + 15):
        slot.record("sample", RuntimeError(f"boom {i}"))
    state = {"collector_status": {"flaky": slot.status()}}
    parsed = {s.name: s for f in text_string_to_metric_families(_render(state)[0].decode()) for s in f.samples}
    assert len(slot.status()["errors"]) == MAX_ERRORS_KEPT
    assert parsed["perfpilot_collector_errors_total"].value == MAX_ERRORS_KEPT + 15


def test_a_collector_skipping_a_tick_keeps_its_figures_in_metrics() -> None:
    # io reads /proc every 0.5 s; at a 0.25 s interval every other tick had no io.* at all,
    # so its counters left /metrics on every other scrape (stale series in Prometheus).
    from perfpilot.agent.daemon.exporter import HeldValues

    held = HeldValues(keep_s=5.0)
    assert held.update(0.0, {"io.read_bytes": 10.0, "cpu.utilization_pct": 3.0}) == \
        {"io.read_bytes": 10.0, "cpu.utilization_pct": 3.0}
    assert held.update(0.25, {"cpu.utilization_pct": 4.0}) == {"io.read_bytes": 10.0, "cpu.utilization_pct": 4.0}
    assert held.update(0.5, {"io.read_bytes": 12.0, "cpu.utilization_pct": 5.0})["io.read_bytes"] == 12.0
    assert held.update(6.0, {"cpu.utilization_pct": 6.0}) == {"cpu.utilization_pct": 6.0}  # gone for > 5 s


def test_an_api_error_is_a_500_without_internals_and_logged_in_full(caplog) -> None:
    """A route that raises answers 500 with a message that says where to look, not the
    exception's text (paths, SQL, values); the daemon's log has the traceback."""
    import json
    import logging
    import urllib.error
    import urllib.request

    from perfpilot.agent.daemon.exporter import Exporter

    def api(path: str, query: dict) -> tuple[int, object]:
        raise RuntimeError("no such table: /var/lib/perfpilot/secret.db")

    exporter = Exporter("127.0.0.1", 0, token=None, state=lambda: _state(1.0), api=api, version=lambda: 1)
    exporter.start()
    try:
        with caplog.at_level(logging.ERROR, logger="perfpilot.daemon"), pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/api/hotspots", timeout=10)
        assert info.value.code == 500
        body = json.loads(info.value.read())
        assert "secret.db" not in json.dumps(body) and "daemon's log" in body["error"]
        # the log has the exception itself (the client did not)
        assert any(r.exc_info and "secret.db" in str(r.exc_info[1]) for r in caplog.records), caplog.records
    finally:
        exporter.stop()
