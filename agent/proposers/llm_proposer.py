"""The ``llm`` proposer: renders the context into chat messages, asks a backend, and
parses the untrusted reply into proposals.

A reply nothing can be used from becomes one ``invalid`` proposal, which the loop
records as a rejected "malformed reply" (and the next prompt's history says why), so a
model that rambles costs one proposal, never the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from perfpilot.agent.proposals import Proposal, invalid, parse_reply
from perfpilot.config import Settings
from perfpilot.hookspecs import hookimpl

if TYPE_CHECKING:  # the context module is heavy; proposers are registered at every start-up
    from perfpilot.agent.backends import Backend
    from perfpilot.agent.context import Context


class LLMProposer:
    name = "llm"

    def __init__(self, settings: Settings, backend: Backend | None) -> None:
        if backend is None:
            from perfpilot.errors import ConfigError

            raise ConfigError("the llm proposer needs a backend", hint="set --backend openai (or mock)")
        self.settings = settings
        self.backend = backend
        self.notes: list[str] = []  # problems with partly usable replies

    def propose(self, context: Context) -> list[Proposal]:
        reply = self.backend.complete(context.messages())  # BackendError/BackendExhausted propagate
        parsed = parse_reply(reply, source=self.name)
        if not parsed.proposals:
            return [invalid(parsed.problems or ["no usable proposal"], reply, self.name)]
        self.notes += parsed.problems
        return parsed.proposals

    def feedback(self, proposal: Proposal, outcome: Any) -> None:
        """Nothing to keep: the loop's history goes into the next context."""


@hookimpl
def perfpilot_register_proposers(register: Callable[..., None]) -> None:
    register("llm", LLMProposer)
