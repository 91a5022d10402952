"""Asking the proposer about one finding, outside the optimiser's loop: pytest's ``--perfpilot-suggest`` (a
regressed test) and the daemon's ``--propose`` (a finding on a watched process). Nothing is applied.

A :class:`Question` is what is known about the finding; :meth:`Question.context` turns it into the
optimiser's own :class:`~perfpilot.agent.context.Context` (a throwaway Profile holding the figures and hot
spots, the project's files among them quoted unless they hold secrets, the finding as the bottleneck,
known secrets masked). :func:`ask` asks once and returns an :class:`Answer`:

    ok       the reply held usable proposals (the optimiser's proposal dicts)
    invalid  nothing in the reply could be used (the parser's problems say why)
    failed   the backend failed (unreachable, auth, rate limit, out of scripted replies) or the proposer
             raised: a broken plugin is a failure to report, never a crash of the caller
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from perfpilot.agent.backends.errors import BackendError
from perfpilot.agent.context import Context, estimate_tokens, is_secret_file
from perfpilot.agent.project_paths import project_relative
from perfpilot.agent.proposers import Proposer
from perfpilot.profilers.profile import Profile

Status = Literal["ok", "invalid", "failed"]


@dataclass
class Question:
    """One finding to ask about: where its code lives, what it costs, where the time goes, and why it is asked."""

    project: Path
    command: str  # what runs the code (a pytest node id's command, a process's masked command line)
    objective: str  # the metric to win back (wall, cpu, peak_rss, ...)
    bottleneck: tuple[str | None, str]  # (label, why); label None keeps the classifier's (cpu-bound, I/O ...)
    summary: dict[str, Any]
    hotspots: list[dict[str, Any]]
    duration_s: float
    budget_tokens: int  # Settings.context_tokens
    pid: int | None = None
    test: str = ""
    secrets: tuple[str, ...] = ()  # values that must never leave (API keys, a daemon's bearer token)

    def files(self) -> list[str]:
        """The hot spots' files inside the project, secret files left out: what the context may quote."""
        return sorted({rel for spot in self.hotspots
                       if (rel := project_relative(str(spot.get("file") or ""), self.project))
                       and not is_secret_file(rel)})

    def context(self) -> Context:
        target: dict[str, Any] = {"command": self.command, "cwd": str(self.project)}
        if self.pid is not None:
            target["pid"] = self.pid
        profile = Profile(target=target, duration_s=self.duration_s, summary=dict(self.summary),
                          hotspots=list(self.hotspots))
        context = Context.build(
            project=self.project, profile=profile, objective=self.objective, guards={}, run=self.command,
            test=self.test, knobs={}, knob_values={}, env={}, history=[], files=self.files(),
            budget_tokens=self.budget_tokens)
        label, why = self.bottleneck
        return dataclasses.replace(context, bottleneck=(label or context.bottleneck[0], why),
                                   known_secrets=tuple(self.secrets))


@dataclass
class Answer:
    status: Status
    messages: list[dict[str, str]]  # what was sent (masked)
    proposals: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what of the reply was ignored, and why
    error: str = ""  # failed: the backend's one line; invalid: the problems joined
    failure: str = ""  # failed: the exception's class name (to stop asking a dead backend)
    seconds: float = 0.0

    @property
    def request_tokens(self) -> int:
        return estimate_tokens(self.messages)


def ask(proposer: Proposer, context: Context) -> Answer:
    """Ask ``proposer`` about ``context`` once; never raises for what the backend or proposer does."""
    messages = context.messages()
    notes = getattr(proposer, "notes", None)  # the llm proposer's problems with partly usable replies
    notes_before = len(notes) if isinstance(notes, list) else 0
    started = time.perf_counter()
    try:
        replied = proposer.propose(context)
    except BackendError as exc:
        answer = Answer("failed", messages, error=str(exc), failure=type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - a broken backend plugin is a failure, not a crash
        answer = Answer("failed", messages, error=f"{type(exc).__name__}: {exc}", failure=type(exc).__name__)
    else:
        usable = [p for p in replied if p.kind != "invalid"]
        problems = [problem for p in replied if p.kind == "invalid" for problem in p.problems]
        if isinstance(notes, list):
            problems += notes[notes_before:]
        answer = Answer("ok" if usable else "invalid", messages, proposals=[p.to_dict() for p in usable],
                        problems=problems, error="" if usable else ("; ".join(problems) or "no usable proposal"))
    answer.seconds = round(time.perf_counter() - started, 3)
    return answer
