"""The optimiser loop: baseline → context → proposals → validate → apply in isolation →
tests → (output check) → verify → accept or reject → … → result.

Everything that takes time is a seam: ``verify`` (the verdict engine by default),
``progress`` (the terminal display), the proposer (any plugin). The user's tree is
never touched here; :mod:`perfpilot.agent.workspace` holds the copies.

A proposal is accepted only when the objective's verdict says *improved* (better
beyond the threshold, with confidence) and no guard is violated (see
:mod:`perfpilot.agent.acceptance`).
"""

from __future__ import annotations

import ast
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from perfpilot.agent import config_files
from perfpilot.agent.backends.errors import BackendError, BackendExhausted
from perfpilot.agent.acceptance import decide, parse_guards
from perfpilot.agent.context import Context
from perfpilot.agent.gate import (GateResult, SeedSource, TestRun, failed_tests, flaky_summary, has_pytest_randomly,
                                  randomly_refused, run_gate, run_test_command, with_order_seed)
from perfpilot.agent.knobs import Knob, parse_knobs
from perfpilot.agent.outcomes import Outcome
from perfpilot.agent.output_check import OutputCheck, first_variation, parse_output_check, stdout_of
from perfpilot.agent.proposals import Proposal
from perfpilot.agent.sandbox import Sandbox
from perfpilot.agent.secrets import Masker
from perfpilot.agent.verification import RunSpec, Verifier, engine_verifier
from perfpilot.agent.workspace import Candidate, DidNotApply, Refused, State, Workspace
from perfpilot.config import Settings
from perfpilot.errors import ConfigError, PerfpilotError
from perfpilot.profilers.profile import Profile

TEST_TIMEOUT_FLOOR_S = 60.0
TEST_TIMEOUT_FACTOR = 5.0
BASELINE_RUNS = 3
CONTEXT_MIN_SAMPLES = 20  # fewer stack samples than this in the context profile: profile again
CONTEXT_ATTEMPTS = 3  # at most, keeping the run with the most samples
OUTPUT_TAIL = 3000


class BaselineTestsFailed(PerfpilotError):
    """The project's tests fail on the unchanged project: nothing can be verified."""


class BaselineTestsFlaky(PerfpilotError):
    """The project's tests pass on some hash seeds and fail on others, unchanged."""


class BaselineRunFailed(PerfpilotError):
    """The run command fails on the unchanged project."""


class Progress(Protocol):
    def stage(self, text: str) -> None: ...
    def run_done(self, side: str, index: int, profile: Profile) -> None: ...
    def outcome(self, outcome: Outcome, objective: str) -> None: ...
    def output(self, title: str, text: str) -> None: ...


class QuietProgress:
    def stage(self, text: str) -> None:
        pass

    def run_done(self, side: str, index: int, profile: Profile) -> None:
        pass

    def outcome(self, outcome: Outcome, objective: str) -> None:
        pass

    def output(self, title: str, text: str) -> None:
        pass


@dataclass
class Baseline:
    profile: Profile  # with stacks, for the context
    values: list[float]  # the objective over repeated runs
    metrics: dict[str, float]  # median of each judged metric
    tests_s: float | None
    tests: list[dict[str, Any]] = field(default_factory=list)  # each baseline test run: seed, passed, seconds


@dataclass
class Result:
    settings: Settings
    project: Path
    started_at: float
    objective: str
    guards: dict[str, float]
    baseline: Baseline | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    cumulative: dict[str, Any] | None = None
    patch: str = ""
    stop_reason: str = ""
    interrupted: bool = False
    error: str | None = None
    duration_s: float = 0.0
    proposer: str = ""
    notes: list[str] = field(default_factory=list)
    final_state: State = field(default_factory=State)
    workspace_dirs: list[str] = field(default_factory=list)  # to show profile paths relative to the project
    final_tests: list[dict[str, Any]] = field(default_factory=list)  # the combined result's re-test, fresh seeds
    output_check: str = ""  # what the output check did (auto decides at the baseline)
    masker: Masker | None = field(default=None, repr=False)  # the session's secrets, for the report

    @property
    def accepted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.accepted]

    @property
    def verification_runs(self) -> int:
        return sum(o.measured_runs or 2 * o.runs for o in self.outcomes)


def _tail(text: str, limit: int = OUTPUT_TAIL) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


def _python_equivalent(before: str, after: str) -> bool:
    try:
        return ast.dump(ast.parse(before)) == ast.dump(ast.parse(after))
    except (SyntaxError, ValueError):
        return False


class Optimizer:
    """One optimisation session over one project."""

    def __init__(self, settings: Settings, project: Path, proposer: Any, *, verify: Verifier | None = None,
                 progress: Progress | None = None, plugin_set: Any = None, proposer_name: str = "") -> None:
        if not settings.run:
            raise ConfigError("no run command to optimise",
                              hint='pass --run "python bench.py" or set run = "..." in [tool.perfpilot]')
        from perfpilot.profilers.metrics import check_metric_names

        self.settings = settings
        self.project = Path(project).resolve()
        self.proposer = proposer
        self.progress = progress or QuietProgress()
        self.objective = settings.objective
        from perfpilot.profilers.instructions import default_guards

        self.guards = parse_guards(default_guards(settings.objective, settings.guards))  # instructions: + wall
        check_metric_names([self.objective, *self.guards])
        self.metrics = [self.objective, *[g for g in self.guards if g != self.objective]]
        self.knobs: dict[str, Knob] = parse_knobs(settings.knobs)
        self.output_check: OutputCheck = parse_output_check(settings.output_check)
        if settings.budget < 1:
            raise ConfigError(f"budget must be at least 1 proposal, got {settings.budget}")
        if settings.runs < 2:
            raise ConfigError(f"runs must be at least 2 per side for a verdict, got {settings.runs}")
        if settings.test_repeats < 1:
            raise ConfigError(f"test_repeats must be at least 1, got {settings.test_repeats}",
                              hint="the default, 3, runs the tests with three different PYTHONHASHSEED values")
        if plugin_set is None:
            from perfpilot.registry import build_plugin_manager

            plugin_set = build_plugin_manager()
        self.plugin_set = plugin_set
        self.verify = verify or engine_verifier(settings, plugin_set, self.progress.run_done)
        self.sandbox = Sandbox.create(settings.sandbox)
        self.run_argv = shlex.split(settings.run)
        self.workspace: Workspace | None = None
        self.result = Result(settings=settings, project=self.project, started_at=time.time(),
                             objective=self.objective, guards=self.guards, proposer=proposer_name,
                             masker=Masker.for_project(self.project))
        if self.sandbox.note:
            self.result.notes.append(self.sandbox.note)
        self._baseline_output: Profile | None = None
        self._context_profile: Profile | None = None
        self._test_timeout = settings.test_timeout
        self.seeds = SeedSource()
        self._order = False  # the test command is pytest with pytest-randomly: vary the order too
        self._last_tests: list[dict[str, Any]] = []

    # ------------------------------------------------------------ commands

    def _argv(self, state: State) -> list[str]:
        assert self.workspace is not None
        return [*self.run_argv, *self.workspace.run_args(state)]

    def _launch(self, state: State, cwd: Path) -> list[str]:
        """The run command as launched: in the sandbox, with only ``cwd`` (its copy) writable."""
        return self.sandbox.wrap(self._argv(state), cwd)

    def _env(self, state: State) -> dict[str, str]:
        assert self.workspace is not None
        return self.workspace.run_env(state)

    def _run_tests(self, cwd: Path, state: State, extra: Mapping[str, str] | None = None) -> tuple[bool, str, float]:
        """(passed, output, seconds) of the test command in ``cwd``."""
        assert self.settings.test
        try:
            argv = shlex.split(self.settings.test)
        except ValueError as exc:
            raise ConfigError(f"test command: {exc}") from None
        env = {**os.environ, **self._env(state), **(extra or {})}
        env.pop("PERFPILOT_METRICS_FILE", None)
        passed, output, seconds = run_test_command(self.sandbox.wrap(argv, cwd), cwd, env, self._test_timeout)
        if not passed:
            output += self.sandbox.explain(output)
        return passed, output, seconds

    def _test_once(self, cwd: Path, state: State, seed: int, order_seed: int | None) -> TestRun:
        env = with_order_seed({**os.environ, **self._env(state)}, order_seed)
        extra = {"PYTHONHASHSEED": str(seed)}
        if "PYTEST_ADDOPTS" in env:
            extra["PYTEST_ADDOPTS"] = env["PYTEST_ADDOPTS"]
        passed, output, seconds = self._run_tests(cwd, state, extra)
        return TestRun(seed, passed, seconds, order_seed, [] if passed else failed_tests(output),
                       "" if passed else _tail(output))

    def _gate(self, cwd: Path, state: State, *, seeds: Sequence[int] | None = None, stop: bool = True) -> GateResult:
        """The tests, once per hash seed (fresh seeds unless given); see :mod:`perfpilot.agent.gate`."""
        chosen = list(seeds) if seeds is not None else self.seeds.draw(self.settings.test_repeats)
        return run_gate(lambda seed, order: self._test_once(cwd, state, seed, order), chosen, order=self._order,
                        stop_on_failure=stop)

    def _profile(self, state: State, cwd: Path, *, stacks: bool) -> Profile:
        from perfpilot.profilers.instructions import measured_run
        from perfpilot.profilers.session import RunOptions, profile_command

        options = RunOptions(env=self._env(state), cwd=str(cwd), capture_output=True, stdin_devnull=True,
                             plugin_set=self.plugin_set)
        timed = lambda: profile_command(self._launch(state, cwd), self.settings.replace(stacks=stacks), options)  # noqa: E731
        if stacks:
            return timed()  # the context profile: stacks, not counts
        # Counting runs go inside the sandbox too (measured_run finds the launcher in the argv).
        return measured_run(self.metrics, self._launch(state, cwd), env=self._env(state), cwd=str(cwd),
                            capture_output=True, timed=timed)

    # ------------------------------------------------------------ baseline

    def _baseline(self) -> Baseline:
        from perfpilot.profilers.metrics import metric_value

        ws = self.workspace
        assert ws is not None
        tests_s = None
        tests: list[TestRun] = []
        if self.settings.test:
            tests = self._baseline_tests()
            tests_s = max(r.seconds for r in tests)
        profile = self._context_run()
        self._baseline_output = profile
        self._context_profile = profile
        values: list[float] = []
        outputs = [stdout_of(profile)]
        medians: dict[str, list[float]] = {m: [] for m in self.metrics}
        runs = max(2, min(BASELINE_RUNS, self.settings.runs))
        for index in range(1, runs + 1):
            self.progress.stage(f"baseline: measuring {self.objective} ({index}/{runs})")
            run = self._profile(ws.state, ws.base, stacks=False)
            if run.exit_code:
                raise BaselineRunFailed(f"the run command exited with {run.exit_code} on a repeated baseline run",
                                        hint="the command is flaky; make it deterministic first")
            outputs.append(stdout_of(run))
            for metric in self.metrics:
                medians[metric].append(metric_value(run, metric))  # MetricUnavailable: a clear error
        values = medians[self.objective]
        self._settle_output_check(outputs)
        import statistics

        return Baseline(profile=profile, values=values,
                        metrics={m: statistics.median(v) for m, v in medians.items()}, tests_s=tests_s,
                        tests=[r.to_dict() for r in tests])

    def _context_run(self) -> Profile:
        """The baseline's profile with stacks, for the proposer's context. A short run can end
        before py-spy takes many samples (a 0.13 s bench on a loaded machine: none), which
        would leave the proposer without hot spots; then it is profiled again, at most
        :data:`CONTEXT_ATTEMPTS` times, and the run with the most samples is kept."""
        ws = self.workspace
        assert ws is not None
        best: Profile | None = None
        for attempt in range(1, CONTEXT_ATTEMPTS + 1):
            self.progress.stage("baseline: profiling the run command with stacks"
                                + (f" (again: {attempt}/{CONTEXT_ATTEMPTS}, too few samples)" if attempt > 1 else ""))
            profile = self._profile(ws.state, ws.base, stacks=self.settings.stacks)
            if profile.exit_code or profile.target.get("signal") or profile.target.get("timed_out"):
                stderr = profile.output[1].decode("utf-8", "replace") if profile.output else ""
                self.progress.output("run output (unchanged project)", _tail(stderr))
                how = "timed out" if profile.target.get("timed_out") else f"exited with {profile.exit_code}"
                raise BaselineRunFailed(f"the run command {how} on the unchanged project: {self.settings.run}",
                                        hint="make it succeed on its own first (its stderr is shown above)")
            samples = (profile.stacks or {}).get("samples", 0)
            if best is None or samples > (best.stacks or {}).get("samples", 0):
                best = profile
            if not self.settings.stacks or samples >= CONTEXT_MIN_SAMPLES:
                break
        assert best is not None
        return best

    def _baseline_tests(self) -> list[TestRun]:
        """The unchanged project's tests, ``test_repeats`` times: failing, flaky or good."""
        ws = self.workspace
        assert ws is not None and self.settings.test
        try:
            argv = shlex.split(self.settings.test)
        except ValueError as exc:
            raise ConfigError(f"test command: {exc}") from None
        self._order = has_pytest_randomly(argv, ws.base, {**os.environ, **self._env(ws.state)})
        repeats = self.settings.test_repeats
        self.progress.stage(f"baseline: running the tests on the unchanged project ({repeats} hash seeds"
                            + (", random test order)" if self._order else ")"))
        gate = self._gate(ws.base, ws.state, stop=False)
        if self._order and any(randomly_refused(r.output) for r in gate.runs if not r.passed):
            self._order = False  # the project turns pytest-randomly off (-p no:randomly): keep its order
            gate = self._gate(ws.base, ws.state, stop=False)
        if self._test_timeout is None:
            self._test_timeout = max(TEST_TIMEOUT_FLOOR_S, TEST_TIMEOUT_FACTOR * max(r.seconds for r in gate.runs))
        bad = gate.first_failure
        if bad is not None:
            self.progress.output(f"test output (unchanged project, {bad.describe()})", bad.output)
        if not any(r.passed for r in gate.runs):
            raise BaselineTestsFailed("the tests fail on the unchanged project, so no change could be verified",
                                      hint=f"fix them first; test command: {self.settings.test}")
        if bad is not None:
            raise BaselineTestsFlaky(
                f"the tests are flaky on the unchanged project: {flaky_summary(gate)}",
                hint=f"make that test deterministic or leave it out of the test command; reproduce: "
                     f"{bad.reproduce(self.settings.test)}")
        return gate.runs

    def _settle_output_check(self, outputs: list[str]) -> None:
        """``auto``: compare stdout only when the unchanged program's is deterministic."""
        check = self.output_check
        if check.mode != "auto":
            self.result.output_check = check.describe()
            return
        varies = first_variation(outputs)
        if varies is None:
            self.result.output_check = f"stdout identical (the baseline printed the same over {len(outputs)} runs)"
            return
        self.output_check = parse_output_check("ignore")
        self.result.output_check = "off: the baseline's stdout varies between runs"
        self.result.notes.append(f"output not compared: the unchanged program's stdout varies between runs ({varies}); "
                                 'set output_check = "command:<your check>" to judge it your way')

    # ------------------------------------------------------------ one proposal

    def _is_semantic_noop(self, candidate: Candidate) -> bool:
        """Only comments/formatting changed in Python files, and nothing else."""
        ws = self.workspace
        assert ws is not None
        if candidate.state.env != ws.state.env or candidate.state.knobs != ws.state.knobs:
            return False
        if not candidate.changed_files:
            return True
        for rel in candidate.changed_files:
            if not rel.endswith(".py"):
                return False
            path = ws.candidate_dir / rel
            before = ws.base / rel
            if not path.is_file() or not before.is_file():
                return False
            if not _python_equivalent(before.read_text(encoding="utf-8", errors="replace"),
                                      path.read_text(encoding="utf-8", errors="replace")):
                return False
        return True

    def evaluate(self, proposal: Proposal, index: int) -> Outcome:
        ws = self.workspace
        assert ws is not None
        t0 = time.monotonic()
        self._last_tests = []
        try:
            outcome = self._evaluate(proposal, index)
        except (OSError, ValueError, UnicodeError) as exc:
            # What a candidate makes the OS refuse (an argument or env value it cannot take) ends
            # that candidate, not the run.
            ws.reject()
            outcome = Outcome(index, proposal, "rejected", "error", f"{type(exc).__name__}: {exc}",
                              diff=proposal.diff or "")
        outcome.duration_s = time.monotonic() - t0
        outcome.tests = self._last_tests
        return outcome

    def _evaluate(self, proposal: Proposal, index: int) -> Outcome:
        ws = self.workspace
        assert ws is not None and self.result.baseline is not None
        title = proposal.describe()
        if proposal.kind == "invalid":
            return Outcome(index, proposal, "malformed", "malformed reply", "; ".join(proposal.problems),
                           raw_reply=proposal.raw)
        self.progress.stage(f"#{index} {title}: applying in the workspace")
        try:
            candidate = ws.prepare(proposal)
        except Refused as exc:
            return Outcome(index, proposal, "refused", "refused", str(exc), diff=proposal.diff or "")
        except DidNotApply as exc:
            return Outcome(index, proposal, "rejected", "did not apply", self._did_not_apply(exc, proposal),
                           diff=proposal.diff or "")
        try:
            if ws.is_noop(candidate) or self._is_semantic_noop(candidate):
                ws.reject()
                return Outcome(index, proposal, "rejected", "no change",
                               "the change leaves the program as it was (no file, setting or environment differs, "
                               "or only comments/formatting do); nothing to measure", diff=candidate.diff)
            if self.settings.test:
                repeats = self.settings.test_repeats
                self.progress.stage(f"#{index} {title}: running the tests ({repeats} hash seeds)")
                gate = self._gate(ws.candidate_dir, candidate.state)
                self._last_tests = [r.to_dict() for r in gate.runs]
                if not gate.passed:
                    ws.reject()
                    return Outcome(index, proposal, "rejected", "tests failed",
                                   gate.failure_detail(self.settings.test, repeats), diff=candidate.diff)
            if self.output_check.enabled:
                self.progress.stage(f"#{index} {title}: checking the output")
                run = self._profile(candidate.state, ws.candidate_dir, stacks=False)
                if run.exit_code or run.target.get("signal"):
                    stderr = run.output[1].decode("utf-8", "replace") if run.output else ""
                    ws.reject()
                    return Outcome(index, proposal, "rejected", "run failed",
                                   f"exit {run.exit_code}: {_tail(stderr, 1500)}{self.sandbox.explain(stderr)}",
                                   diff=candidate.diff)
                assert self._baseline_output is not None
                why = self.output_check.compare(self._baseline_output, run, cwd=ws.base)
                if why:
                    ws.reject()
                    return Outcome(index, proposal, "rejected", "output changed", why, diff=candidate.diff)
            self.progress.stage(f"#{index} {title}: verifying (interleaved runs)")
            base = RunSpec(self._launch(ws.state, ws.base), self._env(ws.state), ws.base, "baseline")
            cand = RunSpec(self._launch(candidate.state, ws.candidate_dir), self._env(candidate.state),
                           ws.candidate_dir, "candidate")
            try:
                verification = self.verify(base, cand, self.metrics, self.objective)
            except PerfpilotError as exc:
                ws.reject()
                return Outcome(index, proposal, "rejected", "run failed", str(exc), diff=candidate.diff)
            outcome = decide(self.objective, self.guards, proposal, index, verification, candidate)
            if outcome.status == "accepted":
                ws.accept(candidate, f"perfpilot #{index}: {title}")
                self.result.final_state = ws.state.copy()
                self._refresh_context_profile()
            else:
                ws.reject()
            return outcome
        except BaseException:
            ws.reject()
            raise

    def _did_not_apply(self, exc: DidNotApply, proposal: Proposal) -> str:
        """Say what the patch was applied to: the accepted changes, and whether the original takes it."""
        ws = self.workspace
        assert ws is not None
        accepted = self.result.accepted
        if not accepted:
            return f"{exc} (applied to the project as it is, no change accepted yet)"
        names = ", ".join(f"#{o.index} {o.title()}" for o in accepted)
        onto = f"applied on top of the {len(accepted)} change(s) already accepted ({names})"
        try:
            original = ws.applies_to_origin(proposal)
        except PerfpilotError:
            original = None
        if original is True:
            return f"{exc}; {onto}; it does apply to the original project, so it conflicts with those changes"
        if original is False:
            return f"{exc}; {onto}; it does not apply to the original project either"
        return f"{exc}; {onto}"

    def _refresh_context_profile(self) -> None:
        """Re-profile the new baseline with stacks so the next context shows its hot spots."""
        ws = self.workspace
        assert ws is not None
        self.progress.stage("re-profiling the new baseline")
        try:
            profile = self._profile(ws.state, ws.base, stacks=self.settings.stacks)
        except PerfpilotError:
            return
        if not profile.exit_code:
            self._context_profile = profile

    # ------------------------------------------------------------ the loop

    def context(self) -> Context:
        ws = self.workspace
        assert ws is not None and self._context_profile is not None
        files = sorted(ws.tracked) if ws.tracked is not None else _list_files(ws.base)
        return Context.build(
            project=ws.base, profile=self._context_profile, objective=self.objective, guards=self.settings.guards,
            run=shlex.join(self._argv(ws.state)), test=self.settings.test or "", knobs=self.knobs,
            knob_values={**self._knob_defaults(), **ws.state.knobs}, env=ws.state.env, history=self.result.outcomes,
            files=files, budget_tokens=self.settings.context_tokens, masker=self.result.masker,
        )

    def _knob_defaults(self) -> dict[str, Any]:
        ws = self.workspace
        assert ws is not None
        defaults: dict[str, Any] = {}
        for name, knob in self.knobs.items():
            if knob.default is not None:
                defaults[name] = knob.default
            elif knob.kind == "config":
                try:
                    value = config_files.get_value(ws.base / knob.config_file, knob.config_key)
                except (OSError, config_files.ConfigEditError):
                    value = None
                if value is not None:
                    defaults[name] = value
        return defaults

    def _stop_reason(self, proposed: int, failures: int) -> str | None:
        s = self.settings
        if proposed >= s.budget:
            return f"budget spent ({s.budget} proposals)"
        if s.time_budget is not None and time.time() - self.result.started_at >= s.time_budget:
            return f"time budget spent ({s.time_budget:g}s)"
        if failures >= s.max_failures:
            return f"{failures} proposals in a row failed"
        return None

    def run(self) -> Result:
        """Run the whole loop. Ctrl-C ends it early with a partial result (``interrupted``)."""
        result = self.result
        try:
            self.progress.stage("setting up the isolated workspace")
            self.workspace = Workspace.create(self.project, protected=self.settings.protected, knobs=self.knobs,
                                              commands=[self.settings.run, self.settings.test,
                                                        self.output_check.command or None])
            result.workspace_dirs = [str(self.workspace.base), str(self.workspace.candidate_dir)]
            result.baseline = self._baseline()
            for step in (self._loop, self._final_retest, self._cumulative):
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - what was won is kept; the error is reported
                    if not result.outcomes:
                        raise
                    self._stopped_early(exc, step.__name__)
                    if step is self._loop:
                        continue  # still re-test what was accepted before the patch is written
                    break
        except KeyboardInterrupt:
            result.interrupted = True
            result.stop_reason = "interrupted (Ctrl-C)"
            if result.accepted and not result.final_tests and self.settings.test:
                result.notes.append("interrupted before the accepted changes were re-tested together: "
                                    "run the tests on perfpilot.patch before using it")
        finally:
            try:
                if self.workspace is not None:
                    result.patch = self.workspace.combined_diff()
                    result.final_state = self.workspace.state.copy()
            except (PerfpilotError, OSError):
                pass
            if self.workspace is not None:
                self.workspace.cleanup()
            result.duration_s = time.time() - result.started_at
        return result

    def _stopped_early(self, exc: Exception, step: str) -> None:
        result = self.result
        text = " ".join(str(exc).split()) if isinstance(exc, PerfpilotError) else f"{type(exc).__name__}: {exc}"
        text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate must not break the report
        result.error = text if len(text) <= 500 else text[:499] + "…"
        result.stop_reason = f"stopped early: {result.error}"
        if step == "_final_retest":
            result.notes.append("stopped while re-testing the accepted changes together: run the tests on "
                                "perfpilot.patch before using it")
        elif step != "_loop":
            result.notes.append(f"stopped during {step.strip('_').replace('_', ' ')}; what was accepted before is kept")

    def _final_retest(self) -> None:
        """All accepted changes together, tested once more with fresh seeds before the patch.

        When they fail, the latest accepted changes are dropped (newest first) until the
        tests pass again, with the seed that failed and fresh ones; a change accepted on
        top of a wrong one was measured on top of it, so it goes too.
        """
        result = self.result
        ws = self.workspace
        accepted = result.accepted
        if not accepted or not self.settings.test or ws is None:
            return
        self.progress.stage(f"re-testing the {len(accepted)} accepted change(s) together with fresh hash seeds")
        gate = self._gate(ws.base, ws.state)
        result.final_tests = [r.to_dict() for r in gate.runs]
        if gate.passed:
            return
        failures = [gate.failure_detail(self.settings.test, self.settings.test_repeats)]
        bad = gate.first_failure
        assert bad is not None
        keep = len(accepted) - 1
        while keep > 0:
            ws.rollback(keep)
            check = self._gate(ws.base, ws.state, seeds=[bad.seed, *self.seeds.draw(self.settings.test_repeats)])
            result.final_tests += [r.to_dict() for r in check.runs]
            if check.passed:
                break
            failures.append(check.failure_detail(self.settings.test, len(check.runs)))
            keep -= 1
        ws.rollback(keep)
        for outcome in accepted[keep:]:
            outcome.status, outcome.reason = "rejected", "tests failed"
            outcome.detail = f"dropped at the final re-test of the accepted changes together: {failures[0]}"
        result.final_state = ws.state.copy()
        result.notes.append(f"the final re-test failed ({bad.describe()}): dropped {len(accepted) - keep} accepted "
                            f"change(s), #{', #'.join(str(o.index) for o in accepted[keep:])}")

    def _loop(self) -> None:
        result = self.result
        queue: list[Proposal] = []
        failures = 0
        proposed = 0
        while True:
            reason = self._stop_reason(proposed, failures)
            if reason:
                result.stop_reason = reason
                return
            if not queue:
                self.progress.stage(f"asking the {result.proposer or 'proposer'} for proposals")
                try:
                    queue = list(self.proposer.propose(self.context()))
                except BackendExhausted as exc:
                    result.stop_reason = f"the proposer has nothing more ({exc.message})"
                    return
                except BackendError as exc:
                    if proposed == 0:
                        raise
                    result.error = " ".join(str(exc).split())
                    result.stop_reason = f"the backend failed: {result.error}"
                    return
                for note in getattr(self.proposer, "notes", [])[len(result.notes):]:
                    result.notes.append(note)
                if not queue:
                    result.stop_reason = "the proposer has no more proposals"
                    return
            proposal = queue.pop(0)
            proposed += 1
            outcome = self.evaluate(proposal, proposed)
            result.outcomes.append(outcome)
            self.progress.outcome(outcome, self.objective)
            try:
                self.proposer.feedback(proposal, outcome)
            except Exception as exc:  # noqa: BLE001 - a proposer's bookkeeping must not end the run
                result.notes.append(f"proposer feedback failed: {exc}")
            # A screening trial that loses is the knob search doing its job, not a failing
            # proposer: counting it would end the search before later knobs were ever tried.
            if outcome.improved:
                failures = 0
            elif not (proposal.trial and outcome.status == "rejected"):
                failures += 1

    def _cumulative(self) -> None:
        """The accepted changes together against the original: one ratio with its CI."""
        result = self.result
        accepted = result.accepted
        if not accepted:
            return
        if len(accepted) == 1:
            only = accepted[0]
            result.cumulative = {"verdict": only.verdicts[self.objective], "runs": only.runs, "measured": False,
                                 "values_a": only.values_a, "values_b": only.values_b}
            return
        ws = self.workspace
        assert ws is not None
        self.progress.stage("verifying all accepted changes together against the original")
        origin = RunSpec(self._launch(State(), ws.origin()), self._env(State()), ws.origin(), "original")
        final = RunSpec(self._launch(ws.state, ws.base), self._env(ws.state), ws.base, "optimised")
        try:
            v = self.verify(origin, final, self.metrics, self.objective)
        except PerfpilotError as exc:
            result.notes.append(f"the cumulative verification failed: {exc}")
            return
        result.cumulative = {"verdict": v.verdicts[self.objective], "verdicts": v.verdicts, "runs": v.runs,
                             "measured": True, "values_a": v.values_a, "values_b": v.values_b}


def _list_files(root: Path, limit: int = 500) -> list[str]:
    out = []
    for path in sorted(root.rglob("*")):
        if ".git" in path.parts or "__pycache__" in path.parts or not path.is_file():
            continue
        out.append(path.relative_to(root).as_posix())
        if len(out) >= limit:
            break
    return out
