"""Repeated measurement with real processes (no timed assertions: verdicts and counts only)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from perfpilot.config import Settings
from perfpilot.errors import ConfigError, PerfpilotError
from perfpilot.profilers.measure import (
    Arm,
    CompareOptions,
    ProfileSetError,
    RunFailed,
    compare,
    compare_profiles,
    measure,
    parse_cpus,
    pinned,
)
from perfpilot.profilers.metrics import MetricUnavailable, UnknownMetric
from perfpilot.registry import build_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
SLOW = ROOT / "examples" / "compare" / "workload.py"
FAST = ROOT / "examples" / "compare" / "workload_fast.py"
PY = sys.executable
# Robust CV (either side) above which 10 runs per side cannot resolve 30% reliably here:
# 12% was tried, and a clean-clone CI run at 10% (with a few far outliers the MAD does not
# see) gave ratio 0.81, CI 0.67-1.0: inconclusive. On a quiet machine (<= 5%) it must resolve.
NOISY = 0.05

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin_set():
    return build_plugin_manager()


@pytest.fixture(scope="module")
def steady_metric(plugin_set) -> str:
    # CPU time is far steadier than wall time on a shared machine; wall only if no cpu collector.
    return "cpu" if "cpu" in plugin_set.collectors() else "wall"


def test_a_30_percent_speedup_is_faster_with_ci_excluding_1_within_10_runs(plugin_set, steady_metric) -> None:
    result = compare(Arm([PY, str(SLOW)]), Arm([PY, str(FAST)]), metrics=[steady_metric], extra_metrics=["wall"],
                     max_runs=10, plugin_set=plugin_set, capture_output=True)
    v = result.primary_verdict
    assert not v.regressed and v.verdict in {"faster", "inconclusive"}, v
    if v.verdict != "faster" and max(v.noise_a, v.noise_b) > NOISY:
        # Measured, not assumed: with A's CPU time spreading this much (other sessions on
        # the 2 shared cores), 10 runs cannot resolve 30% reliably (benchmarks/verifier_power.py
        # quantifies it). The engine must then say so rather than guess.
        assert any("runs" in note for note in v.notes), v.notes  # it says what would resolve it
        pytest.xfail(f"machine too noisy for 10 runs: {steady_metric} spread ±{v.noise_a:.0%} (A), "
                     f"±{v.noise_b:.0%} (B), ratio {v.ratio:.2f}")
    assert v.verdict == "faster", v
    assert v.improved and v.ci_high < 1
    assert 0.5 < v.ratio < 0.9
    assert result.runs <= 10 and len(result.a) == len(result.b) == result.runs
    assert result.looks_taken[-1] == result.runs
    assert all(p.summary and not p.hotspots for p in result.a)  # stacks off for measurement


def test_aa_real_runs_give_no_win(plugin_set, steady_metric) -> None:
    arm = Arm([PY, str(FAST), "20000"])
    seen: list[tuple[str, int]] = []
    result = compare(arm, copy.deepcopy(arm), metrics=[steady_metric, "wall"], max_runs=7, plugin_set=plugin_set,
                     capture_output=True, on_run=lambda side, index, _p: seen.append((side, index)))
    for v in result.verdicts.values():
        assert not v.improved and not v.regressed, v
        assert v.verdict in {"no change", "inconclusive"}
    # warm-up (index 0) per side, then strictly interleaved A B A B ...
    assert seen[:2] == [("A", 0), ("B", 0)]
    assert seen[2:] == [(side, i) for i in range(1, result.runs + 1) for side in ("A", "B")]


def test_failing_runs_are_refused_and_named(tmp_path, plugin_set) -> None:
    counter = tmp_path / "count"
    flaky = tmp_path / "flaky.py"
    flaky.write_text(
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "if n == 3:\n    print('boom on call 3', file=sys.stderr)\n    sys.exit(3)\n"
    )
    with pytest.raises(RunFailed) as info:
        compare(Arm([PY, "-c", "pass"]), Arm([PY, str(flaky)]), max_runs=6, plugin_set=plugin_set,
                capture_output=True)
    err = info.value
    # B's third call is its measured run 2 (the first is the warm-up).
    assert err.failures == [("B", 2, "exited with 3")]
    assert "B run 2 exited with 3" in str(err) and "boom on call 3" in str(err)
    assert len(err.profiles["A"]) == 2 and err.profiles["B"][1].exit_code == 3
    assert "\n" not in str(err)


def test_a_failing_warm_up_stops_at_once(plugin_set) -> None:
    runs: list[str] = []
    with pytest.raises(RunFailed, match="A run warm-up exited with 2"):
        compare(Arm([PY, "-c", "raise SystemExit(2)"]), Arm([PY, "-c", "pass"]), plugin_set=plugin_set,
                capture_output=True, on_run=lambda side, index, _p: runs.append(side))
    assert runs == ["A"]


def test_unknown_metric_fails_before_any_run(plugin_set) -> None:
    runs: list[str] = []
    with pytest.raises(UnknownMetric, match="did you mean wall"):
        compare(Arm([PY, "-c", "pass"]), Arm([PY, "-c", "pass"]), metrics=["wal"], plugin_set=plugin_set,
                on_run=lambda side, index, _p: runs.append(side))
    assert runs == []


def test_unavailable_metric_fails_after_the_first_warm_up(plugin_set) -> None:
    runs: list[str] = []
    with pytest.raises(MetricUnavailable, match="^A: metric 'reported.accuracy'"):
        compare(Arm([PY, "-c", "pass"]), Arm([PY, "-c", "pass"]), metrics=["reported.accuracy"],
                plugin_set=plugin_set, on_run=lambda side, index, _p: runs.append(side))
    assert runs == ["A"]


def test_reported_metrics_can_be_compared(plugin_set) -> None:
    script = "from perfpilot.reporting import report_metric; import sys; report_metric('loss', float(sys.argv[1]))"
    result = compare(Arm([PY, "-c", script, "1.0"]), Arm([PY, "-c", script, "0.5"]), metrics=["reported.loss"],
                     max_runs=5, warmup=0, plugin_set=plugin_set)
    v = result.primary_verdict
    assert v.ratio == pytest.approx(0.5) and v.verdict == "smaller" and v.improved
    assert result.runs == 5 and result.stopped_early is False


def test_cpus_pins_every_run(plugin_set) -> None:
    script = ("import os; from perfpilot.reporting import report_metric; "
              "report_metric('cpus', len(os.sched_getaffinity(0))); report_metric('cpu0', 0 in os.sched_getaffinity(0))")
    profiles = measure(Arm([PY, "-c", script]), runs=2, warmup=0, plugin_set=plugin_set, cpus=[0])
    assert [p.summary["reported.cpus"] for p in profiles] == [1.0, 1.0]
    assert all(p.summary["reported.cpu0"] == 1.0 for p in profiles)


def test_pinned_uses_an_exec_wrapper() -> None:
    assert pinned(["python", "x.py"], None) == ["python", "x.py"]
    wrapped = pinned(["python", "x.py"], [0, 1])
    assert wrapped[-2:] == ["python", "x.py"] and "0,1" in " ".join(wrapped)


def test_parse_cpus() -> None:
    assert parse_cpus("0") == [0]
    assert parse_cpus(None) is None
    with pytest.raises(ConfigError, match="not available here"):
        parse_cpus("0,4096")
    with pytest.raises(ConfigError, match="expected CPU numbers"):
        parse_cpus("first")


def test_measure_a_callable_in_process() -> None:
    results = measure(lambda: sum(i * i for i in range(20000)), runs=4, warmup=1)
    assert len(results) == 4
    for row in results:
        assert set(row) == {"wall_s", "cpu_s", "peak_rss_bytes"}
        assert row["cpu_s"] > 0 and row["peak_rss_bytes"] > 0


def test_measure_a_command_gives_profiles_and_refuses_failures(plugin_set) -> None:
    profiles = measure(f"{PY} -c pass", runs=2, warmup=1, plugin_set=plugin_set)
    assert len(profiles) == 2 and all(p.exit_code == 0 for p in profiles)
    with pytest.raises(RunFailed, match="exited with 4"):
        measure(Arm([PY, "-c", "raise SystemExit(4)"]), runs=2, warmup=0, plugin_set=plugin_set)
    with pytest.raises(ConfigError):
        measure(Arm(""), runs=1, plugin_set=plugin_set)


# ------------------------------------------------------------ saved Profile sets


@pytest.fixture(scope="module")
def recorded(plugin_set):
    settings = Settings(stacks=False)
    a = measure(Arm([PY, "-c", "sum(range(300000))"]), runs=4, warmup=0, settings=settings, plugin_set=plugin_set)
    b = measure(Arm([PY, "-c", "sum(range(1000))"]), runs=4, warmup=0, settings=settings, plugin_set=plugin_set)
    return a, b


def test_compare_profiles_judges_saved_runs(recorded) -> None:
    a, b = recorded
    result = compare_profiles(a, b, metrics=["wall"], extra_metrics=["cpu", "energy"])
    assert result.plan is None and result.runs == 4
    assert "wall" in result.verdicts
    data = result.to_dict()
    assert data["a"]["command"][-1] == "sum(range(300000))"
    assert len(data["b"]["runs"]) == 4


def test_compare_profiles_rejects_mismatched_sets(recorded) -> None:
    a, b = recorded
    with pytest.raises(ProfileSetError, match="no profiles for B"):
        compare_profiles(a, [])
    with pytest.raises(ProfileSetError, match="A mixes different commands"):
        compare_profiles([*a[:2], b[0]], b, names_a=["x1.json", "x2.json", "y.json"])
    failed = copy.deepcopy(b[1])
    failed.target["exit_code"] = 9
    with pytest.raises(ProfileSetError, match="B has failing runs: new/2.json exited with 9"):
        compare_profiles(a, [b[0], failed], names_b=["new/1.json", "new/2.json"])
    other_host = copy.deepcopy(b)
    for p in other_host:
        p.host["machine_id"] = "elsewhere"
    with pytest.raises(ProfileSetError, match="different machines"):
        compare_profiles(a, other_host)
    assert compare_profiles(a, other_host, allow_cross_host=True).notes
    with pytest.raises(MetricUnavailable, match="^a/1.json: metric 'reported.loss'"):
        compare_profiles(a, b, metrics=["reported.loss"], names_a=["a/1.json"])


def test_errors_are_perfpilot_errors() -> None:
    for cls in (RunFailed, ProfileSetError, MetricUnavailable, UnknownMetric):
        assert issubclass(cls, PerfpilotError)


# ------------------------------------------------------- reusing A's runs (optimiser)

LOSS = "from perfpilot.reporting import report_metric; import sys; report_metric('loss', float(sys.argv[1]))"


def test_reused_a_runs_save_runs_and_drift_drops_them(plugin_set) -> None:
    a, b = Arm([PY, "-c", LOSS, "1.0"]), Arm([PY, "-c", LOSS, "0.5"])
    options = CompareOptions(metrics=["reported.loss"], max_runs=3, min_runs=3, warmup=0, plugin_set=plugin_set,
                             stop_for_futility=True)
    earlier = measure(a, runs=2, warmup=0, plugin_set=plugin_set)  # the unchanged baseline's runs

    seen: list[tuple[str, int]] = []
    again = compare(a, b, options, reuse_a=earlier, on_run=lambda side, i, _p: seen.append((side, i)))
    # two fresh A runs (anchors, interleaved), then B alone: 5 runs instead of 6
    assert seen == [("A", 1), ("B", 1), ("A", 2), ("B", 2), ("B", 3)]
    assert again.reused_a == 2 and len(again.a) == 4 and again.primary_verdict.runs_a == 4
    assert again.primary_verdict.verdict == "smaller" and again.stop_reason == "clear"
    assert again.to_dict()["reused_a"] == 2

    drifted = copy.deepcopy(earlier)
    for p in drifted:
        p.summary["reported.loss"] = 2.0  # as if the machine (or A) had changed since
    seen.clear()
    fresh = compare(a, b, options, reuse_a=drifted, on_run=lambda side, i, _p: seen.append((side, i)))
    assert fresh.reused_a == 0 and [p.summary["reported.loss"] for p in fresh.a] == [1.0, 1.0, 1.0]
    assert seen[-2:] == [("A", 3), ("B", 3)]  # measured afresh, interleaved with B
    assert any("reused runs were dropped" in n for n in fresh.notes)

    for p in drifted:
        p.target["command"] = [PY, "-c", LOSS, "2.0"]
    with pytest.raises(ProfileSetError, match="reused A run 1 ran"):
        compare(a, b, options, reuse_a=drifted)


def test_options_plan_futility_and_deterministic_look() -> None:
    assert CompareOptions(stop_for_futility=True).plan("wall").futility
    assert CompareOptions().plan("instructions").deterministic_look == 3
    assert CompareOptions().plan("wall").deterministic_look == 0
    with pytest.raises(TypeError):
        compare(Arm(["true"]), Arm(["true"]), no_such_option=1)
