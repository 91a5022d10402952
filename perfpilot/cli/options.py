"""Options shared by several commands (one definition, one spelling).

Values with units (``--interval 100ms``, ``--threshold 2%``, ``--max-db-size 512MiB``) stay text here and
are read by :mod:`perfpilot.units` when Settings (or the daemon's config) take them, so a flag, an
environment variable and a config file accept the same spellings and fail with the same message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from perfpilot.config import Settings, load_settings

F = Callable[..., Any]


def collector_options(func: F) -> F:
    """--config, --interval, --plugins, --disable."""
    func = click.option("--disable", "disable", default=None, metavar="NAMES",
                        help="Comma list of collectors to turn off (e.g. gpu,power).")(func)
    func = click.option("--plugins", "plugins", default=None, metavar="NAMES",
                        help="Comma list of the only collectors to run (default: all available).")(func)
    func = click.option("--interval", default=None, metavar="DURATION",
                        help="Sampling interval, e.g. 100ms (default) or 1s.")(func)
    func = click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                        help="Config file (pyproject.toml with [tool.perfpilot], or perfpilot.toml).")(func)
    return func


def settings_from(config_file: Path | None, **flags: Any) -> Settings:
    overrides = dict(flags)
    if overrides.get("disable") is not None:
        overrides["disable_plugins"] = overrides.pop("disable")
    else:
        overrides.pop("disable", None)
    return load_settings(config_file=config_file, overrides=overrides)
