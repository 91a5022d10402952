"""The ``knobs`` proposer: a search over the knobs the project declares, no LLM needed.

1. Screen, one knob at a time: every declared value other than the current one is
   tried as a *trial* against the current baseline, verified exactly like any other
   proposal (tests, interleaved runs, guards) but never adopted. Knobs are screened in
   the order the baseline's evidence gives (checkpoint stall -> checkpoint knobs first,
   DataLoader waits -> workers, memory pressure or a memory objective -> checkpointing
   and offload; see ``knob_evidence``); GPU-only knobs are skipped on a host without a
   GPU, each skip noted (``notes``) with its reason for the report.
2. Combine: the best winning value of each knob that had a winner, together, as one
   candidate that is verified and adopted if it is proven better -- when the budget has
   room for the fallback below; with one proposal left, the best single winner is
   adopted instead (knobs can interact: a proven single change beats an unproven pair).
3. If the combination is not (knobs can interact) and there was more than one
   winner, the single best winner alone is tried the same way.

Trials and the final candidates all count against the proposal budget, so the screen
takes at most ``budget - 1`` trials (the strongest evidence first) and keeps one for
adopting what won; the values left unscreened are named in the report's notes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AbstractSet, Any, Callable

from perfpilot.agent.knobs import Knob, parse_knobs
from perfpilot.agent.proposers.knob_evidence import rank, skipped_values
from perfpilot.agent.proposals import Proposal
from perfpilot.config import Settings
from perfpilot.hookspecs import hookimpl

if TYPE_CHECKING:  # the context module is heavy; proposers are registered at every start-up
    from perfpilot.agent.backends import Backend
    from perfpilot.agent.context import Context


class KnobProposer:
    name = "knobs"

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.knobs: dict[str, Knob] = parse_knobs(settings.knobs)
        self.budget = settings.budget
        self.queue: list[Proposal] | None = None
        self.winners: dict[str, list[tuple[Any, float]]] = {}
        self.phase = "screen"
        self.combined_failed = False
        self.notes: list[str] = []
        self.made = 0  # proposals handed out, against the budget
        self.cpu_flags: AbstractSet[str] | None = None  # None: this machine's, from /proc/cpuinfo (tests set them)

    def _screen_queue(self, context: Context) -> list[Proposal]:
        queue = []
        for ranked in rank(self.knobs.values(), context.profile, context.objective):
            knob, name = ranked.knob, ranked.knob.name
            if ranked.skip:
                self.notes.append(f"knob {name} skipped: {ranked.skip}")
                continue
            current = context.knob_values.get(name, knob.default)
            skipped = dict(skipped_values(knob, knob.values, context.profile, self.cpu_flags))
            for value, reason in skipped.items():
                self.notes.append(f"knob value skipped: {reason}")
            why = f"; tried early: {ranked.evidence}" if ranked.evidence else ""
            for value in knob.values:
                if value in skipped or (current is not None and str(value).lower() == str(current).lower()):
                    continue
                queue.append(Proposal(kind="knob", knob=name, value=value, trial=True, source=self.name,
                                      title=f"try {name}={value}",
                                      rationale=f"screening {name} one value at a time (current: {current!r}){why}"))
        room = max(1, self.budget - 1)  # one proposal kept for adopting the winners
        if len(queue) > room:
            left = ", ".join(p.title.removeprefix("try ") for p in queue[room:])
            self.notes.append(f"budget {self.budget}: screened {room} of {len(queue)} knob values, one proposal kept "
                              f"for adopting the winners; not tried: {left} (raise --budget to try them)")
            queue = queue[:room]
        return queue

    def _best(self) -> list[tuple[str, Any, float]]:
        best = [(name, *min(found, key=lambda vr: vr[1])) for name, found in self.winners.items() if found]
        return sorted(best, key=lambda item: item[2])

    def propose(self, context: Context) -> list[Proposal]:
        proposals = self._next(context)
        self.made += len(proposals)
        return proposals

    def _next(self, context: Context) -> list[Proposal]:
        if self.queue is None:
            self.queue = self._screen_queue(context)
        if self.queue:
            return [self.queue.pop(0)]
        best = self._best()
        if self.phase == "screen":
            self.phase = "combine"
            if best:
                parts = [Proposal(kind="knob", knob=n, value=v, source=self.name, title=f"{n}={v}") for n, v, _ in best]
                if len(parts) == 1 or self.budget - self.made < 2:
                    part = parts[0]
                    part.title = f"adopt {part.knob}={part.value}"
                    part.rationale = (f"the only winning knob value in screening (ratio {best[0][2]:.3f})" if len(parts) == 1
                                      else f"the best of {len(parts)} winners (ratio {best[0][2]:.3f}); one proposal left "
                                           "in the budget, so not their combination, which could not fall back")
                    self.phase = "done"
                    return [part]
                return [Proposal(kind="combined", changes=parts, source=self.name,
                                 title="combine winners: " + ", ".join(f"{n}={v}" for n, v, _ in best),
                                 rationale="the best value of every knob that won its screening, together")]
        if self.phase == "combine" and self.combined_failed and len(best) > 1:
            self.phase = "done"
            name, value, ratio = best[0]
            return [Proposal(kind="knob", knob=name, value=value, source=self.name, title=f"adopt {name}={value}",
                             rationale=f"the combination was not better; the best single winner (ratio {ratio:.3f})")]
        self.phase = "done"
        return []

    def feedback(self, proposal: Proposal, outcome: Any) -> None:
        if proposal.trial and getattr(outcome, "status", "") == "winner":
            ratio = _first_ratio(outcome)  # the loop lists the objective's verdict first
            self.winners.setdefault(str(proposal.knob), []).append((proposal.value, ratio))
        elif proposal.kind == "combined" and not getattr(outcome, "accepted", False):
            self.combined_failed = True


def _first_ratio(outcome: Any) -> float:
    for verdict in getattr(outcome, "verdicts", {}).values():
        return float(verdict.get("ratio", 1.0))
    return 1.0


@hookimpl
def perfpilot_register_proposers(register: Callable[..., None]) -> None:
    register("knobs", KnobProposer)
