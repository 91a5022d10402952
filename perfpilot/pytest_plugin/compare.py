"""Judging a test's rounds against its baseline with the statistics engine.

Every (test, metric) pair gets a :class:`perfpilot.profilers.stats.Verdict` (bootstrap CI
of the ratio of medians, Mann-Whitney p, noise). A finding is then one of:

``regression``  p below alpha and the whole CI above ``1 + threshold`` (the engine's
                *regressed*; for thresholds of 100% or more, which the engine refuses as
                a likely slip, the same rule applied here: :func:`engine_threshold`) and
                the medians differ by more than the metric's noise floor -- this fails
                the test;
``noise``       worse beyond the threshold by the point estimate, but not significant, or
                below the noise floor, or resting on an energy estimate -- reported, never
                fails;
``improved``    the engine says *improved*;
``unchanged``   anything else.

A *busier machine* is told apart from slower code by the run-queue wait each round records
(``cpu_wait``: time the measuring thread was runnable but had no CPU, from schedstat, see
:mod:`perfpilot.profilers.block`). A significant wall regression becomes ``noise`` with the
reason "noise: the machine was busier (waited N ms for a CPU)" when at least half of the
added wall time is added wait *and* wall time less that wait did not regress significantly.
More CPU work raises wall less wait (and CPU time); more sleeping or blocking on I/O raises
wall less wait without adding wait: both still fail. "CPU time did not regress" alone does
not excuse: a test that sleeps longer on a busy machine has steady CPU time and added wait,
and must fail; the CPU verdict is reported next to it as evidence. A baseline without ``cpu_wait`` (or a
kernel without schedstat) is judged on wall alone, as before.

Across sessions, ``wall`` and ``cpu`` of whole tests are judged this way only in a test's call
phase, provisionally: after the main loop (5+ tests, no xdist) the final verdict divides the
session's speed out and re-measures suspects (:mod:`perfpilot.pytest_plugin.drift`).

The noise floor (:data:`NOISE_FLOOR`) exists because a baseline and a later run are
separate sessions, not interleaved rounds: for a test of a few hundred microseconds, a
shift in machine load between the two sessions is larger than any CI computed within
either. Differences below the floor are never called regressions.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from perfpilot.pytest_plugin.budgets import format_quantity

DEFAULT_THRESHOLDS = {"wall": 0.10}
NOISE_FLOOR = {"wall": 2e-4, "cpu": 2e-4, "peak_rss": 2.0**20, "io": 2.0**20, "io_read": 2.0**20,
               "io_write": 2.0**20, "gpu_memory": 2.0**20, "energy": 0.0, "cpu_wait": 2e-4}
BUSY_SHARE = 0.5  # at least this share of the added wall time must be added run-queue wait
# perfpilot_measure rounds are calibrated tight loops (>= 1 ms each): far less drift per
# round than a whole test, so their floor is per round, divided among the calls in it.
MEASURE_FLOOR_PER_ROUND = 2e-5
MIN_ROUNDS = 3  # fewer on either side cannot reach significance with a rank test


@dataclass
class Finding:
    nodeid: str
    metric: str
    kind: str  # regression | noise | improved | unchanged | insufficient
    verdict: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    subject: str = ""  # "" for the whole test, else the perfpilot_measure name

    @property
    def where(self) -> str:
        return f"{self.nodeid} [{self.subject}]" if self.subject else self.nodeid

    def describe(self) -> str:
        v = self.verdict
        if not v:
            return f"{self.metric}: {self.reason}"
        ci = ""
        if v.get("ci_low") is not None and v.get("ci_high") is not None:
            ci = f" (CI {v['ci_low']:.2f}-{v['ci_high']:.2f}, p={v['p_value']:.3g}, {v['runs_a']} vs {v['runs_b']} rounds)"
        ratio = v.get("ratio")
        ratio_text = f"{ratio:.2f}x" if isinstance(ratio, (int, float)) and math.isfinite(ratio) else "n/a"
        text = (f"{self.metric} {ratio_text}: {format_quantity(self.metric, v['median_a'])} -> "
                f"{format_quantity(self.metric, v['median_b'])}{ci}")
        return text + (f"; {self.reason}" if self.reason else "")

    def to_dict(self) -> dict[str, Any]:
        return {"nodeid": self.nodeid, "subject": self.subject, "metric": self.metric, "kind": self.kind,
                "reason": self.reason, "verdict": self.verdict}


def judge(a: Sequence[float], b: Sequence[float], *, metric: str, threshold: float | None, source: str) -> Any:
    """The one place the plugin calls the statistics engine (imported lazily: numpy/scipy).

    It runs inside the test's call hook, where the user's warning filters apply: numpy's
    ``RuntimeWarning``s about perfpilot's own arithmetic (a bootstrap over rounds of 0 B
    peak RSS subtracts inf from inf) must not fail a test under ``filterwarnings = error``.
    """
    import warnings

    import numpy as np

    from perfpilot.profilers.stats import verdict

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return verdict(a, b, metric=metric, threshold=threshold, source=source)


def engine_threshold(threshold: float) -> float:
    """The verdict engine's threshold for a plugin threshold.

    The engine takes a fraction below 1, used both ways (better below ``1 - t``, worse
    above ``1 + t``). A plugin threshold of 100% or more ("fail at 2.5x": for shared
    runners whose speed drifts between sessions) is judged on the worse side in
    :func:`classify`; the engine gets ``t / (1 + t)``, whose better side ``1 / (1 + t)``
    mirrors ``1 + t`` on a log scale.
    """
    return threshold if threshold < 1 else threshold / (1 + threshold)


def classify(nodeid: str, metric: str, a: Sequence[float], b: Sequence[float], *, threshold: float,
             source: str = "measured", subject: str = "", floor: float | None = None) -> Finding:
    if len(a) < MIN_ROUNDS or len(b) < MIN_ROUNDS:
        return Finding(nodeid, metric, "insufficient", subject=subject,
                       reason=f"{len(a)} baseline and {len(b)} current rounds; need {MIN_ROUNDS} each")
    v = judge(a, b, metric=metric, threshold=engine_threshold(threshold), source=source)
    data = v.to_dict()
    data.pop("samples_a", None)  # the rounds are in the report already
    data.pop("samples_b", None)
    data["threshold"] = threshold
    floor = NOISE_FLOOR.get(metric, 0.0) if floor is None else floor
    diff = v.median_b - v.median_a
    worse = math.isfinite(v.ratio) and v.ratio > 1 + threshold
    # the regression side is judged here against the plugin's own threshold, which may be
    # 100% or more (the engine's is a fraction below 1: see engine_threshold)
    if threshold < 1:
        regressed = v.regressed
    else:
        regressed = v.source != "estimate" and v.p_value < 1 - v.confidence and v.ci_low > 1 + threshold
        if v.regressed and not regressed:  # the engine judged against t/(1+t): its "slower" is not ours
            data["verdict"] = "inconclusive"
        data["regressed"] = regressed
    if regressed and diff > floor:
        return Finding(nodeid, metric, "regression", data, subject=subject)
    if regressed:
        return Finding(nodeid, metric, "noise", data, subject=subject,
                       reason=f"significant but {format_quantity(metric, diff)} is below the "
                              f"{format_quantity(metric, floor)} noise floor")
    if worse:
        if source == "estimate":
            reason = "estimate, decides nothing"
        elif v.p_value < 1 - v.confidence:
            reason = f"the CI reaches below the +{threshold:.0%} threshold"
        else:
            reason = f"not significant (p={v.p_value:.2g})"
        return Finding(nodeid, metric, "noise", data, reason=reason, subject=subject)
    if v.improved:
        return Finding(nodeid, metric, "improved", data, subject=subject)
    return Finding(nodeid, metric, "unchanged", data, subject=subject)


def excuse_busy_machine(finding: Finding, base: Mapping[str, Sequence[float]], current: Mapping[str, Sequence[float]],
                        *, threshold: float, floor: float | None = None) -> Finding:
    """A wall regression that the run-queue wait explains becomes ``noise`` (see the module doc).

    ``base``/``current`` hold per-round lists under ``wall``, ``cpu`` and ``cpu_wait``, in step.
    """
    if finding.kind != "regression" or finding.metric != "wall":
        return finding
    wall_a, wall_b = base.get("wall") or [], current.get("wall") or []
    wait_a, wait_b = base.get("cpu_wait") or [], current.get("cpu_wait") or []
    if len(wait_a) != len(wall_a) or len(wait_b) != len(wall_b) or not wait_a or not wait_b:
        return finding  # no run-queue figures for every round (older baseline, no schedstat)
    added_wall = statistics.median(wall_b) - statistics.median(wall_a)
    added_wait = statistics.median(wait_b) - statistics.median(wait_a)
    if added_wait <= 0 or added_wait < BUSY_SHARE * added_wall:
        return finding
    net = classify(finding.nodeid, "wall", [w - q for w, q in zip(wall_a, wait_a)],
                   [w - q for w, q in zip(wall_b, wait_b)], threshold=threshold, subject=finding.subject, floor=floor)
    cpu = None
    if base.get("cpu") and current.get("cpu"):
        cpu = classify(finding.nodeid, "cpu", base["cpu"], current["cpu"], threshold=threshold,
                       subject=finding.subject, floor=floor)
    details = {"cpu_wait_added_s": added_wait, "wall_added_s": added_wall,
               "wall_less_cpu_wait": {"kind": net.kind, "ratio": net.verdict.get("ratio"),
                                      "p_value": net.verdict.get("p_value")},
               "cpu": {"kind": cpu.kind, "ratio": cpu.verdict.get("ratio"), "p_value": cpu.verdict.get("p_value")}
               if cpu is not None else None}
    verdict = {**finding.verdict, "busy_machine": details}
    cpu_text = f", cpu {_ratio_text(cpu)} ({cpu.kind})" if cpu is not None else ""
    if net.kind == "regression":
        return Finding(finding.nodeid, "wall", "regression", verdict, subject=finding.subject,
                       reason=f"not only a busier machine: it waited {added_wait * 1e3:.1f} ms more for a CPU, but "
                              f"wall less that wait regressed too ({_ratio_text(net)}{cpu_text})")
    return Finding(finding.nodeid, "wall", "noise", verdict, subject=finding.subject,
                   reason=f"noise: the machine was busier (waited {added_wait * 1e3:.1f} ms for a CPU); "
                          f"wall less CPU wait {_ratio_text(net)} ({net.kind}){cpu_text}")


def _ratio_text(finding: Finding) -> str:
    ratio = finding.verdict.get("ratio")
    return f"{ratio:.2f}x" if isinstance(ratio, (int, float)) and math.isfinite(ratio) else "n/a"


def compare_record(nodeid: str, base: Mapping[str, Any], current: Mapping[str, Any],
                   thresholds: Mapping[str, float]) -> list[Finding]:
    """Findings for one test. ``base``/``current`` are baseline entries (see report.baseline_entry).

    A test that measured callables with ``perfpilot_measure`` is judged on those calibrated
    distributions (wall and cpu per call) rather than on whole-test rounds.
    """
    findings: list[Finding] = []
    base_measures: Mapping[str, Any] = base.get("measure") or {}
    current_measures: Mapping[str, Any] = current.get("measure") or {}
    if current_measures:
        for name, dist in current_measures.items():
            if name not in base_measures:
                continue
            for metric in ("wall", "cpu"):
                if metric in thresholds and dist.get(metric) and base_measures[name].get(metric):
                    iterations = max(1, int(dist.get("iterations") or 1))
                    floor = MEASURE_FLOOR_PER_ROUND / iterations
                    finding = classify(nodeid, metric, base_measures[name][metric], dist[metric],
                                       threshold=thresholds[metric], subject=name or "measure", floor=floor)
                    findings.append(excuse_busy_machine(finding, base_measures[name], dist,
                                                        threshold=thresholds[metric], floor=floor))
        return findings
    base_rounds: Mapping[str, list[float]] = base.get("rounds") or {}
    rounds: Mapping[str, list[float]] = current.get("rounds") or {}
    for metric, threshold in thresholds.items():
        if metric == "instructions":  # exact counts: judged by their ratio (pytest_plugin/instructions.py)
            from perfpilot.pytest_plugin.instructions import finding

            findings.append(finding(nodeid, base_rounds.get(metric), rounds.get(metric), threshold))
            continue
        if metric not in rounds or metric not in base_rounds:
            continue
        source = "measured"
        if metric == "energy" and "estimate" in (base.get("energy_source"), current.get("energy_source")):
            source = "estimate"
        finding = classify(nodeid, metric, base_rounds[metric], rounds[metric], threshold=threshold, source=source)
        findings.append(excuse_busy_machine(finding, base_rounds, rounds, threshold=threshold))
    return findings
