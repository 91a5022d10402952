"""pytest plugin (entry point ``pytest11``): inert unless ``--perfpilot`` is given."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("perfpilot", "perfpilot performance checks")
    group.addoption("--perfpilot", action="store_true", default=False, help="measure every test (wall, cpu, memory, io, energy)")
