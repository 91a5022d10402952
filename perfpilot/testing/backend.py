"""A scripted LLM backend for tests: replies come from a queue, requests are recorded.

    backend = ScriptedBackend()
    backend.enqueue('{"proposals": [...]}')
    reply = backend.complete([{"role": "user", "content": "..."}])
    backend.history[-1]  # the messages it was sent

Like the ``mock`` backend (which replays a JSON file through this class), an empty
queue raises :class:`BackendExhausted`, which the optimiser treats as "the proposer has
nothing more to say" rather than a crash. An enqueued exception instance is raised
instead of replied, to script a failing backend.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Iterable

from perfpilot.agent.backends.errors import BackendError, BackendExhausted

__all__ = ["BackendError", "BackendExhausted", "ScriptedBackend"]


class ScriptedBackend:
    name = "scripted"

    def __init__(self, replies: Iterable[str | BaseException] = ()) -> None:
        self._queue: deque[str | BaseException] = deque(replies)
        self.history: list[list[dict[str, str]]] = []

    def enqueue(self, *replies: str | BaseException) -> "ScriptedBackend":
        self._queue.extend(replies)
        return self

    @property
    def remaining(self) -> int:
        return len(self._queue)

    def complete(self, messages: list[dict[str, str]]) -> str:
        self.history.append(copy.deepcopy(list(messages)))
        if not self._queue:
            raise BackendExhausted(f"the {self.name} backend has no more replies "
                                   f"(it replayed {len(self.history) - 1})")
        reply = self._queue.popleft()
        if isinstance(reply, BaseException):
            raise reply
        return reply
