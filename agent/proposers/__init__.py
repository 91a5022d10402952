"""Proposers: sources of candidate changes (the LLM proposer, the knob search).

:func:`choose_proposer` is the one place that picks a proposer and its backend from
Settings, for ``perfpilot optimize``, the daemon's ``--propose`` and pytest's
``--perfpilot-suggest`` alike.
"""

from __future__ import annotations

from typing import Any

from perfpilot.config import Settings
from perfpilot.errors import ConfigError

NOTHING_TO_PROPOSE = (
    "nothing can propose changes: add knobs under [tool.perfpilot.knobs] "
    '(e.g. threads = { env = "OMP_NUM_THREADS", values = ["1", "2"] }) '
    "or an LLM backend (--backend openai --model gpt-4.1 with PERFPILOT_API_KEY set)"
)


def choose_proposer(settings: Settings, plugin_set: Any, requested: str | None) -> tuple[Any, str]:
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
