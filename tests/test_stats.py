"""The verdict engine on synthetic samples with realistic noise (no processes, no timing)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from perfpilot.errors import PerfpilotError
from perfpilot.profilers.stats import (
    SampleError,
    StoppingPlan,
    ci_name,
    default_threshold,
    planned_looks,
    robust_noise,
    smallest_p,
    verdict,
)

WINS = {"faster", "slower", "smaller", "larger"}


def run_times(rng: np.random.Generator, n: int, *, scale: float = 1.0, sigma: float = 0.08,
              outliers: float = 0.05) -> np.ndarray:
    """Lognormal run times around 0.2 s with occasional slow runs (a busy neighbour)."""
    x = 0.2 * scale * rng.lognormal(0.0, sigma, n)
    slow = rng.random(n) < outliers
    x[slow] *= rng.uniform(1.3, 2.0, int(slow.sum()))
    return x


def sequential(plan: StoppingPlan, a: np.ndarray, b: np.ndarray, seed: int):
    for n in plan.looks:
        v, stop = plan.decide(a[:n], b[:n], seed=seed)
        if stop:
            return v, n
    raise AssertionError("the last look must stop")


def test_aa_single_look_is_no_win_in_at_least_95_of_100_trials() -> None:
    rng = np.random.default_rng(2024)
    false_wins = 0
    for trial in range(100):
        v = verdict(run_times(rng, 10), run_times(rng, 10), seed=trial)
        false_wins += v.verdict in WINS
        assert v.verdict in WINS | {"no change", "inconclusive"}
    assert false_wins <= 5


def test_aa_with_adaptive_stopping_keeps_false_wins_at_most_5_of_100() -> None:
    # Peeking at 5 and 10 runs: without splitting alpha this is where false wins creep in.
    rng = np.random.default_rng(7)
    plan = StoppingPlan(min_runs=5, max_runs=10)
    false_wins = 0
    for trial in range(100):
        v, _runs = sequential(plan, run_times(rng, 10, sigma=0.12), run_times(rng, 10, sigma=0.12), trial)
        false_wins += v.improved or v.regressed
    assert false_wins <= 5


def test_a_30_percent_speedup_is_found_within_10_runs_with_ci_excluding_1() -> None:
    rng = np.random.default_rng(3)
    plan = StoppingPlan(min_runs=5, max_runs=10)
    found = 0
    runs_used, ratios = [], []
    for trial in range(100):
        v, runs = sequential(plan, run_times(rng, 10), run_times(rng, 10, scale=0.7), trial)
        if v.verdict == "faster":
            assert v.improved and v.ci_high < 1
            found += 1
            runs_used.append(runs)
            ratios.append(v.ratio)
    assert found >= 95
    assert 0.65 < np.median(ratios) < 0.75
    assert max(runs_used) <= 10
    assert np.median(runs_used) == 5  # clear at the first look, usually


def test_a_1_percent_change_on_noisy_data_is_not_a_win() -> None:
    rng = np.random.default_rng(11)
    wins = sum(verdict(run_times(rng, 10), run_times(rng, 10, scale=0.99), seed=i).improved for i in range(100))
    assert wins <= 5
    # Many runs make the 1% real (significant) but it stays under the 2% bar.
    v = verdict(run_times(rng, 400, sigma=0.05, outliers=0.0), run_times(rng, 400, scale=0.99, sigma=0.05, outliers=0.0))
    assert not v.improved
    assert v.verdict in {"no change", "inconclusive"}
    assert 0.97 < v.ratio < 1.0


def test_a_real_but_tiny_difference_is_no_change_and_says_why() -> None:
    rng = np.random.default_rng(5)
    a = 1.0 + rng.normal(0, 0.002, 30)
    b = 0.99 + rng.normal(0, 0.002, 30)
    v = verdict(a, b, threshold=0.02)
    assert v.p_value < 1e-6
    assert v.verdict == "no change"
    assert not v.improved
    assert any("below the 2.0% threshold" in note for note in v.notes)


def test_words_follow_the_metric_kind_and_direction() -> None:
    a = [100.0, 101.0, 99.0, 100.5, 99.5, 100.2, 99.8, 100.1]
    double = [2 * x for x in a]
    half = [x / 2 for x in a]
    assert verdict(a, half, metric="wall").verdict == "faster"
    assert verdict(a, double, metric="cpu").verdict == "slower"
    assert verdict(a, half, metric="peak_rss").verdict == "smaller"
    larger = verdict(a, double, metric="energy")
    assert larger.verdict == "larger" and larger.regressed and not larger.improved
    assert verdict(a, half, metric="reported.step_time_s").verdict == "faster"


def test_estimated_energy_is_labelled_and_decides_nothing() -> None:
    a = [10.0, 10.2, 9.9, 10.1, 10.05, 9.95, 10.0, 10.1]
    v = verdict(a, [x * 0.5 for x in a], metric="energy", source="estimate")
    assert v.verdict == "smaller"
    assert v.source == "estimate" and v.label == "smaller (estimate)"
    assert not v.improved and not v.regressed
    assert any("estimate" in note for note in v.notes)


def test_noise_note_when_a_spreads_more_than_the_effect() -> None:
    a = [1.0, 1.3, 0.8, 1.1, 0.9, 1.25]
    b = [0.97 * x for x in (1.25, 0.8, 1.1, 1.3, 0.9, 1.0)]
    v = verdict(a, b)
    assert v.verdict == "inconclusive"
    note = next(n for n in v.notes if "own runs spread" in n)
    assert "--cpus" in note and "runs per side" in note


def test_threshold_grows_with_noise_between_floor_and_cap() -> None:
    assert default_threshold(0.001, 0.002) == pytest.approx(0.02)
    assert default_threshold(0.4, 0.1) == pytest.approx(0.05)
    assert default_threshold(3.0, 0.0) == pytest.approx(0.10)
    v = verdict([1.0, 1.01, 0.99, 1.0, 1.02], [1.0, 1.0, 1.01, 0.99, 1.0], threshold=0.07)
    assert v.threshold == 0.07


def test_robust_noise_ignores_one_outlier() -> None:
    values = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 50.0]
    assert robust_noise(values) < 0.05
    assert robust_noise([3.0]) == 0.0


def test_identical_runs_are_no_change() -> None:
    v = verdict([2.0] * 6, [2.0] * 6)
    assert (v.ratio, v.ci_low, v.ci_high, v.p_value) == (1.0, 1.0, 1.0, 1.0)
    assert v.verdict == "no change"


def test_all_zero_runs_are_no_change() -> None:
    v = verdict([0.0] * 5, [0.0] * 5, metric="io")
    assert (v.ratio, v.ci_low, v.ci_high) == (1.0, 1.0, 1.0) and v.verdict == "no change"


def test_zero_median_a_gives_json_safe_output() -> None:
    v = verdict([0.0] * 6, [5.0, 6.0, 5.5, 6.5, 5.2, 6.1], metric="io")
    assert v.ratio == math.inf
    assert v.verdict == "larger" and v.regressed
    data = v.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["ratio"] is None and data["samples_b"][0] == 5.0


def test_too_few_runs_cannot_be_significant_and_say_so() -> None:
    v = verdict([1.0, 1.1, 1.05], [0.5, 0.55, 0.52])
    assert smallest_p(3, 3) == pytest.approx(0.1)
    assert v.verdict == "inconclusive"
    assert any("cannot reach" in n for n in v.notes)


@pytest.mark.parametrize(("a", "b", "message"), [
    ([], [1.0, 2.0], "no runs for A"),
    ([1.0, float("nan")], [1.0, 2.0], "A has non-finite"),
    ([1.0, 2.0], [float("inf"), 2.0], "B has non-finite"),
])
def test_bad_samples_are_user_errors(a: list[float], b: list[float], message: str) -> None:
    with pytest.raises(SampleError, match=message) as info:
        verdict(a, b)
    assert isinstance(info.value, PerfpilotError)


def test_bad_confidence_and_threshold_are_user_errors() -> None:
    with pytest.raises(SampleError, match="confidence"):
        verdict([1.0, 2.0], [1.0, 2.0], confidence=95)
    with pytest.raises(SampleError, match="threshold"):
        verdict([1.0, 2.0], [1.0, 2.0], threshold=2.0)


def test_planned_looks_and_alpha_split() -> None:
    assert planned_looks(5, 10) == (5, 10)
    assert planned_looks(5, 50) == (5, 10, 20, 40, 50)
    assert planned_looks(5, 5) == (5,)
    assert planned_looks(8, 4) == (4,)
    plan = StoppingPlan(5, 10, confidence=0.95)
    assert plan.alpha_at(5) == pytest.approx(0.05 / 3) and plan.alpha_at(10) == pytest.approx(0.1 / 3)
    assert sum(plan.alpha_at(n) for n in plan.looks) == pytest.approx(0.05)  # the union bound holds
    assert plan.alpha_at(7) == plan.alpha_at(5)  # an unplanned look is only stricter
    assert "weighted Bonferroni" in plan.describe()
    v, stop = plan.decide([1.0, 1.1, 1.05, 0.95, 1.0], [1.0, 1.1, 1.05, 0.95, 1.02])
    assert v.confidence == pytest.approx(plan.confidence_at(5))
    assert not stop  # 5 noisy runs cannot show "no change" within 2%


def test_verdict_to_dict_round_trips_through_json() -> None:
    rng = np.random.default_rng(0)
    v = verdict(run_times(rng, 8), run_times(rng, 8, scale=0.7))
    data = json.loads(json.dumps(v.to_dict()))
    assert set(data) >= {"metric", "median_a", "median_b", "ratio", "ci_low", "ci_high", "confidence", "p_value",
                         "runs_a", "runs_b", "noise_a", "noise_b", "threshold", "verdict", "improved", "regressed",
                         "source", "notes"}
    assert data["ci_low"] <= data["ratio"] <= data["ci_high"]


def test_every_inconclusive_verdict_says_what_would_help() -> None:
    rng = np.random.default_rng(9)
    seen = 0
    for trial in range(40):
        v = verdict(run_times(rng, 6, sigma=0.2), run_times(rng, 6, scale=0.9, sigma=0.2), seed=trial)
        if v.verdict == "inconclusive":
            seen += 1
            assert any("runs" in note for note in v.notes), v.notes
    assert seen > 10


def test_noise_note_on_an_inconclusive_verdict_claims_nothing_and_asks_for_more_runs_than_made() -> None:
    """An inconclusive peak_rss (one sampled run far off) once read "more than the 0.4%
    effect being claimed: about 5 runs per side" after 5 runs per side."""
    a = [11137024.0, 10833920.0, 11079680.0, 11100160.0, 11034624.0]
    b = [11100160.0, 11034624.0, 7819264.0, 11083776.0, 10952704.0]
    v = verdict(a, b, metric="peak_rss")
    assert v.verdict == "inconclusive"
    text = " ".join(v.notes)
    assert "claimed" not in text
    for n in re.findall(r"about (\d+) runs per side", text):
        assert int(n) > 5, text


# ------------------------------------------------- near-deterministic figures (counts)


def counts(rng: np.random.Generator, n: int, *, level: float = 396.6e6, spread: float = 0.0004) -> np.ndarray:
    """Instruction counts as valgrind gives them here: runs within ``spread`` of each other."""
    return level * (1 + rng.uniform(-spread / 2, spread / 2, n))


def test_counts_differing_2_percent_are_decided_in_3_runs_per_side() -> None:
    rng = np.random.default_rng(1)
    a = counts(rng, 3)
    slower = verdict(a, counts(rng, 3, level=396.6e6 * 1.02), metric="instructions", source="valgrind")
    assert slower.rule == "deterministic" and slower.threshold == pytest.approx(0.01)
    assert slower.verdict == "larger" and slower.regressed and 1.01 < slower.ci_low < slower.ci_high < 1.03
    assert slower.source == "valgrind" and slower.source_suffix == " (valgrind)"
    assert slower.interval_name == "noise bound"
    assert not any("cannot reach" in n for n in slower.notes)  # the rank test's limit does not apply
    faster = verdict(a, counts(rng, 2, level=396.6e6 * 0.98), metric="instructions", source="pmu")
    assert faster.verdict == "smaller" and faster.improved and faster.rule == "deterministic"


def test_aa_counts_within_0_05_percent_are_no_change() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        v = verdict(counts(rng, 3, spread=0.0005), counts(rng, 3, spread=0.0005), metric="instructions")
        assert v.rule == "deterministic" and v.verdict == "no change" and not (v.improved or v.regressed), v


def test_a_count_with_real_spread_falls_back_to_the_rank_test() -> None:
    a = [100.0, 103.0, 97.0]
    b = [x * 1.02 for x in (97.5, 100.5, 103.5)]
    v = verdict(a, b, metric="instructions")
    assert v.rule == "rank test" and v.interval_name.endswith("% CI")
    assert v.threshold == pytest.approx(default_threshold(robust_noise(a), robust_noise(b)))
    assert v.verdict == "inconclusive" and not v.regressed
    assert any("cannot reach" in n for n in v.notes)
    assert verdict(a, b, metric="wall").rule == "rank test"  # only metrics promised deterministic try it


def test_runs_from_mixed_sources_decide_nothing() -> None:
    rng = np.random.default_rng(3)
    v = verdict(counts(rng, 3), counts(rng, 3, level=396.6e6 * 1.2), metric="instructions", source="mixed: pmu, valgrind")
    assert v.verdict == "larger" and not v.regressed and v.label == "larger (mixed sources)"
    assert any("do not count alike" in n for n in v.notes)


def test_deterministic_look_at_3_spends_no_alpha_and_stops_only_on_the_bound() -> None:
    rng = np.random.default_rng(4)
    plan = StoppingPlan(5, 10, deterministic_look=3)
    assert plan.is_look(3) and plan.looks == (5, 10)
    assert sum(plan.alpha_at(n) for n in plan.looks) == pytest.approx(0.05)
    v, stop = plan.decide(counts(rng, 3), counts(rng, 3, level=396.6e6 * 1.02), metric="instructions")
    assert stop and v.regressed
    noisy, stop = plan.decide([1.0, 1.3, 0.8], [2.0, 2.6, 1.6], metric="instructions")
    assert noisy.rule == "rank test" and not stop
    assert StoppingPlan(3, 10, deterministic_look=3).deterministic_look == 0


# ------------------------------------------------------------- stopping for futility


def test_futility_stop_false_rejects_a_true_20_percent_win_at_most_5_in_100() -> None:
    """The optimiser's futility stop (StoppingPlan(futility=True)) at the first look, 5 + 5
    runs: a real 20% improvement is almost never given up on, a 10% slower candidate
    usually is (benchmarks/futility.py has the full study)."""
    rng = np.random.default_rng(16)
    plan = StoppingPlan(5, 10, futility=True)
    false_rejects = slower_rejected = 0
    for trial in range(60):
        win, _ = plan.decide(run_times(rng, 5), run_times(rng, 5, scale=0.8), seed=trial)
        false_rejects += plan.stop_reason(win, 5) == "futility"
        slow, stop = plan.decide(run_times(rng, 5), run_times(rng, 5, scale=1.1), seed=trial)
        slower_rejected += stop and not slow.improved
        assert not slow.improved
    assert false_rejects <= 3  # <= 5%
    assert slower_rejected >= 39  # >= 65%; ~80% measured
    never = StoppingPlan(5, 10)  # compare's default: no futility stop, a straddling CI runs on
    assert never.stop_reason(verdict([1.0, 1.2, 0.9, 1.1, 1.0], [1.1, 1.3, 1.0, 1.2, 1.1]), 5) is None


def test_futility_stop_says_so_in_the_verdict() -> None:
    plan = StoppingPlan(5, 10, futility=True)
    a = [1.0, 1.2, 0.9, 1.1, 1.0]
    v, stop = plan.decide(a, [1.1, 1.3, 1.0, 1.2, 1.1], seed=0)
    assert stop and plan.stop_reason(v, 5) == "futility" and v.verdict == "inconclusive"
    note = next(n for n in v.notes if "futility" in n)
    assert "50% CI (futility rule)" in note and "not better by the" in note
    assert "futility" in plan.describe()


def test_ci_name_is_the_computed_level() -> None:
    plan = StoppingPlan(5, 10)
    assert ci_name(plan.confidence_at(5)) == "98.3% CI" and ci_name(plan.confidence_at(10)) == "96.7% CI"
    assert ci_name(0.95) == "95% CI"
    v, _ = plan.decide([1.0, 1.1, 1.05, 0.95, 1.0], [0.5, 0.55, 0.52, 0.48, 0.5])
    assert v.confidence == plan.confidence_at(5) and v.interval_name == "98.3% CI"
    assert v.to_dict()["interval"] == "98.3% CI" and v.to_dict()["rule"] == "rank test"
