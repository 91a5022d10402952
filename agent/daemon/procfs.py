"""The daemon's /proc reads now live in :mod:`perfpilot.profilers.procfs` (one
implementation shared with the collectors); this module keeps the old import path."""

from __future__ import annotations

from perfpilot.profilers.procfs import (BOOT_TIME, CLK_TCK, PAGE_SIZE, Stat, StatReader, create_time, parse_stat,
                                       read_cmdline, read_stat)

__all__ = ["BOOT_TIME", "CLK_TCK", "PAGE_SIZE", "Stat", "StatReader", "create_time", "parse_stat", "read_cmdline",
           "read_stat"]
