"""What a candidate may change: judged by what the test run and the interpreter read.

A candidate is untrusted code that is also judged by the project's own tests, so it may
never change how those tests or the interpreter run. That is an allow-list, not a
deny-list of known tricks:

* **Files that configure a run are never a candidate's**, at any depth: ``conftest.py``;
  pytest's ini files (``pytest.ini``, ``.pytest.ini``, ``pytest.toml``) and the files
  that can hold its section (``pyproject.toml``, ``setup.cfg``, ``tox.ini``); ``noxfile.py``,
  ``setup.py``; interpreter hooks (``sitecustomize``, ``usercustomize``, ``*.pth``,
  ``pyvenv.cfg``, ``.python-version``); build/task files a test command may go through
  (``Makefile``, ``justfile``); CI files. Declared knobs are the exception: the user named
  those files.
* **No dotfile or dot-folder**, new or existing (``.gitignore``, ``.gitattributes``,
  ``.github/``, ``.env``...): they configure tools, not the program.
* **New files only of source kinds** (``NEW_FILE_SUFFIXES``): a candidate may add a
  module, not a config file some tool would discover; and no new module that would shadow
  the test runner (``pytest.py`` beats the real pytest under ``python -m pytest``) at any
  depth, nor a standard or installed module at the project's top level.
* **Env proposals only for a declared knob's variable or a performance variable** in
  ``PERF_ENV`` (thread counts, allocator settings), with a value of the shape that
  variable takes: nothing that changes what runs (``PYTHONPATH``, ``PYTEST_ADDOPTS``,
  ``PYTHONOPTIMIZE``, ``BASH_ENV``, ``LD_AUDIT``...) gets through, known or not.
"""

from __future__ import annotations

import functools
import pkgutil
import re
import sys
from pathlib import PurePosixPath
from typing import Iterable

# Names (any depth) that configure how tests or the interpreter run.
RUN_CONFIG_NAMES = frozenset({
    "conftest.py", "pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml", "pyproject.toml", "setup.cfg",
    "tox.ini", "noxfile.py", "setup.py", "sitecustomize.py", "usercustomize.py", "pyvenv.cfg", ".python-version",
    "Makefile", "makefile", "GNUmakefile", "justfile", "Justfile", "Taskfile.yml", "azure-pipelines.yml",
    "Jenkinsfile", "bitbucket-pipelines.yml", "appveyor.yml", "perfpilot.toml",
})
# Folder names whose contents an interpreter imports as hooks.
RUN_CONFIG_STEMS = frozenset({"sitecustomize", "usercustomize", "conftest"})
RUN_CONFIG_SUFFIXES = frozenset({".pth"})
# Files a candidate may create. Anything else new (an .ini, a .cfg, a .toml) could be a
# config file some tool discovers by walking the tree.
NEW_FILE_SUFFIXES = frozenset({
    ".py", ".pyi", ".pyx", ".pxd", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".rs", ".go", ".java",
    ".js", ".mjs", ".ts", ".f90", ".f", ".cu", ".cuh", ".sql", ".txt", ".md", ".csv",
})
# Config edits by key (kind "config") in these files are refused: they hold test config.
TEST_CONFIG_FILES = frozenset({"pyproject.toml", "setup.cfg", "tox.ini", "pytest.ini", ".pytest.ini", "pytest.toml"})

# Modules a test run imports: a project file of that name could stand in for them.
TEST_RUNNER_MODULES = frozenset({"pytest", "_pytest", "pluggy", "py", "unittest", "doctest", "nose", "nose2",
                                 "hypothesis", "coverage", "xdist", "pytest_randomly", "site", "runpy", "importlib"})
MAX_ENV_VALUE = 256
_COUNT = r"[1-9][0-9]{0,3}"
_BYTES = r"[0-9]{1,12}"
# name -> the shape its value must have (full match)
PERF_ENV: dict[str, str] = {
    **{name: _COUNT for name in (
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS",
        "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS", "RAYON_NUM_THREADS", "NUMBA_NUM_THREADS", "POLARS_MAX_THREADS",
        "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "GOMAXPROCS", "UV_THREADPOOL_SIZE", "MALLOC_ARENA_MAX",
        "OMP_THREAD_LIMIT")},
    "OMP_PROC_BIND": r"(?i:true|false|close|spread|master|primary)",
    "OMP_WAIT_POLICY": r"(?i:active|passive)",
    "OMP_DYNAMIC": r"(?i:true|false)",
    "MKL_DYNAMIC": r"(?i:true|false)",
    "KMP_BLOCKTIME": r"[0-9]{1,6}|infinite",
    "KMP_AFFINITY": r"[a-z0-9,=:.\-]{1,64}",
    "MALLOC_TRIM_THRESHOLD_": _BYTES,
    "MALLOC_MMAP_THRESHOLD_": _BYTES,
    "MALLOC_TOP_PAD_": _BYTES,
    "MALLOC_MMAP_MAX_": _BYTES,
    "PYTHONMALLOC": r"malloc|pymalloc|mimalloc",
    "TOKENIZERS_PARALLELISM": r"(?i:true|false)",
    "PYTORCH_CUDA_ALLOC_CONF": r"[A-Za-z0-9_:,.]{1,128}",
}


class NotAllowed(Exception):
    """A change outside the policy; the message says which rule."""


def check_file(rel: str, *, exists: bool, top_exists: bool = False) -> None:
    """Raise :class:`NotAllowed` when a candidate may not create or change ``rel``.

    ``top_exists``: the project already has ``rel``'s top-level folder or module.
    """
    path = PurePosixPath(rel)
    for part in path.parts[:-1]:
        if part.startswith("."):
            raise NotAllowed(f"{rel}: inside {part}/, a dot-folder (tool configuration, not the program)")
        if part in RUN_CONFIG_STEMS:
            raise NotAllowed(f"{rel}: inside {part}/, which the interpreter or pytest loads as a hook")
    name = path.name
    if name in RUN_CONFIG_NAMES or path.stem in RUN_CONFIG_STEMS or path.suffix in RUN_CONFIG_SUFFIXES:
        raise NotAllowed(f"{rel}: configures how the tests or the interpreter run; a candidate may not change it")
    if name.startswith("."):
        raise NotAllowed(f"{rel}: a dotfile (tool configuration, not the program)")
    if not exists and path.suffix.lower() not in NEW_FILE_SUFFIXES:
        raise NotAllowed(f"{rel}: a new file of a kind candidates may not add (new files may be source files: "
                         f"{', '.join(sorted(NEW_FILE_SUFFIXES))})")
    if not exists:
        _check_shadowing(rel, path, top_exists)


def _check_shadowing(rel: str, path: PurePosixPath, top_exists: bool) -> None:
    names = [*path.parts[:-1], path.stem if path.suffix in {".py", ".pyi", ".pyx"} else ""]
    for name in names:
        if name in TEST_RUNNER_MODULES:
            raise NotAllowed(f"{rel}: would shadow the module {name!r} that runs the tests")
    top = names[0]
    if top and not top_exists and top in installed_top_level():
        raise NotAllowed(f"{rel}: a new top-level module {top!r} would shadow the standard or installed module "
                         "of that name")


@functools.lru_cache(maxsize=1)
def installed_top_level() -> frozenset[str]:
    """Top-level names of the standard library and of installed packages (not the project's own)."""
    paths = [p for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)]
    return frozenset(sys.stdlib_module_names) | {m.name for m in pkgutil.iter_modules(paths)}


def check_config_edit(rel: str) -> None:
    if PurePosixPath(rel).name in TEST_CONFIG_FILES:
        raise NotAllowed(f"{rel}: holds the test configuration (pytest reads it); edit the program's own config "
                         "files, or declare a knob for this setting")


def check_env(name: str, value: str, declared: Iterable[str]) -> None:
    """Raise :class:`NotAllowed` unless ``name=value`` is a declared knob's or an allowed performance variable."""
    if "\0" in value:
        raise NotAllowed(f"env {name}: the value contains a NUL byte, which no environment can hold")
    if len(value) > MAX_ENV_VALUE:
        raise NotAllowed(f"env {name}: the value is {len(value)} characters, more than {MAX_ENV_VALUE}")
    if not value.isprintable():
        raise NotAllowed(f"env {name}: the value contains control characters")
    if name in set(declared):
        return
    shape = PERF_ENV.get(name)
    if shape is None:
        raise NotAllowed(f"env {name}: not a declared knob nor a performance variable perfpilot allows "
                         f"({', '.join(sorted(PERF_ENV))}); declare a knob for it in [tool.perfpilot.knobs]")
    if not re.fullmatch(shape, value):
        raise NotAllowed(f"env {name}={value!r}: not a value this variable takes")
