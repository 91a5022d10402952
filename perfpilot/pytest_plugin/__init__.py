"""perfpilot's pytest plugin (entry point ``pytest11``): performance checks in a test suite.

Inert unless enabled: without ``--perfpilot`` (or an option that implies it) this module
adds its command-line options, the ``perf_budget`` marker's description and the
``perfpilot_measure`` fixture, and nothing else runs: no per-test hook is registered and
no other perfpilot module is imported. Enabled, it registers
:class:`perfpilot.pytest_plugin.session.PerfpilotSession`, which holds every hook.

    pytest --perfpilot                                   # per-test telemetry and a summary
    pytest --perfpilot --perfpilot-save                  # store a baseline for this machine
    pytest --perfpilot --perfpilot-compare               # judge against it; fail on regressions
    pytest --perfpilot --perfpilot-compare-fail="wall:10%,peak_rss:20%"
    pytest --perfpilot --perfpilot-json out.json --perfpilot-html report.html
    pytest --perfpilot-suggest --perfpilot-backend openai   # LLM proposals for the worst regressions

Defaults can also live in ``[tool.perfpilot.pytest]`` (keys ``rounds``, ``max_time``,
``keep``, ``compare_fail``, ``dir``, ``slowest``, ``suggest_max``, ``suggest_profile``, ``remeasure``); command-line
options win. ``--perfpilot-suggest`` is described in :mod:`perfpilot.pytest_plugin.suggest`.

The package, one module per part (all but this one imported only when enabled):

- ``session``: :class:`PerfpilotSession`, every pytest hook, xdist merging
- ``measure``: the ``perfpilot_measure`` fixture over :mod:`perfpilot.profilers.block`
- ``budgets``: ``perf_budget`` markers and ``--perfpilot-compare-fail`` thresholds
- ``baseline``: the per-machine baseline store under ``.perfpilot/``
- ``compare``: findings against the baseline, judged by :mod:`perfpilot.profilers.stats`
- ``drift``, ``settle``: wall/cpu verdicts with the session's speed divided out, suspects re-measured
- ``report``: per-test records, the JSON document and the terminal summary
- ``suggest``: ``--perfpilot-suggest``, the proposer asked about the worst regressions
- ``html``: ``--perfpilot-html``, the page drawn from the JSON document
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

MARKER_HELP = ("perf_budget(wall=..., cpu=..., peak_rss=..., io=..., energy=..., gpu_memory=...): "
               "performance limits checked with --perfpilot, e.g. perf_budget(wall='200 ms', peak_rss='50 MB')")
CONFIG_KEYS = {"rounds", "max_time", "keep", "compare_fail", "dir", "slowest", "suggest_max", "suggest_profile",
               "remeasure"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("perfpilot", "perfpilot performance checks")
    group.addoption("--perfpilot", action="store_true", default=False,
                    help="measure every test (wall, cpu incl. subprocesses, peak memory, io, energy, gpu memory)")
    group.addoption("--perfpilot-save", action="store_true", default=False,
                    help="save this run as the baseline for this machine under .perfpilot/ (implies --perfpilot)")
    group.addoption("--perfpilot-compare", action="store_true", default=False,
                    help="judge each test against this machine's latest baseline; significant regressions fail")
    group.addoption("--perfpilot-compare-fail", metavar="SPEC", default=None,
                    help="metrics and thresholds that fail when significantly worse, e.g. 'wall:10%%,peak_rss:20%%' "
                         "(default wall:10%%; implies --perfpilot-compare)")
    group.addoption("--perfpilot-require-baseline", action="store_true", default=False,
                    help="with --perfpilot-compare: fail the session (exit 1) when there is no baseline to compare "
                         "with, instead of passing with a warning")
    group.addoption("--perfpilot-remeasure", metavar="N", type=int, default=None,
                    help="with --perfpilot-compare on wall/cpu: tests that look regressed once the session's speed "
                         "is divided out are run again at the end of the session, at most N of them, worst first; "
                         "they fail only if still regressed (default 10; 0: fail on the first measurement)")
    group.addoption("--perfpilot-baseline", metavar="PATH", default=None,
                    help="compare with this baseline file instead of the machine's latest")
    group.addoption("--perfpilot-dir", metavar="DIR", default=None,
                    help="where baselines live (default: <rootdir>/.perfpilot)")
    group.addoption("--perfpilot-keep", metavar="N", type=int, default=None,
                    help="baselines kept per machine when saving (default 10; older ones are deleted)")
    group.addoption("--perfpilot-rounds", metavar="N", type=int, default=None,
                    help="calls per passing test function (default 1; 5 when saving or comparing)")
    group.addoption("--perfpilot-max-time", metavar="SECONDS", type=float, default=None,
                    help="time allowed per test for extra rounds (default 2)")
    group.addoption("--perfpilot-instructions", action="store_true", default=False,
                    help="count each test's call-phase instructions (hardware counters, else the session reruns "
                         "under valgrind): deterministic figures for shared CI runners, compared with "
                         "instructions:2%% by default (implies --perfpilot)")
    group.addoption("--perfpilot-json", metavar="PATH", default=None, help="write the measurements as JSON")
    group.addoption("--perfpilot-html", metavar="PATH", default=None, help="write an HTML report with plots")
    group.addoption("--perfpilot-slowest", metavar="N", type=int, default=None,
                    help="slowest tests listed in the terminal summary (default 10; 0 for none)")
    group.addoption("--perfpilot-suggest", action="store_true", default=False,
                    help="ask the optimiser's LLM proposer about the worst significant regressions and print its "
                         "proposals (never applied; implies --perfpilot-compare)")
    group.addoption("--perfpilot-suggest-max", metavar="N", type=int, default=None,
                    help="regressed tests sent to the proposer, worst first (default 3)")
    group.addoption("--perfpilot-backend", metavar="NAME", default=None,
                    help="LLM backend for --perfpilot-suggest: openai or mock (default: backend in [tool.perfpilot])")
    group.addoption("--perfpilot-model", metavar="NAME", default=None,
                    help="model for --perfpilot-suggest's backend (default: model in [tool.perfpilot], else gpt-4.1)")
    group.addoption("--perfpilot-base-url", metavar="URL", default=None,
                    help="OpenAI-compatible endpoint for --perfpilot-suggest, e.g. http://127.0.0.1:8000/v1")
    group.addoption("--perfpilot-mock-replies", metavar="PATH", default=None,
                    help="JSON list of scripted replies for --perfpilot-backend mock")


def _enabled(config: pytest.Config) -> bool:
    get = config.getoption
    return bool(get("perfpilot") or get("perfpilot_save") or get("perfpilot_compare")
                or get("perfpilot_compare_fail") or get("perfpilot_baseline") or get("perfpilot_json")
                or get("perfpilot_html") or get("perfpilot_suggest") or get("perfpilot_instructions"))


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("perfpilot_instructions", False):
        return None
    from perfpilot.pytest_plugin.instructions import relaunch

    return relaunch(config)  # without hardware counters: the whole session again, under valgrind


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    if not _enabled(config):
        return
    from perfpilot.errors import PerfpilotError

    try:
        options = _options(config)
    except PerfpilotError as exc:
        raise pytest.UsageError(f"perfpilot: {exc}") from None
    from perfpilot.pytest_plugin import instructions
    from perfpilot.pytest_plugin.compare import DEFAULT_THRESHOLDS
    from perfpilot.pytest_plugin.session import PLUGIN_NAME, PerfpilotSession, XdistMerge

    counts = instructions.counting(config)
    if counts is not None:
        options = instructions.adjust_options(options, counts, spec_given=options.thresholds != DEFAULT_THRESHOLDS)
    session = PerfpilotSession(config, options)
    if counts is not None:
        session.counting = counts
        session.notes.append(counts.note())
    if options.suggest and not hasattr(config, "workerinput"):
        # Built before any test runs, so a missing backend or key costs nothing but a line.
        from perfpilot.pytest_plugin.suggest import Suggester

        get = config.getoption
        try:
            session.suggester = Suggester.from_options(
                config.rootpath, invocation_dir=config.invocation_params.dir, backend=get("perfpilot_backend"),
                model=get("perfpilot_model"), base_url=get("perfpilot_base_url"),
                mock_replies=get("perfpilot_mock_replies"))
        except PerfpilotError as exc:
            raise pytest.UsageError(f"perfpilot: {exc}") from None
    config.pluginmanager.register(session, PLUGIN_NAME)
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(XdistMerge(session), f"{PLUGIN_NAME}-xdist")


def _options(config: pytest.Config) -> Any:
    from perfpilot.config import load_settings
    from perfpilot.pytest_plugin.baseline import DEFAULT_KEEP
    from perfpilot.pytest_plugin.budgets import BudgetError, parse_thresholds
    from perfpilot.pytest_plugin.compare import DEFAULT_THRESHOLDS
    from perfpilot.pytest_plugin.drift import MAX_REMEASURE
    from perfpilot.pytest_plugin.session import SUGGEST_MAX, SUGGEST_PROFILE_S, Options
    from perfpilot.units import parse_duration

    settings = load_settings(cwd=config.rootpath)
    table = dict(settings.pytest)
    unknown = set(table) - CONFIG_KEYS
    if unknown:
        raise BudgetError(f"[tool.perfpilot.pytest]: unknown keys {sorted(unknown)}",
                          hint=f"known keys: {', '.join(sorted(CONFIG_KEYS))}")

    def pick(option: str, key: str, default: Any) -> Any:
        value = config.getoption(option)
        if value is not None:
            return value
        return table.get(key, default)

    spec = pick("perfpilot_compare_fail", "compare_fail", None)
    baseline = config.getoption("perfpilot_baseline")
    suggest = bool(config.getoption("perfpilot_suggest"))
    compare = bool(config.getoption("perfpilot_compare") or config.getoption("perfpilot_compare_fail") or baseline
                   or suggest)
    save = bool(config.getoption("perfpilot_save"))
    rounds = int(pick("perfpilot_rounds", "rounds", 5 if (save or compare) else 1))
    if rounds < 1:
        raise BudgetError(f"--perfpilot-rounds must be at least 1, got {rounds}")
    keep = int(pick("perfpilot_keep", "keep", DEFAULT_KEEP))
    if keep < 1:
        raise BudgetError(f"--perfpilot-keep must be at least 1, got {keep}")
    folder = pick("perfpilot_dir", "dir", None)
    suggest_max = int(pick("perfpilot_suggest_max", "suggest_max", SUGGEST_MAX))
    if suggest_max < 1:
        raise BudgetError(f"--perfpilot-suggest-max must be at least 1, got {suggest_max}")
    remeasure = int(pick("perfpilot_remeasure", "remeasure", MAX_REMEASURE))
    if remeasure < 0:
        raise BudgetError(f"--perfpilot-remeasure must be 0 or more, got {remeasure}")
    suggest_profile = table.get("suggest_profile", SUGGEST_PROFILE_S)
    # 0 turns py-spy profiling of regressed tests off (their source is sent instead)
    suggest_profile = 0.0 if suggest_profile in (0, "0", False) else parse_duration(
        suggest_profile, name="[tool.perfpilot.pytest] suggest_profile")
    return Options(
        save=save,
        compare=compare,
        thresholds=parse_thresholds(spec) if spec else dict(DEFAULT_THRESHOLDS),
        baseline_path=Path(baseline).resolve() if baseline else None,
        folder=Path(folder).resolve() if folder else config.rootpath / ".perfpilot",
        keep=keep,
        rounds=rounds,
        max_time=parse_duration(pick("perfpilot_max_time", "max_time", 2.0), name="--perfpilot-max-time"),
        json_path=Path(config.getoption("perfpilot_json")).resolve() if config.getoption("perfpilot_json") else None,
        html_path=Path(config.getoption("perfpilot_html")).resolve() if config.getoption("perfpilot_html") else None,
        slowest=int(pick("perfpilot_slowest", "slowest", 10)),
        cpu_tdp_w=settings.cpu_tdp_w,
        suggest=suggest,
        suggest_max=suggest_max,
        suggest_profile=suggest_profile,
        require_baseline=bool(config.getoption("perfpilot_require_baseline")),
        remeasure=remeasure,
    )


@pytest.fixture
def perfpilot_measure(request: pytest.FixtureRequest) -> Any:
    """Measure a callable over calibrated rounds: ``dist = perfpilot_measure(fn, *args)``.

    Returns a :class:`perfpilot.profilers.block.Distribution` (``wall``/``cpu`` per call for
    each round, ``median``, ``result``). ``perfpilot_measure.measure(fn, args=..., name=...,
    rounds=...)`` sets the rounds; ``with perfpilot_measure.block() as b:`` measures a block once.
    """
    from perfpilot.pytest_plugin.measure import PerfpilotMeasure

    return PerfpilotMeasure(request.node.nodeid, request.config.pluginmanager.get_plugin("perfpilot-session"))
