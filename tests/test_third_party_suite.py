"""``pytest --perfpilot`` on a real third-party test suite nobody here wrote:
more-itertools (pinned, pure Python, ships tests/ in its sdist, unittest style).

The sdist is fetched once with ``pip download --no-binary :all: --no-deps`` into
``~/.cache/perfpilot-tests`` (or ``$PERFPILOT_TEST_CACHE``) and used offline after that;
without it (offline, no cache) the test is skipped and says why. The overhead figure is
measured by ``benchmarks/pytest_overhead.py``, not asserted here (no timed assertions).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("pytest_overhead", ROOT / "benchmarks" / "pytest_overhead.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _counts(output: str) -> str:
    last = [line for line in output.strip().splitlines() if " passed" in line]
    assert last, output[-2000:]
    # "663 passed, 1 skipped, 8 warnings, 2332 subtests passed in 4.12s" -> drop the time
    return last[-1].split(" in ")[0].strip("= ")


@pytest.mark.slow
def test_more_itertools_suite_with_and_without_perfpilot(tmp_path: Path) -> None:
    overhead = _benchmark_module()
    folder, why = overhead.fetch_suite()
    if folder is None:
        pytest.skip(f"{overhead.PACKAGE}=={overhead.VERSION} sdist unavailable: {why}")
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    plain = subprocess.run(base, cwd=folder, capture_output=True, text=True, timeout=300)
    report = tmp_path / "mi.json"
    measured = subprocess.run([*base, "--perfpilot", "--perfpilot-json", str(report)], cwd=folder,
                              capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stdout[-3000:]
    assert measured.returncode == 0, measured.stdout[-3000:]
    # The same tests pass, skip and warn with perfpilot on as off
    assert _counts(measured.stdout) == _counts(plain.stdout)
    assert "slowest 10 tests" in measured.stdout
    doc = json.loads(report.read_text())
    assert doc["summary"]["measured"] >= 600
    # unittest-style TestCase methods are measured (in one round: never re-run)
    sample = next(t for t in doc["tests"] if "::" in t["nodeid"] and t["nodeid"].count("::") == 2)
    assert len(sample["rounds"]["wall"]) == 1
    assert all(t["rounds"]["cpu"][0] >= 0 for t in doc["tests"])
