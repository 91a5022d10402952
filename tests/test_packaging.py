"""The wheel installs one namespace (perfpilot.*) with its data files and entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(out)], check=True, capture_output=True)
    (whl,) = out.glob("perfpilot-*.whl")
    return zipfile.ZipFile(whl)


def test_one_namespace_no_stray_top_level_modules(wheel):
    tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert "perfpilot" in tops
    assert not tops & {"agent", "plugins", "profilers", "prompts", "tests", "examples", "benchmarks"}
    names = set(wheel.namelist())
    for module in ("perfpilot/agent/__init__.py", "perfpilot/plugins/__init__.py",
                   "perfpilot/profilers/session.py", "perfpilot/prompts/__init__.py", "perfpilot/py.typed"):
        assert module in names, module


def test_package_data_travels(wheel):
    names = set(wheel.namelist())
    assert "perfpilot/profilers/assets/chart.umd.min.js" in names
    assert "perfpilot/profilers/assets/d3-flamegraph.min.js" in names
    prompts = [n for n in names if n.startswith("perfpilot/prompts/") and n.endswith(".md")]
    source_prompts = list((ROOT / "prompts").glob("*.md"))
    assert len(prompts) == len(source_prompts)


def test_entry_points(wheel):
    (ep_file,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(ep_file).decode()
    assert "perfpilot = perfpilot.cli:main" in text
    assert "[pytest11]" in text and "perfpilot.pytest_plugin" in text
