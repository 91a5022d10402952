"""User-facing errors.

Every error a user can cause derives from :class:`PerfpilotError`. The CLI turns one
into a single line on stderr (``perfpilot: error: <message>``) and a non-zero exit,
never a traceback.

Exit codes follow the convention of ``timeout(1)``/``env(1)`` so that they cannot be
confused with a target's own exit code, which ``perfpilot profile`` passes through:

* 125 -- perfpilot itself failed (bad config, bad input, internal error)
* 126 -- the target command was found but could not be executed
* 127 -- the target command was not found
* 128+N -- the target was killed by signal N (as a shell reports it)
* 2 -- command-line usage error (click's own code)
"""

from __future__ import annotations

EXIT_PERFPILOT_FAILURE = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_USAGE = 2


class PerfpilotError(Exception):
    """An error the user can act on. ``str(err)`` is the one-line message."""

    exit_code: int = EXIT_PERFPILOT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None) -> None:
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(PerfpilotError):
    """A config file, environment variable or flag is invalid."""


class TargetError(PerfpilotError):
    """The target command or process could not be started or attached to."""


class CommandNotFound(TargetError):
    exit_code = EXIT_NOT_FOUND


class CommandNotExecutable(TargetError):
    exit_code = EXIT_CANNOT_EXECUTE


class PluginError(PerfpilotError):
    """A plugin could not be loaded or misbehaved at registration."""


class ProfileFormatError(PerfpilotError):
    """A saved Profile JSON file is unreadable or of an unknown schema."""
