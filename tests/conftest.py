from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _shadowed_install() -> str | None:
    """Why ``perfpilot`` cannot be imported whole, or None. After a non-editable ``pip install .``,
    ``python -m pytest`` from the checkout puts the checkout first on sys.path, and its ``perfpilot/``
    folder (which holds neither agent/ nor profilers/: those are mapped in by the install) shadows
    the installed package."""
    import importlib.util

    if importlib.util.find_spec("perfpilot.profilers") is not None:
        return None
    import perfpilot

    return (f"perfpilot: {Path(perfpilot.__file__).parent} shadows the installed perfpilot (`python -m pytest` "
            "puts the current folder first on sys.path); install this checkout editable with "
            "`pip install -e \".[test]\"` (README's first line), or run the venv's `pytest` script instead")


def pytest_configure(config: pytest.Config) -> None:
    why = _shadowed_install()
    if why is not None:
        raise pytest.UsageError(why)  # one line and exit code 4, before any test module fails to import


@pytest.fixture
def perfpilot_cli():
    """Run the real `perfpilot` console script in a subprocess."""

    exe = shutil.which("perfpilot", path=str(Path(sys.executable).parent)) or shutil.which("perfpilot")
    assert exe, "perfpilot console script is not installed in this environment"

    def run(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([exe, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                              input=input)

    return run


@pytest.fixture
def python_exe() -> str:
    return sys.executable
