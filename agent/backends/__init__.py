"""LLM backends: ``openai`` (any OpenAI-compatible endpoint) and ``mock`` (scripted replies).

A backend plugin registers a factory with ``perfpilot_register_backends``; ``factory(settings)``
returns an object that is a :class:`Backend`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

Messages = list[dict[str, str]]  # chat messages: [{"role": "system" | "user" | ..., "content": "..."}]


@runtime_checkable
class Backend(Protocol):
    """What the ``llm`` proposer needs from a backend."""

    name: str

    def complete(self, messages: Messages) -> str:
        """The model's reply text. Raises :class:`~perfpilot.agent.backends.errors.BackendError` (one line,
        what to do) when it cannot reply, and ``BackendExhausted`` when a scripted one has nothing left."""
        ...
