"""perfpilot: measure what a program really costs, and keep only changes proven better.

The public API is re-exported here lazily so that ``import perfpilot`` (and the CLI's
start-up) stays cheap.
"""

from __future__ import annotations

from typing import Any

from perfpilot.errors import PerfpilotError
from perfpilot.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "Profile": "perfpilot.profilers.profile",
    "Settings": "perfpilot.config",
    "load_settings": "perfpilot.config",
    "profile_command": "perfpilot.profilers.session",
    "profile_pid": "perfpilot.profilers.session",
    "RunOptions": "perfpilot.profilers.session",
}

__all__ = ["PerfpilotError", "hookimpl", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'perfpilot' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
