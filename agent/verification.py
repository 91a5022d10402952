"""One verification of a candidate against the baseline, and the verdict engine that makes it.

:class:`RunSpec` is a side (what to run, where); :class:`Verification` what the loop needs
back; :func:`engine_verifier` the real one, :func:`perfpilot.profilers.measure.compare`
with the loop's two savings (futility stop, reused baseline runs). Any callable with the
:data:`Verifier` shape can stand in (tests judge candidates by their content).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from perfpilot.config import Settings
from perfpilot.profilers.profile import Profile


@dataclass
class RunSpec:
    """One side of a verification: what to run, where, with which environment."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    label: str


@dataclass
class Verification:
    """What the loop needs from a verification (the engine's Comparison, reduced)."""

    verdicts: dict[str, dict[str, Any]]  # metric -> Verdict.to_dict(), objective first
    runs: int
    values_a: list[float]
    values_b: list[float]
    notes: list[str] = field(default_factory=list)
    measured: int = 0  # processes run for it (0: 2 x runs); fewer when baseline runs were reused


Verifier = Callable[[RunSpec, RunSpec, Sequence[str], str], Verification]


def engine_verifier(settings: Settings, plugin_set: Any, on_run: Callable[[str, int, Profile], None] | None) -> Verifier:
    """The real verification: :func:`perfpilot.profilers.measure.compare`.

    Two savings, both from the engine: a candidate that can no longer be better by the
    threshold stops at the first planned look (``stop_for_futility``; its false-reject
    rate is in benchmarks/futility.py), and the baseline's runs from the previous
    verification are reused while the baseline is unchanged (same command, environment,
    folder and committed tree; the engine re-checks them against fresh anchor runs)."""
    from perfpilot.profilers.measure import Arm, compare
    from perfpilot.profilers.metrics import metric_value

    kept: dict[tuple[Any, ...], list[Profile]] = {}

    def verify(a: RunSpec, b: RunSpec, metrics: Sequence[str], primary: str) -> Verification:
        key = _baseline_identity(a, metrics)
        comparison = compare(
            Arm(a.argv, env=a.env, cwd=str(a.cwd), label=a.label), Arm(b.argv, env=b.env, cwd=str(b.cwd), label=b.label),
            metrics=list(metrics), primary=primary, settings=settings, max_runs=settings.runs,
            min_runs=min(settings.min_runs, settings.runs), threshold=settings.threshold,
            confidence=settings.confidence, on_run=on_run, capture_output=True, plugin_set=plugin_set,
            stop_for_futility=True, reuse_a=kept.get(key, []) if key else [])
        if key:
            kept.clear()  # only the latest baseline can come back
            kept[key] = list(comparison.a)
        verdicts = {primary: comparison.verdicts[primary].to_dict()}
        verdicts.update({m: v.to_dict() for m, v in comparison.verdicts.items() if m != primary})
        notes = list(comparison.notes)
        if comparison.reused_a:
            notes.append(f"{comparison.reused_a} baseline runs reused from the previous verification")
        return Verification(verdicts=verdicts, runs=comparison.runs,
                            values_a=[metric_value(p, primary) for p in comparison.a],
                            values_b=[metric_value(p, primary) for p in comparison.b], notes=notes,
                            measured=len(comparison.a) - comparison.reused_a + len(comparison.b))

    return verify


def _baseline_identity(a: RunSpec, metrics: Sequence[str]) -> tuple[Any, ...] | None:
    """What makes two baselines the same: command, environment, folder, metrics and the
    folder's committed tree (accepting a change commits it). None when not a git tree."""
    head = subprocess.run(["git", "rev-parse", "HEAD^{tree}"], cwd=a.cwd, capture_output=True, text=True)
    # Tracked edits count (knob config files are edited in place); the runs' own output does not.
    edits = subprocess.run(["git", "diff", "HEAD"], cwd=a.cwd, capture_output=True, text=True)
    if head.returncode or edits.returncode:
        return None
    return (tuple(a.argv), tuple(sorted(a.env.items())), str(a.cwd), tuple(metrics), head.stdout.strip(), edits.stdout)
