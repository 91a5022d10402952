"""Verdicts: is B better than A, by how much, and how sure are we?

One verdict compares the per-run figures of A and B for one metric (lower is better):

* **Effect**: ``ratio = median(B) / median(A)``. Medians, because run times have long
  right tails (a run that met a busy neighbour) that would drag a mean.
* **Confidence interval** on that ratio: a percentile bootstrap
  (:func:`scipy.stats.bootstrap`, A and B resampled independently).
* **Rank test**: Mann-Whitney U, two-sided (:func:`scipy.stats.mannwhitneyu`); it
  assumes nothing about the distribution's shape.
* **Threshold** ``t``: the smallest change worth a word. Default
  ``clip(noise / 8, 2%, 10%)`` where noise is the larger robust coefficient of variation
  (1.4826 x MAD / median) of A and B: on a noisy machine, drift and order effects that
  no test models grow with the noise, so the bar rises with it (but never so high that a
  real 30% change could not pass).

The words (``faster``/``slower`` for time metrics, ``smaller``/``larger`` otherwise):

* better -- ``p < alpha`` **and** the whole CI lies below ``1 - t``;
* worse  -- ``p < alpha`` **and** the whole CI lies above ``1 + t``;
* ``no change`` -- the whole CI lies within ``[1 - t, 1 + t]``, or the difference is
  significant but its point estimate is within ``t`` (real, but too small to matter);
* ``inconclusive`` -- anything else (more runs would tell).

Requiring the CI to clear the threshold (not just 1) is what stops a 1% change on noisy
data from being called a 2% win, however many runs are taken.

**Adaptive stopping without inflating false positives** (:class:`StoppingPlan`): runs
are looked at only at planned sizes, doubling from ``min_runs`` up to ``max_runs``
(5 and 10 for the defaults; 5, 10, 20, 40, 50 for ``max_runs=50``). The overall
``alpha = 1 - confidence`` is split across the ``K`` planned looks in proportion to
their run counts (a weighted Bonferroni split: look ``k`` tests at
``alpha * n_k / sum(n)``, and its CI is the ``1 - alpha * n_k / sum(n)`` interval).
The shares add up to ``alpha``, so by the union bound the chance that *any* look
wrongly declares a difference is at most ``alpha``, however the stopping went. Later
looks, which have the data to use it, get the larger shares (defaults: 0.0167 at 5
runs, 0.0333 at 10). A look stops the runs when the verdict is clear (better, worse,
or a CI inside the threshold); otherwise runs continue to ``max_runs`` and the last
look's verdict stands. Stopping for "no change" never adds false wins, so it needs no
correction.

**Stopping for futility** (``StoppingPlan(futility=True)``, for the optimiser, which
only keeps improvements): from the first planned look on, a candidate whose central
:data:`FUTILITY_CONFIDENCE` (50%) bootstrap interval already lies above ``1 - t`` is not
better by the threshold and is rejected at once. That interval's low end is a one-sided
75% bound, so a candidate exactly at ``1 - t`` is given up on about a quarter of the
time at each look -- but such a candidate is almost never accepted anyway (acceptance
needs the look's whole CI below ``1 - t``: at most ``alpha_k / 2``). What matters is the
loss among candidates that would be accepted, measured by simulation (lognormal run
times with outliers, benchmarks/futility.py, 200 trials per row): a true 20% improvement
is given up at the first look in 0% (sigma 0.08) and 1% (sigma 0.15) of trials, a 10%
slower candidate is stopped at the first look (5 + 5 runs) in 85% and 58%, and no
candidate that the full 10 runs would have accepted was lost. tests/test_stats.py checks
the first two (<= 5%, >= 65%). A look's verdict and its CI stay those of the rank-test
rule at the look's level; the futility interval is named in the verdict's note.

**Near-deterministic figures** (instruction counts; :func:`~perfpilot.profilers.metrics.
is_deterministic`): the rank test cannot reach ``p < 0.05`` with 3 + 3 runs however clear
the difference, and a count that repeats to 0.05% does not need its power. When every
run of each side lies within ``DETERMINISTIC_MAX_SPREAD`` (0.5%) of the others --
spread ``s = (max - min) / median``, the larger of the two sides -- the ratio of medians
is decided with ``s`` as its noise bound: each median is taken to be off by up to ``s``
(a full range, twice the observed half-range), so the interval is
``ratio * [(1 - s) / (1 + s), (1 + s) / (1 - s)]``, and the words follow the rule above on
that interval, against a threshold of ``DETERMINISTIC_THRESHOLD`` (1%) unless one is
given, without the significance test. It is a bound from the runs' spread, not a
probability: the verdict's ``rule`` says ``deterministic`` and renderers call the
interval a "noise bound", never a CI. Two runs per side suffice; :class:`StoppingPlan`
looks at 3 (an extra look that spends no alpha and stops only on such a verdict). A
metric promised deterministic whose runs spread more (a count that varies after all)
falls back to the rank-test rule and its default threshold, unchanged.

Every verdict says where its figure came from (``source``): ``measured``, ``estimate``
(energy from a model), or a collector's label (``pmu``/``valgrind`` for instructions).
An energy figure that is only an estimate gives a verdict labelled ``source:
estimate``, and never sets ``improved``/``regressed``: an estimate does not decide.
Nor do runs whose figures come from different sources (``mixed: pmu, valgrind``).
``confidence`` is exactly the level the bootstrap CI was computed at (at a planned look,
that look's share of alpha); print it with :func:`ci_name` (``98.3% CI``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from perfpilot.errors import PerfpilotError
from perfpilot.profilers.metrics import is_deterministic, metric_kind

THRESHOLD_FLOOR = 0.02
THRESHOLD_CAP = 0.10
NOISE_TO_THRESHOLD = 0.125
BOOTSTRAP_RESAMPLES = 2000
LOOK_GROWTH = 2.0
# Near-deterministic figures (instruction counts): see the module docstring.
DETERMINISTIC_MAX_SPREAD = 0.005
DETERMINISTIC_THRESHOLD = 0.01
DETERMINISTIC_MIN_RUNS = 2
DETERMINISTIC_LOOK = 3
# Futility stops look at the central 50% bootstrap interval: see the module docstring.
FUTILITY_CONFIDENCE = 0.5
RANK_RULE = "rank test"
DETERMINISTIC_RULE = "deterministic"
MIXED = "mixed: "

WORDS = {"time": ("faster", "slower"), "size": ("smaller", "larger"), "count": ("smaller", "larger"),
         "other": ("smaller", "larger")}
VERDICTS = ("faster", "slower", "smaller", "larger", "no change", "inconclusive")


class SampleError(PerfpilotError):
    """Samples a verdict cannot be computed from (empty, not finite)."""


@dataclass
class Verdict:
    metric: str
    median_a: float
    median_b: float
    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    runs_a: int
    runs_b: int
    noise_a: float
    noise_b: float
    threshold: float
    verdict: str
    improved: bool
    regressed: bool
    source: str = "measured"
    notes: list[str] = field(default_factory=list)
    # Added to the contract: the per-run figures, so a renderer needs nothing else.
    samples_a: list[float] = field(default_factory=list)
    samples_b: list[float] = field(default_factory=list)
    # Added: which rule decided. ``rank test``: [ci_low, ci_high] is a bootstrap CI at
    # exactly ``confidence``; ``deterministic``: it is the near-deterministic noise bound.
    rule: str = RANK_RULE

    @property
    def label(self) -> str:
        """The verdict word, marked when it rests on an estimate or on mixed sources."""
        if self.source == "estimate":
            return f"{self.verdict} (estimate)"
        if self.source.startswith(MIXED):
            return f"{self.verdict} (mixed sources)"
        return self.verdict

    @property
    def source_suffix(self) -> str:
        """`` (valgrind)``: a collector's own source label, shown beside the metric name
        (estimates and mixed sources are marked in :attr:`label` instead)."""
        return "" if self.source in {"measured", "estimate"} or self.source.startswith(MIXED) else f" ({self.source})"

    @property
    def interval_name(self) -> str:
        """How to name [ci_low, ci_high] in text: ``98.3% CI`` or ``noise bound``."""
        return "noise bound" if self.rule == DETERMINISTIC_RULE else ci_name(self.confidence)

    def to_dict(self) -> dict[str, Any]:
        """The fields, JSON-safe, plus ``interval``: :attr:`interval_name` (``98.3% CI``), for printers."""
        return {**{k: _json_safe(v) for k, v in asdict(self).items()}, "interval": self.interval_name}


def ci_name(confidence: float) -> str:
    """``0.98333`` -> ``98.3% CI``: the level a CI was computed at, as printed everywhere."""
    return f"{f'{confidence * 100:.1f}'.removesuffix('.0')}% CI"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _as_array(values: Sequence[float], side: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise SampleError(f"no runs for {side}", hint="a verdict needs at least 2 runs per side")
    if not np.all(np.isfinite(array)):
        raise SampleError(f"{side} has non-finite values ({array.tolist()})", hint="check the metric's collector")
    return array


def _scipy_stats() -> Any:
    # scipy.stats takes seconds to import on a busy machine; a CLI typo must not wait for it.
    from scipy import stats

    return stats


def robust_noise(values: Sequence[float] | np.ndarray) -> float:
    """Robust coefficient of variation: 1.4826 x MAD / |median| (0 when undefined)."""
    array = np.asarray(values, dtype=float)
    if array.size < 2:
        return 0.0
    median = float(np.median(array))
    if median == 0:
        return 0.0
    return float(_scipy_stats().median_abs_deviation(array, scale="normal") / abs(median))


def default_threshold(noise_a: float, noise_b: float) -> float:
    return float(min(THRESHOLD_CAP, max(THRESHOLD_FLOOR, NOISE_TO_THRESHOLD * max(noise_a, noise_b))))


def _median_ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.median(y, axis=axis) / np.median(x, axis=axis)


def ratio_ci(a: np.ndarray, b: np.ndarray, confidence: float, seed: int,
             n_resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile-bootstrap CI of median(b)/median(a), A and B resampled independently."""
    if np.all(a == a[0]) and np.all(b == b[0]):
        if a[0] == 0:
            point = 1.0 if b[0] == 0 else math.copysign(math.inf, b[0])
        else:
            point = float(b[0] / a[0])
        return point, point
    with warnings.catch_warnings():
        # Tiny samples give a lumpy bootstrap distribution; that is expected, not news.
        warnings.simplefilter("ignore")
        result = _scipy_stats().bootstrap((a, b), _median_ratio, vectorized=True, paired=False, method="percentile",
                               n_resamples=n_resamples, confidence_level=confidence,
                               rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        dist = np.asarray(result.bootstrap_distribution, dtype=float)
        if np.isnan(dist).mean() > (1 - confidence) / 2:
            # Too many resamples with a zero median for A: the ratio is not estimable.
            return -math.inf, math.inf
        tail = (1 - confidence) / 2
        low, high = (float(q) for q in np.nanquantile(dist, [tail, 1 - tail]))
    return low, high


def rank_test(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value (1.0 when every value is the same)."""
    if np.all(np.concatenate([a, b]) == a[0]):
        return 1.0
    return float(_scipy_stats().mannwhitneyu(a, b, alternative="two-sided").pvalue)


def smallest_p(runs_a: int, runs_b: int) -> float:
    """The smallest two-sided p the rank test can give with these sample sizes."""
    return min(1.0, 2.0 / math.comb(runs_a + runs_b, runs_a))


def runs_needed(noise: float, effect: float, confidence: float = 0.95, power: float = 0.8) -> int | None:
    """Rough runs per side for a rank test to see ``effect`` through ``noise``."""
    if effect <= 0 or noise <= 0:
        return None
    norm = _scipy_stats().norm
    z = norm.ppf(1 - (1 - confidence) / 2) + norm.ppf(power)
    # pi/3: the rank test's efficiency relative to a t-test on normal data.
    return int(math.ceil(2 * (z * noise / effect) ** 2 * math.pi / 3))


def _check_levels(confidence: float, threshold: float | None) -> None:
    if not 0.5 <= confidence < 1:
        raise SampleError(f"confidence must be in [0.5, 1), got {confidence}", hint="e.g. 0.95")
    if threshold is not None and not 0 <= threshold < 1:
        raise SampleError(f"threshold must be a fraction in [0, 1), got {threshold}", hint="e.g. 0.02 for 2%")


def _point_ratio(median_a: float, median_b: float) -> float:
    if median_a == 0:
        return 1.0 if median_b == 0 else math.inf
    return median_b / median_a


def spread(values: np.ndarray) -> float:
    """Relative range, (max - min) / |median|: what every run of a side stays within."""
    low, high, median = float(np.min(values)), float(np.max(values)), float(np.median(values))
    if high == low:
        return 0.0
    return (high - low) / abs(median) if median != 0 else math.inf


def deterministic_bound(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float] | None:
    """(low, high, spread) bounding median(b)/median(a) for near-deterministic runs, or None.

    None when either side has fewer than 2 runs, a non-positive median, or runs that span
    more than :data:`DETERMINISTIC_MAX_SPREAD` (the figure is not deterministic after all).
    """
    if a.size < DETERMINISTIC_MIN_RUNS or b.size < DETERMINISTIC_MIN_RUNS:
        return None
    if float(np.median(a)) <= 0 or float(np.median(b)) <= 0:
        return None
    delta = max(spread(a), spread(b))
    if delta > DETERMINISTIC_MAX_SPREAD:
        return None
    ratio = float(np.median(b) / np.median(a))
    return ratio * (1 - delta) / (1 + delta), ratio * (1 + delta) / (1 - delta), delta


@dataclass
class _Judgement:
    """The word and flags of a verdict, before the source may veto a decision."""

    word: str
    improved: bool
    regressed: bool
    notes: list[str]


def _judge_rank(ratio: float, ci: tuple[float, float], p: float, t: float, confidence: float,
                words: tuple[str, str]) -> _Judgement:
    """The rank-test rule (module docstring): significance and a CI clear of the threshold."""
    (ci_low, ci_high), alpha = ci, 1 - confidence
    better_word, worse_word = words
    significant = p < alpha
    excludes_1 = significant and (ci_high < 1 or ci_low > 1)
    improved = significant and ci_high < 1 - t
    regressed = significant and ci_low > 1 + t
    notes: list[str] = []
    if improved or regressed:
        word = better_word if improved else worse_word
    elif (1 - t <= ci_low and ci_high <= 1 + t) or (excludes_1 and abs(ratio - 1) <= t):
        word = "no change"
        if excludes_1:
            notes.append(f"a real difference of {abs(ratio - 1):.1%}, below the {t:.1%} threshold")
    else:
        word = "inconclusive"
        if excludes_1:
            side = better_word if ci_high < 1 else worse_word
            notes.append(f"B is {side} with {confidence:.1%} confidence, but not clearly by more than the "
                         f"{t:.1%} threshold; more runs would tell")
    return _Judgement(word, improved, regressed, notes)


def _judge_bound(ratio: float, bound: tuple[float, float], t: float, words: tuple[str, str]) -> _Judgement:
    """The near-deterministic rule: the ratio, with the runs' own spread as its noise bound."""
    low, high = bound
    if high < 1 - t or low > 1 + t:
        improved = high < 1 - t
        return _Judgement(words[0] if improved else words[1], improved, not improved, [])
    if (1 - t <= low and high <= 1 + t) or ((high < 1 or low > 1) and abs(ratio - 1) <= t):
        return _Judgement("no change", False, False, [])
    return _Judgement("inconclusive", False, False, [
        f"the difference ({ratio - 1:+.2%}) sits at the {t:.1%} threshold within the runs' spread; "
        "more runs will not move it, a threshold further from it will decide"])


def _advice(xa: np.ndarray, xb: np.ndarray, ratio: float, ci: tuple[float, float], p: float, t: float,
            confidence: float, judgement: _Judgement, words: tuple[str, str]) -> list[str]:
    """What would resolve an unclear rank-test verdict (runs, pinning), and what cannot."""
    noise_a, noise_b = robust_noise(xa), robust_noise(xb)
    alpha, word = 1 - confidence, judgement.word
    excludes_1 = p < alpha and (ci[1] < 1 or ci[0] > 1)
    effect = abs(ratio - 1) if math.isfinite(ratio) else math.inf
    needed = runs_needed(max(noise_a, noise_b), max(effect, t) if math.isfinite(effect) else t, confidence)
    # Suggesting no more runs than were already made would be no advice at all.
    more = f"about {needed} runs per side" if needed and needed > max(xa.size, xb.size) else "more runs"
    notes = []
    if word != "no change" and noise_a > effect:
        what = "effect being claimed" if word in words else "difference measured"
        notes.append(
            f"A's own runs spread ±{noise_a:.1%} (robust CV), more than the {effect:.1%} {what}: "
            f"{more}, pinning to one CPU (--cpus 0) and closing other load would help"
        )
    elif word == "inconclusive" and not excludes_1:
        reason = (f"the rank test finds a difference (p={p:.2g}) but the {confidence:.1%} CI of the ratio still "
                  "includes 1" if p < alpha else f"not significant at this confidence (p={p:.2g}, needs < {alpha:.3g})")
        notes.append(f"{reason}: {more} would resolve a {max(effect, t):.1%} effect through this noise")
    floor_p = smallest_p(xa.size, xb.size)
    if floor_p >= alpha:
        notes.append(f"with {xa.size} and {xb.size} runs the rank test cannot reach p < {alpha:.3g} "
                     f"(smallest possible p is {floor_p:.3g}); use more runs")
    return notes


def _rank_interval(xa: np.ndarray, xb: np.ndarray, confidence: float, seed: int,
                   notes: list[str]) -> tuple[tuple[float, float], float]:
    """(bootstrap CI of the ratio, rank-test p), with the edge cases named in ``notes``."""
    if xa.size >= 2 and xb.size >= 2:
        ci, p = ratio_ci(xa, xb, confidence, seed), rank_test(xa, xb)
    else:
        ci, p = (-math.inf, math.inf), 1.0
        notes.append("a verdict needs at least 2 runs per side")
    median_a, median_b = float(np.median(xa)), float(np.median(xb))
    if median_a == 0 and median_b != 0:
        # Every ratio is infinite; fall back to the rank test alone for the direction.
        ci = (math.inf, math.inf) if median_b > 0 else (-math.inf, -math.inf)
        notes.append("A's median is 0, so the ratio is undefined; the rank test decides alone")
    return ci, p


def _veto_by_source(judgement: _Judgement, source: str) -> None:
    """An estimate, or runs mixing sources (pmu and valgrind counts), decide nothing."""
    if source != "estimate" and not source.startswith(MIXED):
        return
    if judgement.improved or judgement.regressed:
        judgement.notes.append(
            "energy here is an estimate (a model, not a meter): shown for information, it decides nothing"
            if source == "estimate" else
            f"the runs' figures come from different sources ({source[len(MIXED):]}), which do not count alike: "
            "shown for information, it decides nothing")
    judgement.improved = judgement.regressed = False


def verdict(
    a: Sequence[float],
    b: Sequence[float],
    *,
    metric: str = "wall",
    threshold: float | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    source: str = "measured",
    deterministic: bool | None = None,
) -> Verdict:
    """Compare runs of A and B for one metric (lower is better). See the module docstring.

    ``deterministic`` (default: :func:`~perfpilot.profilers.metrics.is_deterministic`
    of ``metric``) tries the near-deterministic rule first; ``source`` is where the
    figures came from (``measured``, ``estimate``, ``pmu``, ``valgrind``, ``mixed: ...``).
    """
    _check_levels(confidence, threshold)
    xa, xb = _as_array(a, "A"), _as_array(b, "B")
    median_a, median_b = float(np.median(xa)), float(np.median(xb))
    ratio = _point_ratio(median_a, median_b)
    words = WORDS[metric_kind(metric)]
    if deterministic is None:
        deterministic = is_deterministic(metric)
    bound = deterministic_bound(xa, xb) if deterministic else None
    notes: list[str] = []
    if bound is not None:
        t = DETERMINISTIC_THRESHOLD if threshold is None else float(threshold)
        ci, p, rule = bound[:2], rank_test(xa, xb), DETERMINISTIC_RULE
        judgement = _judge_bound(ratio, ci, t, words)
        notes.append(f"near-deterministic: each side's runs span at most {bound[2]:.3%}, so the ratio is decided "
                     f"with that spread as its noise bound, not by a rank test")
    else:
        t = default_threshold(robust_noise(xa), robust_noise(xb)) if threshold is None else float(threshold)
        ci, p = _rank_interval(xa, xb, confidence, seed, notes)
        judgement, rule = _judge_rank(ratio, ci, p, t, confidence, words), RANK_RULE
        judgement.notes.extend(_advice(xa, xb, ratio, ci, p, t, confidence, judgement, words))
    if np.any(xa < 0) or np.any(xb < 0):
        notes.append("negative values: a ratio of medians may mislead for this metric")
    _veto_by_source(judgement, source)
    return Verdict(
        metric=metric, median_a=median_a, median_b=median_b, ratio=ratio, ci_low=ci[0], ci_high=ci[1],
        confidence=confidence, p_value=p, runs_a=int(xa.size), runs_b=int(xb.size), noise_a=robust_noise(xa),
        noise_b=robust_noise(xb), threshold=t, verdict=judgement.word, improved=judgement.improved,
        regressed=judgement.regressed, source=source, notes=[*notes, *judgement.notes],
        samples_a=[float(v) for v in xa], samples_b=[float(v) for v in xb], rule=rule,
    )


def planned_looks(min_runs: int, max_runs: int, growth: float = LOOK_GROWTH) -> tuple[int, ...]:
    """Run counts (per side) at which the data are looked at: doubling, ending at max."""
    if max_runs < 1:
        raise SampleError(f"max runs must be at least 1, got {max_runs}")
    first = max(1, min(min_runs, max_runs))
    looks = [first]
    while looks[-1] < max_runs:
        looks.append(min(max_runs, max(looks[-1] + 1, math.ceil(looks[-1] * growth))))
    return tuple(looks)


@dataclass
class StoppingPlan:
    """Planned looks with alpha split across them (see the module docstring).

    ``futility``: also stop, from the first planned look on, once B cannot be better by
    the threshold (the CI's low end above ``1 - t``): for a search that only keeps
    improvements. ``deterministic_look``: an extra, earlier look (runs per side) that
    spends no alpha and may stop only on a near-deterministic verdict; 0 for none.
    """

    min_runs: int = 5
    max_runs: int = 10
    confidence: float = 0.95
    looks: tuple[int, ...] = ()
    futility: bool = False
    deterministic_look: int = 0

    def __post_init__(self) -> None:
        if not self.looks:
            self.looks = planned_looks(self.min_runs, self.max_runs)
        if self.deterministic_look >= self.looks[0]:
            self.deterministic_look = 0  # the first planned look comes as early

    def alpha_at(self, runs: int) -> float:
        """The share of alpha spent at the look with ``runs`` per side.

        Between planned looks the smallest share is used, so an unplanned look can only
        be stricter than planned.
        """
        alpha = 1 - self.confidence
        n = runs if runs in self.looks else self.looks[0]
        return alpha * n / sum(self.looks)

    def confidence_at(self, runs: int) -> float:
        return 1 - self.alpha_at(runs)

    @property
    def final_confidence(self) -> float:
        return self.confidence_at(self.looks[-1])

    def is_look(self, runs: int) -> bool:
        return runs in self.looks or (self.deterministic_look > 0 and runs == self.deterministic_look)

    @staticmethod
    def is_clear(v: Verdict) -> bool:
        """Whether a look settles it: better, worse, or a CI inside the threshold."""
        inside = 1 - v.threshold <= v.ci_low and v.ci_high <= 1 + v.threshold
        return v.verdict in {"faster", "slower", "smaller", "larger"} or inside

    @staticmethod
    def futility_bound(v: Verdict) -> float:
        """The low end of the futility interval: the :data:`FUTILITY_CONFIDENCE` bootstrap
        CI (a one-sided 75% lower bound), or a near-deterministic verdict's noise bound."""
        if v.rule == DETERMINISTIC_RULE or len(v.samples_a) < 2 or len(v.samples_b) < 2:
            return v.ci_low
        return ratio_ci(np.asarray(v.samples_a), np.asarray(v.samples_b), FUTILITY_CONFIDENCE, seed=0)[0]

    def is_futile(self, v: Verdict) -> bool:
        """B cannot be better by the threshold: its futility interval lies above ``1 - t``."""
        return not v.improved and self.futility_bound(v) > 1 - v.threshold

    def stop_reason(self, v: Verdict, runs: int) -> str | None:
        """``clear``, ``futility``, ``max runs`` or None (go on) for a verdict at ``runs``."""
        if runs not in self.looks:
            # The deterministic look spent no alpha: only the bound may settle it.
            return "clear" if v.rule == DETERMINISTIC_RULE and self.is_clear(v) else None
        if self.is_clear(v):
            return "clear"
        if self.futility and self.is_futile(v):
            return "futility"
        return "max runs" if runs >= self.max_runs else None

    def decide(self, a: Sequence[float], b: Sequence[float], **kwargs: Any) -> tuple[Verdict, bool]:
        """(verdict at this look's confidence, stop now?) for the runs so far.

        Runs per side is B's count (A may hold more: reused baseline runs). A futility
        stop adds a note to the verdict saying so.
        """
        runs = min(len(a), len(b))
        v = verdict(a, b, confidence=self.confidence_at(runs), **kwargs)
        reason = self.stop_reason(v, runs)
        if reason == "futility":
            what = "noise bound" if v.rule == DETERMINISTIC_RULE else f"{ci_name(FUTILITY_CONFIDENCE)} (futility rule)"
            v.notes.append(f"stopped for futility after {runs} runs per side: the {what} of the ratio starts at "
                           f"{self.futility_bound(v):.3f}, above {1 - v.threshold:.3f}, so B is not better by the "
                           f"{v.threshold:.1%} threshold")
        return v, reason is not None

    def describe(self) -> str:
        alpha = 1 - self.confidence
        shares = ", ".join(f"{self.alpha_at(n):.3g} at {n}" for n in self.looks)
        text = (f"looks at {', '.join(map(str, self.looks))} runs per side; alpha {alpha:.3g} split across them "
                f"by run count (weighted Bonferroni: {shares}), so false wins stay <= {alpha:.3g} despite stopping early")
        if self.deterministic_look:
            text += (f"; an extra look at {self.deterministic_look} runs spends no alpha and stops only on a "
                     "near-deterministic verdict")
        if self.futility:
            text += "; stops for futility once the CI lies above 1 - threshold (B cannot be better by it)"
        return text
