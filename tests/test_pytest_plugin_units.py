"""The pytest plugin's parts on their own: units, thresholds, the baseline store, the
in-process block meter (real /proc figures), the classification of verdicts, the HTML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perfpilot.errors import PerfpilotError
from perfpilot.profilers.block import BlockMeter, measure_calls
from perfpilot.pytest_plugin.baseline import BaselineError, BaselineStore, load
from perfpilot.pytest_plugin.budgets import BudgetError, budget_from_marker, merge_budgets, parse_quantity, parse_thresholds
from perfpilot.pytest_plugin.compare import classify, compare_record
from perfpilot.pytest_plugin.report import TestRecord, build_document, check_budget

# ------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("metric", "text", "value"),
    [
        ("wall", "200 ms", 0.2), ("wall", "1.5s", 1.5), ("cpu", "150 ms", 0.15), ("cpu", "250us", 250e-6),
        ("cpu", "250 µs", 250e-6), ("wall", "2 min", 120.0), ("wall", 0.25, 0.25),
        ("peak_rss", "50 MB", 50e6), ("peak_rss", "50 MiB", 50 * 2**20), ("gpu_memory", "1 GiB", 2**30),
        ("peak_rss", "512 kB", 512e3), ("io", "10 KiB", 10240), ("peak_rss", 4096, 4096.0),
        ("energy", "2 J", 2.0), ("energy", "500 mJ", 0.5), ("energy", "1 Wh", 3600.0), ("energy", "1e3 J", 1000.0),
    ],
)
def test_quantities_with_units(metric: str, text: object, value: float) -> None:
    assert parse_quantity(metric, text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("metric", "text", "fragment"),
    [
        ("wall", "200 MB", "unknown duration unit 'MB'"), ("peak_rss", "5 ms", "unknown size unit 'ms'"),
        ("energy", "2 W", "unknown energy unit 'W'"), ("wall", "fast", "expected a duration like"),
        ("wall", "", "expected a duration"), ("wall", True, "expected a duration"), ("peak_rss", "50", "has no unit"), ("wall", "0 s", "greater than zero"),
        ("wall", -1, "greater than zero"), ("nope", "1 s", "unknown budget metric 'nope'"),
        ("energy", "1 MWh", "unknown energy unit 'MWh'"),
    ],
)
def test_bad_quantities_say_what_and_how(metric: str, text: object, fragment: str) -> None:
    with pytest.raises(BudgetError) as info:
        parse_quantity(metric, text)
    assert fragment in str(info.value)
    assert isinstance(info.value, PerfpilotError)


def test_markers_merge_nearest_first() -> None:
    test_level = budget_from_marker((), {"wall": "1 s"})
    class_level = budget_from_marker((), {"wall": "5 s", "cpu": "2 s"})
    merged = merge_budgets([test_level, class_level])  # iter_markers order: closest first
    assert merged is not None and merged.limits == {"wall": 1.0, "cpu": 2.0}
    with pytest.raises(BudgetError, match="at least one limit"):
        budget_from_marker((), {})


def test_thresholds() -> None:
    assert parse_thresholds("wall:10%,peak_rss:20%") == {"wall": pytest.approx(0.1), "peak_rss": pytest.approx(0.2)}
    assert parse_thresholds(" cpu : 0.05 ") == {"cpu": 0.05}
    for bad in ("wall", "wall:", "wall:x%", "speed:5%", "", "wall:0%"):
        with pytest.raises(BudgetError):
            parse_thresholds(bad)
    # a bare 10 used to become a 1000% threshold: nothing would ever fail
    with pytest.raises(BudgetError, match="ambiguous .*write 10% for 10 percent or 10x"):
        parse_thresholds("wall:10")
    # ratios, as the summary speaks: 2x fails at twice the baseline, 1.1x at +10%
    assert parse_thresholds("cpu:2x,wall:1.1x") == {"cpu": pytest.approx(1.0), "wall": pytest.approx(0.1)}
    assert parse_thresholds("wall:95%") == {"wall": pytest.approx(0.95)}
    # 100% and more: "fail at 2.5x", for runners whose speed drifts between sessions
    assert parse_thresholds("cpu:150%") == {"cpu": pytest.approx(1.5)}
    with pytest.raises(BudgetError, match="at most 1000%"):
        parse_thresholds("wall:1500%")


def test_threshold_of_100_percent_or_more_judges_the_worse_side_itself() -> None:
    from perfpilot.pytest_plugin.compare import classify, engine_threshold

    base = [0.010, 0.0102, 0.0098, 0.0101, 0.0099, 0.0100, 0.0103]
    assert engine_threshold(0.1) == 0.1 and engine_threshold(1.5) == pytest.approx(0.6)
    three_x = classify("t", "cpu", base, [3 * x for x in base], threshold=1.5)
    assert three_x.kind == "regression" and three_x.verdict["threshold"] == 1.5
    assert classify("t", "cpu", base, [2 * x for x in base], threshold=1.5).kind == "unchanged"  # within 2.5x
    spread = classify("t", "cpu", base, [0.027, 0.020, 0.035, 0.027, 0.022, 0.031, 0.026], threshold=1.5)
    assert spread.verdict["ratio"] > 2.5 and spread.kind == "noise"
    # the report's verdict is the plugin's rule, not the engine's at t/(1+t) = 60%
    assert spread.verdict["regressed"] is False and spread.verdict["verdict"] == "inconclusive"
    assert three_x.verdict["regressed"] is True
    assert "below the +150% threshold" in spread.reason
    assert classify("t", "cpu", base, [1.02 * x for x in base], threshold=1.5).kind == "unchanged"
    # the better side mirrors 2.5x on a log scale: 0.3x is better, 0.5x is not
    assert classify("t", "cpu", base, [0.3 * x for x in base], threshold=1.5).kind == "improved"
    assert classify("t", "cpu", base, [0.5 * x for x in base], threshold=1.5).kind == "unchanged"
    # the engine's own path is unchanged below 100%
    assert classify("t", "cpu", base, [2 * x for x in base], threshold=0.9).kind == "regression"


# ----------------------------------------------------------------- budgets


def test_budget_check_statuses() -> None:
    record = TestRecord("t", rounds={"wall": [0.1, 0.3, 0.2], "peak_rss": [10.0, 90.0, 5.0], "energy": [5.0]},
                        budget={"wall": "150 ms", "peak_rss": "100 B", "energy": "1 J", "gpu_memory": "1 GiB"},
                        energy_source="estimate", energy_note="estimate: x")
    check_budget(record, {"wall": 0.15, "peak_rss": 100.0, "energy": 1.0, "gpu_memory": 2.0**30})
    status = {b["metric"]: b["status"] for b in record.budget_results}
    # median wall 0.2 > 0.15; peak is the max over rounds (90 of 100: near); estimate not enforced
    assert status == {"wall": "over", "peak_rss": "near", "energy": "over-estimate", "gpu_memory": "unmeasured"}
    assert len(record.failures) == 1 and "wall 200.0 ms > budget 150.0 ms" in record.failures[0]


# ---------------------------------------------------------------- baselines


def test_store_keeps_newest_and_prefers_same_python(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, "m1")
    meta = {"machine_id": "m1", "python": "3.11.7", "commit": "abc", "date": "d"}
    for i in range(4):
        store.save({**meta, "run": i}, {"t": {"rounds": {"wall": [float(i)]}}}, keep=3)
    paths = store.list()
    assert len(paths) == 3  # retention
    assert load(paths[-1]).meta["run"] == 3
    assert store.latest("3.11.2").meta["run"] == 3
    store.save({**meta, "python": "3.12.1", "run": 9}, {}, keep=3)
    assert store.latest("3.11.7").meta["run"] == 3  # same minor wins over newer
    other = store.latest("3.13.0")
    assert other.meta["run"] == 9 and "no baseline for Python 3.13" in other.warnings[0]
    assert BaselineStore(tmp_path, "m2").latest("3.11.7") is None


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(BaselineError, match="not valid JSON"):
        load(bad)
    bad.write_text(json.dumps({"schema": "perfpilot.pytest-baseline", "version": 99, "tests": {}}))
    with pytest.raises(BaselineError, match="version 99"):
        load(bad)


@pytest.mark.parametrize("entry, fragment", [
    (5, "expected an object"),
    ({"rounds": None}, "'rounds' is not an object"),
    ({"rounds": {"wall": ["x", "y", "z"]}}, "rounds['wall'] is not a list of numbers"),
    ({"rounds": {"wall": [0.1, float("nan"), 0.1]}}, "rounds['wall']"),
    ({"rounds": {}, "measure": {"m": {"wall": "fast"}}}, "measure['m']['wall']"),
])
def test_load_names_a_damaged_test_entry_instead_of_failing_tests_later(tmp_path: Path, entry: object,
                                                                         fragment: str) -> None:
    # A hand-edited or merge-mangled baseline used to reach the comparison and raise
    # ValueError/AttributeError inside each test it named.
    bad = tmp_path / "x.json"
    good = {"rounds": {"wall": [0.1, 0.2, 0.3]}}
    bad.write_text(json.dumps({"schema": "perfpilot.pytest-baseline", "version": 1, "meta": {},
                               "tests": {"t::ok": good, "t::bad": entry}}))
    with pytest.raises(BaselineError, match="damaged: test 't::bad'") as info:
        load(bad)
    assert fragment in str(info.value) and "--perfpilot-save" in str(info.value)


# -------------------------------------------------------------- block meter


def test_meter_sees_peak_growth_even_after_the_memory_is_freed() -> None:
    meter = BlockMeter(energy=False)
    with meter.measure() as outer:
        with meter.measure() as inner:
            block = bytearray(80 * 2**20)
            block[:: 4096] = b"x" * len(block[:: 4096])
            del block
        with meter.measure() as after:
            pass
    assert inner.sample.peak_rss_bytes >= 75 * 2**20
    if meter.hwm_resettable:
        assert after.sample.peak_rss_bytes < 8 * 2**20  # the mark was reset
        assert outer.sample.peak_rss_exact
    # the nested blocks reset the process-wide mark; the outer block keeps its peak
    assert outer.sample.peak_rss_bytes >= 75 * 2**20


def test_meter_counts_waited_children_and_io(tmp_path: Path) -> None:
    meter = BlockMeter()
    child = "import time\nend = time.process_time() + 0.25\nwhile time.process_time() < end: pass"
    with meter.measure() as m:
        subprocess.run([sys.executable, "-c", child], check=True)
        path = tmp_path / "f.bin"
        with open(path, "wb") as fh:
            fh.write(os.urandom(4 * 2**20))
            fh.flush()
            os.fsync(fh.fileno())
    sample = m.sample
    assert sample.cpu_children_s >= 0.2
    assert sample.cpu_s >= sample.cpu_children_s
    if sample.io_write_bytes is not None:
        assert sample.io_wchar >= 4 * 2**20
    assert sample.energy_source in {"estimate", "measured"}
    metrics = sample.metrics()
    assert {"wall", "cpu", "peak_rss", "energy"} <= set(metrics)


def test_measure_calls_calibrates_rounds() -> None:
    dist = measure_calls(sum, (range(200),), rounds=6, min_round_s=2e-3)
    assert dist.rounds == 6 and len(dist.wall) == 6 and len(dist.cpu) == 6
    assert dist.iterations > 1  # one sum of 200 ints is far below 2 ms
    assert dist.result == sum(range(200))
    slow = measure_calls(sum, (range(2000),), rounds=6, min_round_s=2e-3)
    assert slow.iterations < dist.iterations


# ------------------------------------------------------------ classification


def test_classify_regression_noise_and_floor() -> None:
    base = [0.100, 0.102, 0.099, 0.101, 0.100, 0.103, 0.098]
    slow = [v * 3 for v in base]
    assert classify("t", "cpu", base, slow, threshold=0.1).kind == "regression"
    assert classify("t", "cpu", base, base[::-1], threshold=0.1).kind == "unchanged"
    assert classify("t", "cpu", slow, base, threshold=0.1).kind == "improved"
    tiny = [v * 5e-4 for v in base]  # 50 µs tests: tripled, +100 µs is below the 200 µs floor
    finding = classify("t", "cpu", tiny, [v * 3 for v in tiny], threshold=0.1)
    assert finding.kind == "noise" and "noise floor" in finding.reason
    noisy = [0.1, 0.3, 0.1, 0.3, 0.1, 0.3, 0.1]
    assert classify("t", "wall", noisy, [0.12, 0.3, 0.12, 0.3, 0.3, 0.12, 0.3], threshold=0.1).kind in {"noise", "unchanged"}
    assert classify("t", "wall", base[:2], slow, threshold=0.1).kind == "insufficient"
    estimate = classify("t", "energy", base, slow, threshold=0.1, source="estimate")
    assert estimate.kind == "noise" and "estimate" in estimate.reason


def test_measure_distributions_are_judged_instead_of_whole_test_rounds() -> None:
    base = {"rounds": {"wall": [1.0] * 5}, "measure": {"f": {"wall": [1e-5] * 3 + [1.1e-5] * 3, "cpu": [], "iterations": 100}}}
    current = {"rounds": {"wall": [1.0] * 5}, "measure": {"f": {"wall": [4e-5] * 3 + [4.2e-5] * 3, "cpu": [],
                                                               "iterations": 100}}}
    findings = compare_record("t", base, current, {"wall": 0.1})
    assert [(f.subject, f.kind) for f in findings] == [("f", "regression")]


# --------------------------------------------------------------------- html


def test_html_report_is_self_contained() -> None:
    from perfpilot.pytest_plugin.html import render

    record = TestRecord("tests/test_x.py::test_<b>", rounds={"wall": [0.2, 0.21], "cpu": [0.19, 0.2], "peak_rss": [1e6]},
                        budget={"wall": "1 s"}, outcome="passed", energy_source="estimate")
    check_budget(record, {"wall": 1.0})
    doc = build_document(meta={"machine_id": "m", "python": "3.11", "rounds": 2, "measuring": {"io": "/proc"}},
                         records=[record], findings=[], baseline=None, saved=None)
    page = render(doc)
    assert page.startswith("<!doctype html>")
    assert "<code>tests/test_x.py::test_&lt;b&gt;</code>" in page  # escaped in the table
    assert page.count("new Chart(") >= 2 and "<script src=" not in page


def test_gpu_memory_comes_from_torch_when_the_code_under_test_uses_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: a stand-in for ``torch.cuda`` checks the wiring (reset at start, peak at stop)."""
    import types

    calls: list[str] = []
    cuda = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True,
        reset_peak_memory_stats=lambda: calls.append("reset"),
        max_memory_allocated=lambda: calls.append("peak") or 3 * 2**30,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    meter = BlockMeter(energy=False)
    with meter.measure() as m:
        pass
    assert calls == ["reset", "peak"]
    assert m.sample.metrics()["gpu_memory"] == 3 * 2**30
    record = TestRecord("t", rounds={"gpu_memory": [m.sample.gpu_memory_bytes]}, budget={"gpu_memory": "1 GiB"})
    check_budget(record, {"gpu_memory": parse_quantity("gpu_memory", "1 GiB")})
    assert "gpu_memory 3.0 GiB > budget 1.0 GiB" in record.failures[0]
