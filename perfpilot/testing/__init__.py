"""Fakes for plugin authors and for perfpilot's own tests (fakes over mocks).

* :class:`FakeNVML` (``perfpilot.testing.fake_nvml``) -- a scripted stand-in for the
  ``pynvml`` module, with GPUs, readings and injected errors.
* :class:`FakeClock` (``perfpilot.testing.clock``) -- a manually advanced monotonic clock.
* :class:`ScriptedBackend` (``perfpilot.testing.backend``) -- an LLM backend that replays
  replies in order and records every request (``enqueue()``, ``history``).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FakeNVML": "perfpilot.testing.fake_nvml",
    "FakeClock": "perfpilot.testing.clock",
    "ScriptedBackend": "perfpilot.testing.backend",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'perfpilot.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)
