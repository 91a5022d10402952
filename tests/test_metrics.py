"""Reading metrics out of Profiles (plain data objects, built here as a collector would)."""

from __future__ import annotations

import pytest

from perfpilot.errors import PerfpilotError
from perfpilot.profilers.metrics import (
    MetricUnavailable,
    UnknownMetric,
    check_metric_names,
    metric_kind,
    metric_source,
    metric_value,
)
from perfpilot.profilers.profile import Profile


def profile(summary: dict, collectors: dict | None = None, series: dict | None = None) -> Profile:
    return Profile(summary=summary, collectors=collectors or {}, series=series or {"t": [], "values": {}})


FULL = profile(
    {
        "wall_s": 1.5, "cpu_user_s": 1.0, "cpu_system_s": 0.25, "peak_rss_bytes": 1024,
        "io_read_bytes": 100, "io_write_bytes": 50, "gpu_memory_peak_bytes": 4096, "gpu_utilization_mean_pct": 55.0,
        "reported.loss": 0.125, "cpu_ctx_switches_voluntary": 12,
        "energy": {"cpu": {"joules": 10.0, "source": "rapl"}, "gpu0": {"joules": 30.0, "source": "nvml_energy"}},
    },
    series={"t": [0.0, 0.1, 0.2], "values": {"cpu.utilization_pct": [50.0, None, 100.0]}},
)


@pytest.mark.parametrize(("name", "expected"), [
    ("wall", 1.5), ("cpu", 1.25), ("peak_rss", 1024), ("io", 150), ("io_read", 100), ("io_write", 50),
    ("energy", 40.0), ("energy.cpu", 10.0), ("energy.gpu0", 30.0), ("gpu_memory", 4096), ("gpu_util", 55.0),
    ("cpu_user_s", 1.0), ("reported.loss", 0.125), ("cpu_ctx_switches_voluntary", 12),
    ("cpu.utilization_pct", 75.0),  # series mean, missing samples skipped
])
def test_metric_values(name: str, expected: float) -> None:
    assert metric_value(FULL, name) == pytest.approx(expected)


def test_missing_cpu_names_the_collector_and_its_reason() -> None:
    p = profile({"wall_s": 1.0}, collectors={"cpu": {"available": False, "reason": "no /proc here"}})
    with pytest.raises(MetricUnavailable, match="cpu_user_s.*cpu collector was unavailable: no /proc here"):
        metric_value(p, "cpu")
    with pytest.raises(MetricUnavailable, match="did not run"):
        metric_value(profile({"wall_s": 1.0}), "peak_rss")


def test_missing_energy_and_unknown_domain() -> None:
    with pytest.raises(MetricUnavailable, match="has no energy figure"):
        metric_value(profile({"wall_s": 1.0}), "energy")
    with pytest.raises(MetricUnavailable, match="it has: cpu, gpu0"):
        metric_value(FULL, "energy.dram")


def test_missing_free_form_metric_lists_what_exists() -> None:
    with pytest.raises(MetricUnavailable, match="reported.accuracy") as info:
        metric_value(FULL, "reported.accuracy")
    assert "reported.loss" in str(info.value)
    assert isinstance(info.value, PerfpilotError)


def test_non_numeric_summary_values_are_not_metrics() -> None:
    with pytest.raises(MetricUnavailable):
        metric_value(profile({"wall_s": 1.0, "cpu_model_s": "fast"}), "cpu_model_s")


def test_check_metric_names_accepts_the_documented_forms() -> None:
    check_metric_names(["wall", "cpu", "peak_rss", "io", "energy", "energy.cpu", "gpu_memory", "gpu_util",
                        "cpu_user_s", "reported.loss", "gpu0.power_w", "cpu_ctx_switches_voluntary"])


@pytest.mark.parametrize(("names", "message"), [
    (["wal"], "unknown metric 'wal'.*did you mean wall"),
    (["cpu", "rss"], "unknown metric 'rss'"),
    ([], "no metric given"),
    (["wall", ""], "empty metric name"),
])
def test_check_metric_names_rejects_typos(names: list[str], message: str) -> None:
    with pytest.raises(UnknownMetric, match=message) as info:
        check_metric_names(names)
    assert "\n" not in str(info.value)


def test_metric_kind() -> None:
    assert metric_kind("wall") == "time" and metric_kind("cpu") == "time"
    assert metric_kind("reported.step_time_s") == "time"
    assert metric_kind("peak_rss") == "size" and metric_kind("memory_uss_peak_bytes") == "size"
    assert metric_kind("energy") == "other" and metric_kind("reported.loss") == "other"


def test_metric_source_marks_estimates_even_in_a_sum() -> None:
    measured = profile({"energy": {"cpu": {"joules": 1.0, "source": "rapl"}}})
    estimated = profile({"energy": {"cpu": {"joules": 1.0, "source": "estimate", "assumptions": "TDP 65 W"}}})
    mixed = profile({"energy": {"cpu": {"joules": 1.0, "source": "estimate"},
                                "gpu0": {"joules": 5.0, "source": "nvml_energy"}}})
    assert metric_source(measured, "energy") == "measured"
    assert metric_source(estimated, "energy") == "estimate"
    assert metric_source(estimated, "energy.cpu") == "estimate"
    assert metric_source(mixed, "energy") == "estimate"
    assert metric_source(mixed, "energy.gpu0") == "measured"
    assert metric_source(estimated, "wall") == "measured"


def test_instructions_is_a_deterministic_count_labelled_with_its_source() -> None:
    from perfpilot.profilers.metrics import is_deterministic

    p = profile({"instructions": 396_590_000, "instructions_source": "pmu"})
    assert metric_value(p, "instructions") == 396_590_000
    assert metric_kind("instructions") == "count"
    assert metric_source(p, "instructions") == "pmu"
    assert metric_source(profile({"instructions": 1, "instructions_source": "valgrind"}), "instructions") == "valgrind"
    assert is_deterministic("instructions")
    assert not any(is_deterministic(m) for m in ("wall", "cpu", "peak_rss", "energy", "reported.loss"))
    check_metric_names(["instructions"])
    missing = profile({"wall_s": 1.0}, collectors={"instructions": {"available": False, "reason": "no PMU, no valgrind"}})
    with pytest.raises(MetricUnavailable, match="instructions collector was unavailable: no PMU, no valgrind"):
        metric_value(missing, "instructions")
