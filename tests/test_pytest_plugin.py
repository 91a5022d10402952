"""The pytest plugin end to end, with pytester: each run is a real pytest in a subprocess
(the plugin is loaded through its ``pytest11`` entry point, as in a user's project).

No timed assertions: budgets and regressions are checked on CPU time of CPU-bound work
with margins of 10x or more, or on memory sizes; the one regression test uses a 4x
slowdown against a 50% threshold.
"""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

WORK = '''
import os, time

def spin(seconds):
    """Burn CPU time (not wall time) so the figure does not depend on machine load."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
'''


def _json(pytester: pytest.Pytester, name: str = "out.json") -> dict:
    return json.loads((pytester.path / name).read_text())


def _test(doc: dict, suffix: str) -> dict:
    matches = [t for t in doc["tests"] if t["nodeid"].endswith(suffix)]
    assert len(matches) == 1, [t["nodeid"] for t in doc["tests"]]
    return matches[0]


# ------------------------------------------------------------------- inert


def test_inert_without_the_option(pytester: pytest.Pytester) -> None:
    """Without --perfpilot: no perfpilot module beyond the plugin is imported and the
    plugin implements no hook that runs per test."""
    pytester.makeconftest('''
import json, sys
def pytest_unconfigure(config):
    plugin = config.pluginmanager.get_plugin("perfpilot")
    hooks = sorted(name for name in dir(plugin) if name.startswith("pytest_"))
    imported = sorted(m for m in sys.modules if m == "perfpilot" or m.startswith("perfpilot."))
    session = config.pluginmanager.get_plugin("perfpilot-session")
    with open("state.json", "w") as fh:
        json.dump({"hooks": hooks, "imported": imported, "session": session is not None}, fh)
''')
    pytester.makepyfile(test_a='''
import pytest
@pytest.mark.perf_budget(wall="1 ns")  # not checked when perfpilot is off
def test_one():
    assert sum(range(1000)) == 499500
''')
    result = pytester.runpytest_subprocess("--strict-markers")
    result.assert_outcomes(passed=1)
    state = json.loads((pytester.path / "state.json").read_text())
    # pytest_cmdline_main runs once per session (the --perfpilot-instructions relaunch), never per test
    assert state["hooks"] == ["pytest_addoption", "pytest_cmdline_main", "pytest_configure"]
    assert not state["session"]
    # perfpilot/__init__ pulls in errors and hookspecs (pluggy, already loaded by pytest)
    assert set(state["imported"]) <= {"perfpilot", "perfpilot.errors", "perfpilot.hookspecs", "perfpilot.pytest_plugin"}

    result = pytester.runpytest_subprocess("--perfpilot")
    result.assert_outcomes(failed=1)  # the same budget, now enforced
    state = json.loads((pytester.path / "state.json").read_text())
    assert state["session"]


# ----------------------------------------------------------------- budgets


def test_budgets_pass_and_fail_with_measured_vs_budget(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_budgets=WORK + '''
import pytest

@pytest.mark.perf_budget(cpu="10 s", wall="60 s")
def test_cpu_within():
    spin(0.05)

@pytest.mark.perf_budget(cpu="5 ms")
def test_cpu_over():
    spin(0.1)

@pytest.mark.perf_budget(peak_rss="1 GiB")
def test_memory_within():
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])

@pytest.mark.perf_budget(peak_rss="16 MiB")
def test_memory_over():
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])

@pytest.mark.perf_budget(cpu="10 s")
class TestClassBudget:
    @pytest.mark.perf_budget(cpu="1 ms")  # nearer the test: wins
    def test_method_over(self):
        spin(0.05)
''')
    result = pytester.runpytest_subprocess("--perfpilot", "--perfpilot-json", "out.json")
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines([
        "*test_cpu_over*",
        "*perf_budget exceeded: cpu * ms > budget 5.0 ms ('5 ms'; median of 1 rounds)*",
    ])
    result.stdout.fnmatch_lines(["*perf_budget exceeded: peak_rss * MiB > budget 16.0 MiB ('16 MiB'; max of 1 rounds)*"])
    result.stdout.fnmatch_lines(["*budgets over or near their limit:*", "*OVER cpu*test_cpu_over*"])
    doc = _json(pytester)
    over = _test(doc, "test_cpu_over")
    assert over["outcome"] == "failed"
    assert over["budget_results"][0]["status"] == "over"
    assert over["budget_results"][0]["measured"] >= 0.09  # CPU seconds spun, not wall
    memory = _test(doc, "test_memory_within")
    assert memory["outcome"] == "passed"
    assert memory["rounds"]["peak_rss"][0] >= 60 * 2**20
    assert _test(doc, "test_method_over")["budget"] == {"cpu": "1 ms"}


BAD_MARKERS = {
    "test_unit": ('wall="200 parsecs"', "wall: unknown duration unit 'parsecs' in '200 parsecs'"),
    "test_nounit": ('peak_rss="50"', "peak_rss: '50' has no unit"),
    "test_positional": ('"200 ms"', "takes keyword arguments only"),
    "test_metric": ('speed="1 s"', "unknown budget metric 'speed'"),
    "test_negative": ('energy="-2 J"', "energy: must be greater than zero, got '-2 J'"),
    "test_zero": ('cpu="0 ms"', "cpu: must be greater than zero, got '0 ms'"),
}


def test_bad_marker_is_a_collection_error_naming_test_and_value(pytester: pytest.Pytester) -> None:
    for module, (marker, _) in BAD_MARKERS.items():
        pytester.makepyfile(**{module: f"""
import pytest

def test_fine():
    pass

@pytest.mark.perf_budget({marker})
def test_budgeted():
    pass
"""})
    pytester.makepyfile(test_good="def test_good():\n    pass\n")
    result = pytester.runpytest_subprocess("--perfpilot")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    for module, (_, expected) in BAD_MARKERS.items():
        result.stdout.fnmatch_lines([f"*ERROR collecting {module}.py*", f"*{module}.py::test_budgeted*{expected}*"])
    result.assert_outcomes(errors=len(BAD_MARKERS))


# ------------------------------------------------------ baseline + compare


def test_slowed_function_is_a_regression_and_unchanged_one_is_not(pytester: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_regress='''
import os

SLOW = int(os.environ.get("SLOWDOWN", "1"))

def work(n):
    # fixed work, not a fixed time: its CPU time carries the machine's real noise
    total = 0
    for i in range(n):
        total += i * i % 7
    return total

def test_changed():
    work(150_000 * SLOW)

def test_unchanged():
    work(150_000)
''')
    # CPU time: load from other processes on a shared machine moves wall time a lot
    # between the saving and the comparing session, CPU time of CPU-bound work less -- but
    # whole sessions of this VM ran ~2x slow in CPU time (an unchanged test seen 1.56x,
    # 2.2x and 2.45x between sessions): hence 150% (fail at 2.5x) against 8x slower code.
    options = ["--perfpilot-rounds=7", "--perfpilot-compare-fail=cpu:150%", "--perfpilot-json", "out.json"]
    monkeypatch.setenv("SLOWDOWN", "1")
    saved = pytester.runpytest_subprocess("--perfpilot", "--perfpilot-save", *options[:1])
    saved.assert_outcomes(passed=2)
    saved.stdout.fnmatch_lines(["*baseline saved: .perfpilot/baselines/*/*-py3.*.json*"])
    files = list((pytester.path / ".perfpilot" / "baselines").glob("*/*.json"))
    assert len(files) == 1
    baseline = json.loads(files[0].read_text())
    assert {"machine_id", "python", "commit", "date", "rounds"} <= set(baseline["meta"])
    assert len(baseline["tests"]["test_regress.py::test_changed"]["rounds"]["cpu"]) == 7

    monkeypatch.setenv("SLOWDOWN", "8")
    result = pytester.runpytest_subprocess("--perfpilot-compare", *options)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*test_changed*",
        "*perfpilot: significant regression vs baseline*cpu *x: * -> * (CI *",  # µs or ms: the CPU decides
    ])
    result.stdout.fnmatch_lines(["*significant regressions (these tests fail):*", "*cpu *test_changed*"])
    doc = _json(pytester)
    changed = [f for f in doc["findings"] if f["nodeid"].endswith("test_changed")]
    unchanged = [f for f in doc["findings"] if f["nodeid"].endswith("test_unchanged")]
    assert [f["kind"] for f in changed] == ["regression"]
    # 8x slower code (a clean-clone CI run measured 4x code at 2.44x: its baseline session ran 2x slow)
    assert changed[0]["verdict"]["ci_low"] > 2.5 and changed[0]["verdict"]["threshold"] == 1.5
    assert [f["kind"] for f in unchanged] != ["regression"]
    assert _test(doc, "test_unchanged")["outcome"] == "passed"


def test_compare_without_a_baseline_says_so_and_does_not_fail(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--perfpilot-compare")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*no baseline for this machine under*run with --perfpilot-save first*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--perfpilot-compare-fail=wall:abc"], "perfpilot: --perfpilot-compare-fail: wall: expected a percentage or ratio like 10% or 1.1x, got 'abc'"),
        (["--perfpilot-compare-fail=speed:10%"], "perfpilot: --perfpilot-compare-fail: cannot read 'speed:10%'"),
        (["--perfpilot", "--perfpilot-rounds=0"], "perfpilot: --perfpilot-rounds must be at least 1, got 0"),
        (["--perfpilot-baseline=missing.json"], "perfpilot: cannot read baseline *missing.json*"),
    ],
)
def test_bad_options_are_one_line_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])
    assert "Traceback" not in result.stderr.str()


def test_baseline_from_a_file_that_is_not_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    (pytester.path / "bogus.json").write_text('{"hello": 1}')
    result = pytester.runpytest_subprocess("--perfpilot-baseline=bogus.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bogus.json is not a perfpilot pytest baseline (save one with --perfpilot-save)*"])


# -------------------------------------------------- subprocesses, fixture


def test_subprocess_cost_is_counted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sub='''
import subprocess, sys

CHILD = "import time\\nend = time.process_time() + 0.3\\nwhile time.process_time() < end: pass\\n" \\
        "block = bytearray(96 * 1024 * 1024)\\nblock[::4096] = b'x' * len(block[::4096])"

def test_spawns():
    subprocess.run([sys.executable, "-c", CHILD], check=True)

def test_in_process():
    sum(range(1000))
''')
    result = pytester.runpytest_subprocess("--perfpilot", "--perfpilot-json", "out.json")
    result.assert_outcomes(passed=2)
    doc = _json(pytester)
    spawns, local = _test(doc, "test_spawns"), _test(doc, "test_in_process")
    assert spawns["rounds"]["cpu"][0] >= 0.25  # the child's 0.3 s of CPU
    assert spawns["rounds"]["peak_rss"][0] >= 90 * 2**20  # the child's peak
    assert local["rounds"]["cpu"][0] < 0.1


def test_measure_fixture_side_by_side_with_pytest_benchmark(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_benchmark")
    pytester.makepyfile(test_fix='''
def work(n):
    return sum(i * i for i in range(n))

def test_both(benchmark, perfpilot_measure):
    dist = perfpilot_measure(work, 2000)
    assert dist.result == work(2000)
    assert dist.rounds >= 5 and dist.iterations >= 1
    assert len(dist.wall) == dist.rounds and min(dist.wall) > 0
    assert benchmark(work, 2000) == work(2000)

def test_named(perfpilot_measure):
    a = perfpilot_measure.measure(work, args=(500,), name="small", rounds=6)
    b = perfpilot_measure.measure(work, args=(5000,), name="large", rounds=6)
    assert a.rounds == b.rounds == 6
    assert b.median > a.median  # 10x the work per call; medians of calibrated rounds
    with perfpilot_measure.block() as blk:
        bytearray(32 * 1024 * 1024)[::4096]
    assert blk.sample.peak_rss_bytes >= 30 * 2**20
''')
    quick = ["--benchmark-max-time=0.05", "--benchmark-min-rounds=3"]
    plain = pytester.runpytest_subprocess(*quick)
    plain.assert_outcomes(passed=2)
    result = pytester.runpytest_subprocess(*quick, "--perfpilot", "--perfpilot-json", "out.json")
    result.assert_outcomes(passed=2)
    doc = _json(pytester)
    assert set(_test(doc, "test_named")["measure"]) == {"small", "large"}
    assert _test(doc, "test_both")["measure"]["measure"]["rounds"] >= 5


# ------------------------------------------------------------ reports, xdist, timeout


def test_json_and_html_reports(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_r=WORK + '''
import pytest

@pytest.mark.perf_budget(cpu="1 s")
def test_a():
    spin(0.01)

def test_b():
    pass
''')
    result = pytester.runpytest_subprocess("--perfpilot-json", "out.json", "--perfpilot-html", "report/out.html")
    result.assert_outcomes(passed=2)
    doc = _json(pytester)
    assert doc["schema"] == "perfpilot.pytest-report"
    assert doc["summary"]["measured"] == 2
    assert {"wall", "cpu", "peak_rss", "energy"} <= set(_test(doc, "test_a")["rounds"])
    assert _test(doc, "test_a")["energy_source"] in {"estimate", "measured"}
    page = (pytester.path / "report" / "out.html").read_text()
    assert "new Chart(" in page and "Chart.js v4" in page  # the library is inlined
    assert "<script src=" not in page  # self-contained: opens offline
    assert "test_r.py::test_a" in page


def test_xdist_workers_measure_and_controller_reports(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_d="\n".join(f"def test_{i}():\n    sum(range(10000))\n" for i in range(6)))
    result = pytester.runpytest_subprocess("-n", "2", "--perfpilot", "--perfpilot-json", "out.json")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*measured per xdist worker (2 workers)*"])
    doc = _json(pytester)
    assert len(doc["tests"]) == 6
    assert {t["worker"] for t in doc["tests"]} <= {"gw0", "gw1"}
    assert doc["meta"]["xdist_workers"] == 2


def test_pytest_timeout_still_fires_and_rounds_respect_it(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(test_t='''
import time, pytest

@pytest.mark.timeout(1)
def test_hangs():
    time.sleep(5)

@pytest.mark.timeout(1)
def test_slowish():
    time.sleep(0.3)
''')
    result = pytester.runpytest_subprocess("--perfpilot", "--perfpilot-rounds=5", "--perfpilot-json", "out.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*Timeout*"])
    slowish = _test(_json(pytester), "test_slowish")
    # 0.3 s per round within half the 1 s limit: only the real call fits
    assert len(slowish["rounds"]["wall"]) == 1
    assert any("allowance" in note for note in slowish["notes"])


def test_extra_rounds_call_the_test_again(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_rounds='''
CALLS = []

def test_counted():
    CALLS.append(1)

def test_check():
    # test_counted ran once for real and four more times as rounds
    assert len(CALLS) == 5

def test_not_idempotent(tmp_path):
    (tmp_path / "once").mkdir()
''')
    result = pytester.runpytest_subprocess("--perfpilot", "--perfpilot-rounds=5", "--perfpilot-json", "out.json",
                                           "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    doc = _json(pytester)
    assert len(_test(doc, "test_counted")["rounds"]["wall"]) == 5
    stateful = _test(doc, "test_not_idempotent")
    assert len(stateful["rounds"]["wall"]) == 1
    assert any("FileExistsError" in note for note in stateful["notes"])


def test_settings_from_pyproject(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml('[tool.perfpilot.pytest]\nrounds = 3\nslowest = 0\n')
    pytester.makepyfile(test_cfg="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--perfpilot", "--perfpilot-json", "out.json")
    result.assert_outcomes(passed=1)
    assert len(_test(_json(pytester), "test_x")["rounds"]["wall"]) == 3
    assert "slowest" not in result.stdout.str()

    pytester.makepyprojecttoml('[tool.perfpilot.pytest]\nround = 3\n')
    result = pytester.runpytest_subprocess("--perfpilot")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "[tool.perfpilot.pytest]: unknown keys ['round']" in result.stderr.str()
