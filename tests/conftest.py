from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
