"""What a verification means for a candidate: accepted (or a trial's winner), or rejected
with its reason.

The objective must say *improved* (better beyond the threshold, with confidence). A guard
(``peak_rss = "+10%"``) is violated when its median is over the limit and the guard's own
rule says it got larger, beyond its noise: its interval lies wholly above 1 and, for the
rank-test rule, the rank test is significant at the verdict's confidence (a near-
deterministic figure's noise bound needs no test). A median over the limit without that
evidence is not a verdict either way: the outcome stands and its detail names the guard
and why it did not decide (a guard asks "not worse than", and demanding proof of that
from a few runs would reject every change; letting a noisy median decide rejected real
wins on the sampled peak of short programs, and with 2 runs a side the bootstrap interval
lies above 1 whenever both B runs are the slower pair, 1 time in 6 under no change at all:
a wall guard on a drifting CI runner then rejected an instruction count's real win).
"""

from __future__ import annotations

from typing import Any, Mapping

from perfpilot.agent.figures import ci_label, human_value
from perfpilot.agent.outcomes import Outcome
from perfpilot.agent.proposals import Proposal
from perfpilot.agent.verification import Verification
from perfpilot.agent.workspace import Candidate
from perfpilot.config import parse_percent
from perfpilot.errors import ConfigError
from perfpilot.profilers.stats import DETERMINISTIC_RULE


def parse_guards(guards: Mapping[str, Any]) -> dict[str, float]:
    """``{"peak_rss": "+10%"}`` -> ``{"peak_rss": 0.10}`` (the allowed relative increase)."""
    out = {}
    for metric, limit in (guards or {}).items():
        text = str(limit).strip()
        if text.startswith("+"):
            text = text[1:]
        if text.startswith("-"):
            raise ConfigError(f"guard {metric} = {limit!r}: a guard is an allowed increase like \"+10%\"",
                              hint="put what must improve in objective, not in guards")
        out[str(metric)] = parse_percent(text, name=f"guard {metric}")
    return out


def decide(objective_name: str, guards: Mapping[str, float], proposal: Proposal, index: int, v: Verification,
           candidate: Candidate) -> Outcome:
    """Accepted (or a trial's winner), or rejected with its reason: what a verification means."""
    objective = v.verdicts[objective_name]
    common = dict(verdicts=v.verdicts, runs=v.runs, values_a=v.values_a, values_b=v.values_b,
                  diff=candidate.diff, measured_runs=v.measured)
    notes = "; ".join([*(objective.get("notes") or []), *v.notes])
    if not objective.get("improved"):
        word = objective.get("verdict", "inconclusive")
        reason = {"faster": "inconclusive", "smaller": "inconclusive"}.get(word, word)
        ci = f"{ci_label(objective)} {objective['ci_low']:.3f}–{objective['ci_high']:.3f}"
        if word == "inconclusive" and _no_effect(objective):
            # A CI around 1 with the point estimate inside the threshold: nothing to chase
            # with more runs, whatever a power calculation says.
            detail = (f"{objective_name}: no measurable effect, ratio {objective['ratio']:.3f} ({ci} includes 1, "
                      f"threshold ±{objective['threshold']:.1%})")
            return Outcome(index, proposal, "rejected", "no change", detail, **common)
        detail = f"{objective_name}: {word}, ratio {objective['ratio']:.3f} ({ci}, threshold ±{objective['threshold']:.1%})"
        return Outcome(index, proposal, "rejected", reason, detail + (f"; {notes}" if notes else ""), **common)
    unresolved = []
    for metric, limit in guards.items():
        guard = v.verdicts.get(metric)
        if guard is None or guard["ratio"] <= 1 + limit:
            continue
        moved = (f"{metric} ratio {guard['ratio']:.3f} exceeds the allowed +{limit:.0%} "
                 f"({human_value(metric, guard.get('median_a'))} → {human_value(metric, guard.get('median_b'))}")
        # A guard rejects on evidence (see the module docstring). A median over the limit
        # inside the noise (a sampled peak of a short run, say) is named in the detail
        # instead of deciding on a coin toss.
        why_not = _unproven(guard)
        if why_not is None:
            return Outcome(index, proposal, "rejected", "guard violated", moved + ")", **common)
        unresolved.append(f"{moved}, but {why_not})")
    detail = (f"{objective_name} ratio {objective['ratio']:.3f} "
              f"({ci_label(objective)} {objective['ci_low']:.3f}–{objective['ci_high']:.3f}, p={objective['p_value']:.2g})"
              + "".join(f"; guard {text}" for text in unresolved))
    status = "winner" if proposal.trial else "accepted"
    return Outcome(index, proposal, status, "improved", detail, **common)


def _unproven(guard: Mapping[str, Any]) -> str | None:
    """Why a guard over its limit is not evidence that it got larger, or None when it is."""
    if _includes_no_change(guard):
        low, high = guard.get("ci_low", guard["ratio"]), guard.get("ci_high", guard["ratio"])
        return f"{ci_label(guard)} {low:.3f}–{high:.3f} includes no change: within its noise"
    p, alpha = guard.get("p_value"), 1 - float(guard.get("confidence") or 0.95)
    if guard.get("rule") == DETERMINISTIC_RULE or not isinstance(p, (int, float)) or p < alpha:
        return None
    runs = f" with {guard['runs_a']} and {guard['runs_b']} runs" if "runs_a" in guard and "runs_b" in guard else ""
    return f"the rank test{runs} is not significant (p={p:.2g}, needs < {alpha:.3g}): not evidence it grew"


def _includes_no_change(verdict: Mapping[str, Any]) -> bool:
    """The verdict's interval reaches 1 (no interval: its ratio alone decides)."""
    low, high = verdict.get("ci_low", verdict["ratio"]), verdict.get("ci_high", verdict["ratio"])
    return low <= 1 <= high


def _no_effect(verdict: Mapping[str, Any]) -> bool:
    """An interval around 1 with the point estimate inside the threshold."""
    low, high, ratio, t = (verdict.get(k) for k in ("ci_low", "ci_high", "ratio", "threshold"))
    if not all(isinstance(x, (int, float)) for x in (low, high, ratio, t)):
        return False
    return _includes_no_change(verdict) and abs(ratio - 1) <= t
