"""The pytest hooks that do the work; registered by :mod:`perfpilot.pytest_plugin` only
when perfpilot is enabled, so a run without ``--perfpilot`` never calls any of them.

Measurement: the *call* phase of each test (not its fixtures' setup/teardown), in the
pytest process, through :class:`perfpilot.profilers.block.BlockMeter`. With
``--perfpilot-rounds N`` (5 by default when saving or comparing) a passing plain test
function is called N times with the same fixture values; extra rounds stop after
``--perfpilot-max-time`` seconds, and stay within half of a pytest-timeout limit (the
limit covers the whole test, rounds included). A round that raises ends the rounds and
is noted; the test's outcome is always that of its first, real call.

pytest-xdist: each worker measures the tests it runs (decided: measure, not disable),
and sends its records to the controller, which writes the baseline and the reports.
Timings then include the contention of workers sharing cores; a baseline records its
worker count and a comparison across different counts is flagged.

``--perfpilot-suggest`` (:mod:`perfpilot.pytest_plugin.suggest`): a regressed test's hot spots are
taken in the call hook, right after its comparison (its fixtures are still set up), and
travel with its record (also from xdist workers); the controller asks the proposer at
session finish, before the JSON report is written.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator

import pytest

from perfpilot.profilers.block import BlockMeter
from perfpilot.pytest_plugin.baseline import Baseline, BaselineError, BaselineStore, load, make_meta
from perfpilot.pytest_plugin.budgets import MARKER, Budget, BudgetError, budget_from_marker, merge_budgets
from perfpilot.pytest_plugin.compare import compare_record
from perfpilot.pytest_plugin.report import TestRecord, build_document, check_budget, terminal_lines

if TYPE_CHECKING:  # the proposer's modules load only with --perfpilot-suggest
    from perfpilot.pytest_plugin.suggest import Suggester

PLUGIN_NAME = "perfpilot-session"
WORKER_KEY = "perfpilot"
BUDGET_KEY = pytest.StashKey[Budget | None]()


# --perfpilot-suggest's defaults (README, [tool.perfpilot.pytest] suggest_max / suggest_profile)
SUGGEST_MAX = 3  # regressed tests sent to the proposer, worst first
SUGGEST_PROFILE_S = 1.0  # py-spy seconds per regressed test
PROFILE_CAP_FACTOR = 3  # at most this many times suggest_max tests are profiled per process


@dataclass
class Options:
    save: bool
    compare: bool
    thresholds: dict[str, float]
    baseline_path: Path | None
    folder: Path
    keep: int
    rounds: int
    max_time: float
    json_path: Path | None
    html_path: Path | None
    slowest: int
    cpu_tdp_w: float | None
    suggest: bool = False
    suggest_max: int = SUGGEST_MAX
    suggest_profile: float = SUGGEST_PROFILE_S  # seconds of py-spy per regressed test; 0: send its source only
    require_baseline: bool = False  # comparing without a baseline fails the session
    remeasure: int = 10  # suspects re-run at the end of the session (drift.MAX_REMEASURE)


def budget_for(item: pytest.Item) -> Budget | None:
    """The test's merged budget (cached on the item); raises BudgetError for a bad marker."""
    if BUDGET_KEY in item.stash:
        return item.stash[BUDGET_KEY]
    budgets = []
    for mark in item.iter_markers(MARKER):
        try:
            budgets.append(budget_from_marker(mark.args, mark.kwargs))
        except BudgetError as exc:
            raise BudgetError(f"{item.nodeid}: @pytest.mark.{MARKER}: {exc}") from None
    budget = merge_budgets(budgets)
    item.stash[BUDGET_KEY] = budget
    return budget


def _timeout_of(item: pytest.Item) -> float | None:
    """pytest-timeout's limit for this test, when that plugin is active."""
    marker = item.get_closest_marker("timeout")
    values: list[Any] = []
    if marker is not None:
        values.append(marker.kwargs.get("timeout", marker.args[0] if marker.args else None))
    values.append(getattr(item.config.option, "timeout", None))
    for value in values:
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _energy_estimate(cpu_tdp_w: float | None) -> tuple[float, str] | None:
    """The power collector's basis for CPU energy estimates, so both agree."""
    from perfpilot.profilers.hardware import estimate_note

    return estimate_note(cpu_tdp_w)


def _outcome_of(exc: BaseException) -> str:
    if isinstance(exc, pytest.skip.Exception):
        return "skipped"
    if isinstance(exc, pytest.xfail.Exception):
        return "xfailed"
    return "failed"


def _repeatable(item: pytest.Item) -> bool:
    # unittest and doctest items run setUp/tearDown or whole documents in runtest(); a
    # plain test function's runtest() is just the call, with fixtures already set up.
    return type(item) is pytest.Function


class PerfpilotSession:
    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        self.meter = BlockMeter(cpu_tdp_w=options.cpu_tdp_w, estimate=_energy_estimate(options.cpu_tdp_w))
        self.records: dict[str, TestRecord] = {}
        self.worker_id = str(config.workerinput["workerid"]) if hasattr(config, "workerinput") else ""
        self.worker_count = int(config.workerinput.get("workercount", 1)) if self.worker_id else 0
        self.baseline: Baseline | None = None
        self.baseline_missing = ""
        self.notes: list[str] = []
        self.saved: str | None = None
        self._host: dict[str, Any] | None = None
        self._current: TestRecord | None = None
        self.suggester: Suggester | None = None  # set by the plugin (controller only)
        self._profiled: list[float] = []  # worst ratios of the regressed tests profiled so far
        self.counting: Any = None  # perfpilot.pytest_plugin.instructions.Counting, with --perfpilot-instructions
        # wall/cpu judged after the main loop with the session's factor divided out (settle.py)
        self.settle_metrics: tuple[str, ...] = ()
        self.settled: dict[str, Any] | None = None
        self.remeasuring: dict[str, TestRecord] | None = None  # suspects' re-runs, while settle.py runs them

    # ---------------------------------------------------------------- session

    @property
    def is_controller(self) -> bool:
        """True in the process that writes reports: a plain run, or xdist's controller."""
        return not self.worker_id

    def xdist_workers(self) -> int:
        if self.worker_id:
            return self.worker_count
        numprocesses = getattr(self.config.option, "numprocesses", None)
        dist = getattr(self.config.option, "dist", "no")
        if numprocesses and dist != "no":
            return int(numprocesses) if isinstance(numprocesses, int) else (os.cpu_count() or 1)
        return 0

    def host(self) -> dict[str, Any]:
        if self._host is None:
            from perfpilot.profilers.host import host_info

            self._host = host_info()
        return self._host

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if not self.options.compare:
            return
        try:
            if self.options.baseline_path is not None:
                self.baseline = load(self.options.baseline_path)
                if self.baseline.meta.get("machine_id") != self.host()["machine_id"]:
                    self.baseline.warnings.append("this baseline was recorded on another machine")
            else:
                store = BaselineStore(self.options.folder, self.host()["machine_id"])
                self.baseline = store.latest(self.host()["python"])
                if self.baseline is None:
                    self.baseline_missing = (f"no baseline for this machine under {store.folder}; "
                                             "run with --perfpilot-save first (nothing was compared)")
        except BaselineError as exc:
            raise pytest.UsageError(f"perfpilot: {exc}") from None
        if self.baseline is not None:
            workers = self.baseline.meta.get("xdist_workers", 0)
            if workers != self.xdist_workers():
                self.baseline.warnings.append(
                    f"baseline ran with {workers or 'no'} xdist workers, this run with {self.xdist_workers() or 'none'}:"
                    " contention differs, so timings may shift")

    # ------------------------------------------------------------- collection

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Any:
        # Once per module/class (not per name in it): a bad marker turns the collector's
        # report into a collection error that names the test and the value.
        report = yield
        if report.passed:
            for node in report.result:
                if isinstance(node, pytest.Item):
                    try:
                        budget_for(node)
                    except BudgetError as exc:
                        report.outcome = "failed"
                        report.longrepr = str(exc)
                        report.result = []
                        break
        return report

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        from perfpilot.pytest_plugin.settle import metrics_to_settle

        self.settle_metrics, why = metrics_to_settle(self, session.items)
        if why:
            self.notes.append(why)

    # ---------------------------------------------------------------- running

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, Any, Any]:
        result = yield
        if self.settle_metrics and self.baseline is not None:
            from perfpilot.pytest_plugin.settle import settle

            settle(self, session)
        return result

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        if self.remeasuring is not None:
            return (yield from self._remeasure(item))
        try:
            budget = budget_for(item)
        except BudgetError as exc:  # a marker added after collection
            pytest.fail(str(exc), pytrace=False)
        record = TestRecord(item.nodeid, worker=self.worker_id)
        if budget is not None:
            record.budget = dict(budget.spec)
        self.records[item.nodeid] = record
        self._current = record
        counting = self.counting
        # Under valgrind only the count means anything (time, memory and io are valgrind's),
        # and the meter's own code would be re-translated after every test: it stays off.
        meter = None if counting is not None and counting.under_valgrind else self.meter
        start = meter.start() if meter is not None else None
        if counting is not None:
            counting.start()  # last, so that only the call itself is counted
        try:
            result = yield
        except BaseException as exc:
            if counting is not None:
                counting.stop(record)
            if meter is not None:
                self._record(record, meter.stop(start))
            self._current = None
            record.outcome = _outcome_of(exc)
            raise
        if counting is not None:
            counting.stop(record)
        if meter is not None:
            self._record(record, meter.stop(start))
        try:
            self._extra_rounds(item, record)
            if budget is not None:
                check_budget(record, dict(budget.limits))
            self._compare(record)
        finally:
            self._current = None
        if self.options.suggest:
            self._hotspots(item, record)
        if record.failures:
            record.outcome = "failed"
            # Raised here, the test fails like any other: -x, --lf, junitxml and xdist see it.
            pytest.fail("\n".join(record.failures), pytrace=False)
        record.outcome = "passed"
        return result

    def _remeasure(self, item: pytest.Item) -> Generator[None, Any, Any]:
        """A suspect's re-run at the end of the session: measured like its first call, never judged here."""
        assert self.remeasuring is not None
        record = self.remeasuring[item.nodeid] = TestRecord(item.nodeid, worker=self.worker_id)
        start = self.meter.start()
        try:
            result = yield
        except BaseException as exc:
            self.meter.stop(start)
            record.outcome = _outcome_of(exc)
            raise
        self._record(record, self.meter.stop(start))
        self._extra_rounds(item, record)
        record.outcome = "passed"
        return result

    def _record(self, record: TestRecord, sample: Any) -> None:
        record.add(sample.metrics() if self.counting is None else self.counting.keep(sample.metrics()))
        record.energy_source = sample.energy_source
        if not record.energy_note and sample.energy:
            record.energy_note = "; ".join(e.get("note", "") for e in sample.energy.values())
        record.peak_rss_exact = record.peak_rss_exact and sample.peak_rss_exact

    def _extra_rounds(self, item: pytest.Item, record: TestRecord) -> None:
        wanted = self.options.rounds - 1
        if wanted <= 0 or record.measure or not _repeatable(item):
            return
        allowance = self.options.max_time
        timeout = _timeout_of(item)
        if timeout is not None:
            allowance = min(allowance, timeout / 2 - sum(record.rounds.get("wall", [])))
        spent = 0.0
        for index in range(wanted):
            last = record.rounds["wall"][-1]
            if spent + last > allowance:
                record.notes.append(f"{len(record.rounds['wall'])} rounds: the next would pass the "
                                    f"{allowance:.2f} s allowance for extra rounds")
                break
            t0 = time.perf_counter()
            start = self.meter.start()
            try:
                item.runtest()
            except Exception as exc:  # noqa: BLE001 - the real call passed; a repeat that fails only ends the rounds
                self.meter.stop(start)
                record.notes.append(f"round {index + 2} raised {type(exc).__name__}: {exc}; rounds stopped "
                                    "(is the test idempotent?)")
                break
            self._record(record, self.meter.stop(start))
            spent += time.perf_counter() - t0

    def _compare(self, record: TestRecord) -> None:
        if self.baseline is None:
            return
        base = self.baseline.tests.get(record.nodeid)
        if base is None:
            return
        for finding in compare_record(record.nodeid, base, record.baseline_entry(), self.options.thresholds):
            record.findings.append(finding.to_dict())
            if finding.kind == "regression" and finding.metric in self.settle_metrics and not finding.subject:
                record.findings[-1]["provisional"] = True  # decided after the main loop (settle.py)
            elif finding.kind == "regression":
                record.failures.append(
                    f"perfpilot: significant regression vs baseline ({self.baseline.describe()}): "
                    f"{finding.describe()}" + (f" [{finding.subject}]" if finding.subject else ""))

    def _hotspots(self, item: pytest.Item, record: TestRecord) -> None:
        """For --perfpilot-suggest: what the proposer will be shown about a regressed test.
        Done here, while its fixtures are still set up, so the test can be called again."""
        from perfpilot.pytest_plugin import suggest

        finding = suggest.worst_finding(record)
        if finding is None:
            return
        function = getattr(item, "function", None)
        try:
            if self._should_profile(item, finding, function):
                ratio = float((finding.get("verdict") or {}).get("ratio") or 0.0)
                self._profiled.append(ratio)
                profiled = self._profile(item, record, function)
                if profiled.hotspots:
                    record.hotspots = suggest.with_test_first(function, profiled.hotspots)
                    record.hotspots_from, record.hotspots_note = "py-spy", profiled.note
                    return
                record.hotspots_note = f"not profiled ({profiled.note}): the test's source"
            elif not record.hotspots_note:
                record.hotspots_note = self._why_not_profiled(item, function)
            if function is not None:
                record.hotspots = suggest.static_hotspots(function, self.config.rootpath)
                record.hotspots_from = "source"
        except Exception as exc:  # noqa: BLE001 - suggestions are optional; never change a test's outcome
            record.hotspots_note = f"no hot spots: {type(exc).__name__}: {exc}"

    def _should_profile(self, item: pytest.Item, finding: dict[str, Any], function: Any) -> bool:
        if self.options.suggest_profile <= 0 or function is None or not _repeatable(item):
            return False
        limit = self.options.suggest_max
        if len(self._profiled) >= limit * PROFILE_CAP_FACTOR:
            return False
        ratio = float((finding.get("verdict") or {}).get("ratio") or 0.0)
        # Only a regression among the worst seen so far can be among those sent.
        return len(self._profiled) < limit or ratio > sorted(self._profiled, reverse=True)[limit - 1]

    def _why_not_profiled(self, item: pytest.Item, function: Any) -> str:
        if self.options.suggest_profile <= 0:
            return "not profiled (suggest_profile = 0): the test's source"
        if function is None or not _repeatable(item):
            return "not profiled (not a plain test function): the test's source"
        return "not profiled (not among the worst regressions when it ran): the test's source"

    def _profile(self, item: pytest.Item, record: TestRecord, function: Any) -> Any:
        from perfpilot.pytest_plugin.suggest import Profiled, profile_rounds

        seconds = self.options.suggest_profile
        timeout = _timeout_of(item)
        if timeout is not None:
            # pytest-timeout's limit covers the whole test, measured rounds included
            left = timeout / 2 - sum(record.rounds.get("wall", []))
            last = (record.rounds.get("wall") or [0.0])[-1]
            if left < last:
                return Profiled(note=f"another round would pass half the {timeout:g} s pytest-timeout limit")
            seconds = min(seconds, left - last)
        return profile_rounds(item.runtest, function=function.__code__.co_name, file=function.__code__.co_filename,
                              seconds=seconds, project=self.config.rootpath)

    def add_measure(self, nodeid: str, data: dict[str, Any]) -> None:
        """Called by the ``perfpilot_measure`` fixture with a distribution's ``to_dict()``."""
        record = self._current if self._current is not None and self._current.nodeid == nodeid else None
        if record is None:
            return
        name = data.get("name") or f"measure{len(record.measure) + 1 if record.measure else ''}"
        record.measure[name] = data

    # ----------------------------------------------------------- xdist merge

    def merge_worker(self, payload: str) -> None:
        for data in json.loads(payload):
            record = TestRecord.from_dict(data)
            self.records[record.nodeid] = record

    # ----------------------------------------------------------------- finish

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.is_controller:
            self.config.workeroutput[WORKER_KEY] = json.dumps([r.to_dict() for r in self.records.values()])
            return
        if self.xdist_workers():
            self.notes.append(f"measured per xdist worker ({self.xdist_workers()} workers): timings include "
                              "contention between workers")
            if self.baseline is not None and any(m in self.options.thresholds for m in ("wall", "cpu")):
                self.notes.append("under pytest-xdist each test's timing is judged alone (the session factor is "
                                  "not divided out, suspects are not re-measured)")
        if self.baseline_missing:
            self.notes.append(self.baseline_missing)
            if self.options.require_baseline and session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        rounds_of = [len(r.rounds.get("wall", [])) for r in self.records.values() if r.rounds.get("wall")]
        if self.options.save:
            self._save()
        self.document = self._document(rounds_of)
        if self.options.suggest:
            self.document["suggestions"] = self._suggest()
        if self.options.json_path is not None:
            self.options.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.options.json_path.write_text(json.dumps(self.document, indent=1, allow_nan=False) + "\n",
                                              encoding="utf-8")
        if self.options.html_path is not None:
            from perfpilot.pytest_plugin.html import render

            self.options.html_path.parent.mkdir(parents=True, exist_ok=True)
            self.options.html_path.write_text(render(self.document), encoding="utf-8")

    def _suggest(self) -> dict[str, Any]:
        """Ask the proposer about the worst regressions; never raises (the tests decide the outcome)."""
        if self.suggester is None:
            return {"backend": "?", "applied": False, "requests": [], "error": "no backend was configured"}
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")

        def announce(count: int) -> None:
            if reporter is not None:
                if getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
                    reporter.write("\n")  # after the progress dots of -q
                reporter.write_line(f"perfpilot: asking {self.suggester.description} about the worst {count} "
                                    "regression(s)...")

        try:
            section = self.suggester.ask(self.records.values(), limit=self.options.suggest_max, on_request=announce)
        except Exception as exc:  # noqa: BLE001 - a suggestion must never change the session's outcome
            return {"backend": self.suggester.description, "applied": False, "requests": [],
                    "error": f"suggestions failed: {type(exc).__name__}: {exc}"}
        if not section["requests"] and self.baseline_missing:
            section["note"] = "no baseline to compare with: nothing was asked"
        return section

    def _meta(self) -> dict[str, Any]:
        return make_meta(machine_id=self.host()["machine_id"], rootdir=self.config.rootpath,
                         rounds=self.options.rounds, xdist_workers=self.xdist_workers(), host=self.host())

    def _save(self) -> None:
        passed = {nodeid: r.baseline_entry() for nodeid, r in self.records.items()
                  if r.outcome == "passed" and (r.rounds.get("wall") or r.rounds.get("instructions"))}
        if not passed:
            self.notes.append("no passing measured tests: no baseline saved")
            return
        store = BaselineStore(self.options.folder, self.host()["machine_id"])
        path = store.save(self._meta(), passed, keep=self.options.keep)
        try:
            self.saved = str(path.relative_to(self.config.rootpath))
        except ValueError:
            self.saved = str(path)

    def _document(self, rounds_of: list[int]) -> dict[str, Any]:
        meta = self._meta()
        meta["rounds"] = int(statistics.median(rounds_of)) if rounds_of else self.options.rounds
        meta["measuring"] = self.meter.capabilities()
        meta["notes"] = self.notes
        meta["thresholds"] = self.options.thresholds if self.options.compare else {}
        baseline = None
        if self.baseline is not None:
            from perfpilot.pytest_plugin import drift

            meta["session_factor"] = drift.factors(self.baseline.tests, self.records.values())
            if self.settled is not None:
                meta["drift"] = self.settled
            line = drift.note(meta["session_factor"], divided=bool(self.settled and self.settled["applied"]))
            if line and line not in self.notes:
                self.notes.append(line)
            baseline = {"path": str(self.baseline.path) if self.baseline.path else None, "meta": self.baseline.meta,
                        "warnings": self.baseline.warnings,
                        "missing": sum(1 for n in self.records if n not in self.baseline.tests)}
        findings = [f for r in self.records.values() for f in r.findings]
        return build_document(meta=meta, records=self.records.values(), findings=findings, baseline=baseline,
                              saved=self.saved)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        document = getattr(self, "document", None)
        if document is None:
            return
        terminalreporter.write_sep("=", "perfpilot")
        if self.baseline_missing:  # a CI job must not pass silently believing it was compared
            fails = "the session fails (--perfpilot-require-baseline)" if self.options.require_baseline else \
                "pass --perfpilot-require-baseline to fail instead"
            terminalreporter.write_line(f"perfpilot: NOT COMPARED: {self.baseline_missing}; {fails}",
                                        red=True, bold=True)
        lines = terminal_lines(document, slowest=self.options.slowest)
        if "suggestions" in document:
            from perfpilot.pytest_plugin.suggest import terminal_lines as suggestion_lines

            lines += suggestion_lines(document["suggestions"])
        for text, markup in lines:
            terminalreporter.write_line(text, **markup)
        for path in (self.options.json_path, self.options.html_path):
            if path is not None:
                terminalreporter.write_line(f"perfpilot report written: {path}")


class XdistMerge:
    """xdist's controller collects what each worker measured (only registered with xdist)."""

    def __init__(self, session: PerfpilotSession) -> None:
        self.session = session

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        payload = getattr(node, "workeroutput", {}).get(WORKER_KEY)
        if payload:
            self.session.merge_worker(payload)
