"""Outcome: what happened to one proposal (the loop's record, the proposer's feedback,
one row of the report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from perfpilot.agent.figures import ci_label
from perfpilot.agent.proposals import Proposal

# status: accepted | rejected | refused | malformed | winner (a knob trial that improved; not adopted)
# reason (short, machine-readable): improved | tests failed | slower | no change | inconclusive | guard violated |
#   did not apply | refused | malformed reply | run failed | output changed | interrupted | error
STATUSES = ("accepted", "rejected", "refused", "malformed", "winner")


@dataclass
class Outcome:
    index: int
    proposal: Proposal | None
    status: str
    reason: str
    detail: str = ""
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: int = 0  # runs per side used by the verification
    measured_runs: int = 0  # processes the verification ran (reused baseline runs not counted)
    values_a: list[float] = field(default_factory=list)  # objective per run, baseline
    values_b: list[float] = field(default_factory=list)  # objective per run, candidate
    diff: str = ""
    duration_s: float = 0.0
    raw_reply: str = ""  # kept for malformed replies (truncated)
    tests: list[dict[str, Any]] = field(default_factory=list)  # each test run: seed, passed, seconds

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @property
    def improved(self) -> bool:
        return self.status in {"accepted", "winner"}

    def title(self) -> str:
        return self.proposal.describe() if self.proposal is not None else "(no usable proposal)"

    def objective_verdict(self, objective: str) -> dict[str, Any] | None:
        return self.verdicts.get(objective)

    def summary_line(self, objective: str) -> str:
        """One line for the proposer's history and the terminal."""
        text = f"[{self.status}: {self.reason}] {self.title()}"
        verdict = self.verdicts.get(objective)
        if verdict:
            text += (f" — {objective} ratio {verdict['ratio']:.3f} ({ci_label(verdict)} {verdict['ci_low']:.3f}–"
                     f"{verdict['ci_high']:.3f}, {verdict['runs_a']}+{verdict['runs_b']} runs)")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "title": self.title(),
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "proposal": self.proposal.to_dict() if self.proposal is not None else None,
            "verdicts": self.verdicts,
            "runs": self.runs,
            "measured_runs": self.measured_runs,
            "values_a": self.values_a,
            "values_b": self.values_b,
            "diff": self.diff,
            "duration_s": round(self.duration_s, 3),
            "tests": self.tests,
            **({"raw_reply": self.raw_reply} if self.raw_reply else {}),
        }
