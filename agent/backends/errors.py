"""Errors an LLM backend raises (all user-facing, one line each)."""

from __future__ import annotations

from perfpilot.errors import PerfpilotError


class BackendError(PerfpilotError):
    """The LLM backend failed: unreachable, authentication, model not found, rate limited."""


class BackendExhausted(BackendError):
    """A scripted backend has no more replies (the optimiser stops asking; not a failure)."""
