"""Proposers: sources of candidate changes (the LLM proposer, the knob search).

:func:`choose_proposer` is the one place that picks a proposer and its backend from
Settings, for ``perfpilot optimize``, the daemon's ``--propose`` and pytest's
``--perfpilot-suggest`` alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from perfpilot.config import Settings
from perfpilot.errors import ConfigError

if TYPE_CHECKING:  # heavy modules; proposers are registered at every start-up
    from perfpilot.agent.context import Context
    from perfpilot.agent.proposals import Proposal
    from perfpilot.registry import PluginSet

NOTHING_TO_PROPOSE = (
    "nothing can propose changes: add knobs under [tool.perfpilot.knobs] "
    '(e.g. threads = { env = "OMP_NUM_THREADS", values = ["1", "2"] }) '
    "or an LLM backend (--backend openai --model gpt-4.1 with PERFPILOT_API_KEY set)"
)


@runtime_checkable
class Proposer(Protocol):
    """A source of candidate changes. A proposer plugin registers ``factory(settings, backend)``
    (``perfpilot_register_proposers``; ``backend`` is a :class:`~perfpilot.agent.backends.Backend` or None)
    returning one of these."""

    name: str

    def propose(self, context: Context) -> list[Proposal]:
        """Candidates for this context; ``[]`` when it has nothing more. A reply nothing can be used from
        is one ``invalid`` proposal; a backend failure raises ``BackendError``."""
        ...

    def feedback(self, proposal: Proposal, outcome: Any) -> None:
        """What became of ``proposal`` (an :class:`~perfpilot.agent.outcomes.Outcome`, or a plain object
        with its ``status``, ``accepted`` and ``verdicts`` for a caller outside the loop)."""
        ...


def choose_proposer(settings: Settings, plugin_set: PluginSet, requested: str | None) -> tuple[Proposer, str]:
    """(proposer, description): the LLM with the configured backend, else the knob search."""
    proposers = plugin_set.proposers()
    name = requested or ("llm" if settings.backend else ("knobs" if settings.knobs else None))
    if name is None:
        raise ConfigError(NOTHING_TO_PROPOSE)
    if name not in proposers:
        raise ConfigError(f"unknown proposer {name!r}", hint=f"known: {', '.join(sorted(proposers))}")
    backend = None
    description = name
    if name == "llm":
        if not settings.backend:
            raise ConfigError("the llm proposer needs a backend", hint="pass --backend openai or --backend mock")
        backends = plugin_set.backends()
        if settings.backend not in backends:
            raise ConfigError(f"unknown backend {settings.backend!r}", hint=f"known: {', '.join(sorted(backends))}")
        backend = backends[settings.backend].factory(settings)
        description = f"llm via {settings.backend}" + (f" ({settings.model})" if settings.model else "")
    elif name == "knobs" and not settings.knobs:
        raise ConfigError(NOTHING_TO_PROPOSE)
    return proposers[name].factory(settings, backend), description
