"""The wheel installs one namespace (perfpilot.*) with its data files and entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


# Source folders and where setuptools installs them ([tool.setuptools.package-dir]).
INSTALLED_AS = {"perfpilot": "perfpilot", "agent": "perfpilot/agent", "plugins": "perfpilot/plugins",
                "profilers": "perfpilot/profilers", "prompts": "perfpilot/prompts"}


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.split()


def unmet_build_requirements() -> list[str]:
    """[build-system] requires that this interpreter does not meet. The wheel is built without build
    isolation (no network), so the venv's own setuptools is what builds it."""
    from importlib import metadata

    from packaging.requirements import Requirement

    unmet = []
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]:
        req = Requirement(text)
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            have = None
        if have is None or not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{text} (have {have or 'none'})")
    return unmet


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    unmet = unmet_build_requirements()
    if unmet:
        pytest.fail(f"this venv cannot build perfpilot: {', '.join(unmet)}; "
                    f"run `{sys.executable} -m pip install -e \".[test]\"` (the test extra upgrades setuptools)",
                    pytrace=False)
    src = tmp_path_factory.mktemp("src")
    for name in tracked_files():
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


def test_every_package_folder_and_module_is_in_the_wheel(wheel):
    """Every folder with an __init__.py under the five source roots is a package that setuptools must be told
    about (pyproject lists them by hand); every module and its __init__.py must land in the wheel."""
    names = set(wheel.namelist())
    expected = []
    for name in tracked_files():
        top, _, rest = name.partition("/")
        if top in INSTALLED_AS and rest and name.endswith(".py") and (ROOT / name).is_file():
            folder = (ROOT / name).parent
            if (folder / "__init__.py").is_file():
                expected.append(f"{INSTALLED_AS[top]}/{rest}")
    packages = {n.rsplit("/", 1)[0] for n in expected if n.endswith("/__init__.py")}
    assert {"perfpilot/pytest_plugin", "perfpilot/agent/daemon", "perfpilot/profilers/renderers"} <= packages
    missing = sorted(n for n in expected if n not in names)
    assert not missing, f"not in the wheel (add the package to [tool.setuptools] packages): {missing}"
