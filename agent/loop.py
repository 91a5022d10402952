"""The optimiser loop: baseline → context → proposals → validate → apply in isolation →
tests → (output check) → verify → accept or reject → … → result.

Everything that takes time is a seam: ``verify`` (the verdict engine by default),
``progress`` (the terminal display), the proposer (any plugin). The user's tree is
never touched here; :mod:`perfpilot.agent.workspace` holds the copies.

A proposal is accepted only when the objective's verdict says *improved* (better
beyond the threshold, with confidence) and every guard holds: a guard ``peak_rss =
"+10%"`` holds when the candidate's median is at most 10% above the baseline's (the
point estimate: a guard asks "not worse than", and demanding proof of that from a few
runs would reject every change).
"""

from __future__ import annotations

import ast
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from perfpilot.agent import config_files
from perfpilot.agent.backends.errors import BackendError, BackendExhausted
from perfpilot.agent.context import Context
from perfpilot.agent.knobs import Knob, parse_knobs
from perfpilot.agent.outcomes import Outcome
from perfpilot.agent.output_check import OutputCheck, parse_output_check
from perfpilot.agent.proposals import Proposal
from perfpilot.agent.sandbox import Sandbox
from perfpilot.agent.secrets import Masker
from perfpilot.agent.workspace import Candidate, DidNotApply, Refused, State, Workspace
from perfpilot.config import Settings, parse_percent
from perfpilot.errors import ConfigError, PerfpilotError
from perfpilot.profilers.profile import Profile

TEST_TIMEOUT_FLOOR_S = 60.0
TEST_TIMEOUT_FACTOR = 5.0
BASELINE_RUNS = 3
OUTPUT_TAIL = 3000


class BaselineTestsFailed(PerfpilotError):
    """The project's tests fail on the unchanged project: nothing can be verified."""


class BaselineRunFailed(PerfpilotError):
    """The run command fails on the unchanged project."""


@dataclass
class RunSpec:
    """One side of a verification: what to run, where, with which environment."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    label: str


@dataclass
class Verification:
    """What the loop needs from a verification (the engine's Comparison, reduced)."""

    verdicts: dict[str, dict[str, Any]]  # metric -> Verdict.to_dict(), objective first
    runs: int
    values_a: list[float]
    values_b: list[float]
    notes: list[str] = field(default_factory=list)


Verifier = Callable[[RunSpec, RunSpec, Sequence[str], str], Verification]


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
    masker: Masker | None = field(default=None, repr=False)  # the session's secrets, for the report

    @property
    def accepted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.accepted]

    @property
    def verification_runs(self) -> int:
        return sum(2 * o.runs for o in self.outcomes)


def parse_guards(guards: Mapping[str, Any]) -> dict[str, float]:
    """``{"peak_rss": "+10%"}`` -> ``{"peak_rss": 0.10}`` (the allowed relative increase)."""
    out = {}
    for metric, limit in (guards or {}).items():
        text = str(limit).strip()
        if text.startswith("+"):
            text = text[1:]
        if text.startswith("-"):
            raise ConfigError(f"guard {metric} = {limit!r}: a guard is an allowed increase like \"+10%\"",
                              hint="put what must improve in objective, not in guards")
        out[str(metric)] = parse_percent(text, name=f"guard {metric}")
    return out


def engine_verifier(settings: Settings, plugin_set: Any, on_run: Callable[[str, int, Profile], None] | None) -> Verifier:
    """The real verification: :func:`perfpilot.profilers.measure.compare`."""
    from perfpilot.profilers.measure import Arm, compare
    from perfpilot.profilers.metrics import metric_value

    def verify(a: RunSpec, b: RunSpec, metrics: Sequence[str], primary: str) -> Verification:
        comparison = compare(
            Arm(a.argv, env=a.env, cwd=str(a.cwd), label=a.label), Arm(b.argv, env=b.env, cwd=str(b.cwd), label=b.label),
            metrics=list(metrics), primary=primary, settings=settings, max_runs=settings.runs,
            min_runs=min(settings.min_runs, settings.runs), threshold=settings.threshold,
            confidence=settings.confidence, on_run=on_run, capture_output=True, plugin_set=plugin_set)
        verdicts = {primary: comparison.verdicts[primary].to_dict()}
        verdicts.update({m: v.to_dict() for m, v in comparison.verdicts.items() if m != primary})
        return Verification(verdicts=verdicts, runs=comparison.runs,
                            values_a=[metric_value(p, primary) for p in comparison.a],
                            values_b=[metric_value(p, primary) for p in comparison.b], notes=list(comparison.notes))

    return verify


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
        self.guards = parse_guards(settings.guards)
        check_metric_names([self.objective, *self.guards])
        self.metrics = [self.objective, *[g for g in self.guards if g != self.objective]]
        self.knobs: dict[str, Knob] = parse_knobs(settings.knobs)
        self.output_check: OutputCheck = parse_output_check(settings.output_check)
        if settings.budget < 1:
            raise ConfigError(f"budget must be at least 1 proposal, got {settings.budget}")
        if settings.runs < 2:
            raise ConfigError(f"runs must be at least 2 per side for a verdict, got {settings.runs}")
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

    def _run_tests(self, cwd: Path, state: State) -> tuple[bool, str, float]:
        """(passed, output, seconds) of the test command in ``cwd``."""
        assert self.settings.test
        try:
            argv = shlex.split(self.settings.test)
        except ValueError as exc:
            raise ConfigError(f"test command: {exc}") from None
        env = {**os.environ, **self._env(state)}
        env.pop("PERFPILOT_METRICS_FILE", None)
        timeout = self._test_timeout
        t0 = time.monotonic()
        try:
            # Its own process group: on a timeout (or Ctrl-C) the whole tree goes, not just the
            # test runner; a hung child left running would skew every later measurement.
            proc = subprocess.Popen(self.sandbox.wrap(argv, cwd), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE,
                                    text=True, errors="replace", stdin=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            raise ConfigError(f"test command not found: {argv[0]}", hint="check `test` (is it on PATH?)") from None
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            stdout, stderr = _drain(proc)
            return False, (f"{stdout}{stderr}\n(the tests did not finish within {timeout:.0f}s; "
                           "they and every process they started were stopped)"), time.monotonic() - t0
        except BaseException:
            _kill_group(proc.pid)
            _drain(proc)
            raise
        _kill_group(proc.pid)  # whatever the tests left running in the background
        output = (stdout or "") + (stderr or "")
        if proc.returncode != 0:
            output += self.sandbox.explain(output)
        return proc.returncode == 0, output, time.monotonic() - t0

    def _profile(self, state: State, cwd: Path, *, stacks: bool) -> Profile:
        from perfpilot.profilers.session import RunOptions, profile_command

        options = RunOptions(env=self._env(state), cwd=str(cwd), capture_output=True, stdin_devnull=True,
                             plugin_set=self.plugin_set)
        return profile_command(self._launch(state, cwd), self.settings.replace(stacks=stacks), options)

    # ------------------------------------------------------------ baseline

    def _baseline(self) -> Baseline:
        from perfpilot.profilers.metrics import metric_value

        ws = self.workspace
        assert ws is not None
        tests_s = None
        if self.settings.test:
            self.progress.stage("baseline: running the tests on the unchanged project")
            passed, output, tests_s = self._run_tests(ws.base, ws.state)
            if not passed:
                self.progress.output("test output (unchanged project)", _tail(output))
                raise BaselineTestsFailed("the tests fail on the unchanged project, so no change could be verified",
                                  hint=f"fix them first; test command: {self.settings.test}")
            if self._test_timeout is None:
                self._test_timeout = max(TEST_TIMEOUT_FLOOR_S, TEST_TIMEOUT_FACTOR * tests_s)
        self.progress.stage("baseline: profiling the run command with stacks")
        profile = self._profile(ws.state, ws.base, stacks=self.settings.stacks)
        if profile.exit_code or profile.target.get("signal") or profile.target.get("timed_out"):
            stderr = profile.output[1].decode("utf-8", "replace") if profile.output else ""
            self.progress.output("run output (unchanged project)", _tail(stderr))
            how = "timed out" if profile.target.get("timed_out") else f"exited with {profile.exit_code}"
            raise BaselineRunFailed(f"the run command {how} on the unchanged project: {self.settings.run}",
                                    hint="make it succeed on its own first (its stderr is shown above)")
        self._baseline_output = profile
        self._context_profile = profile
        values: list[float] = []
        medians: dict[str, list[float]] = {m: [] for m in self.metrics}
        runs = max(2, min(BASELINE_RUNS, self.settings.runs))
        for index in range(1, runs + 1):
            self.progress.stage(f"baseline: measuring {self.objective} ({index}/{runs})")
            run = self._profile(ws.state, ws.base, stacks=False)
            if run.exit_code:
                raise BaselineRunFailed(f"the run command exited with {run.exit_code} on a repeated baseline run",
                                        hint="the command is flaky; make it deterministic first")
            for metric in self.metrics:
                medians[metric].append(metric_value(run, metric))  # MetricUnavailable: a clear error
        values = medians[self.objective]
        import statistics

        return Baseline(profile=profile, values=values,
                        metrics={m: statistics.median(v) for m, v in medians.items()}, tests_s=tests_s)

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
        outcome = self._evaluate(proposal, index)
        outcome.duration_s = time.monotonic() - t0
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
            return Outcome(index, proposal, "rejected", "did not apply", str(exc), diff=proposal.diff or "")
        try:
            if ws.is_noop(candidate) or self._is_semantic_noop(candidate):
                ws.reject()
                return Outcome(index, proposal, "rejected", "no change",
                               "the change leaves the program as it was (no file, setting or environment differs, "
                               "or only comments/formatting do); nothing to measure", diff=candidate.diff)
            if self.settings.test:
                self.progress.stage(f"#{index} {title}: running the tests")
                passed, output, _ = self._run_tests(ws.candidate_dir, candidate.state)
                if not passed:
                    ws.reject()
                    return Outcome(index, proposal, "rejected", "tests failed", _tail(output), diff=candidate.diff)
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
                why = self.output_check.compare(self._baseline_output, run)
                if why:
                    ws.reject()
                    return Outcome(index, proposal, "rejected", "output differs", why, diff=candidate.diff)
            self.progress.stage(f"#{index} {title}: verifying (interleaved runs)")
            base = RunSpec(self._launch(ws.state, ws.base), self._env(ws.state), ws.base, "baseline")
            cand = RunSpec(self._launch(candidate.state, ws.candidate_dir), self._env(candidate.state),
                           ws.candidate_dir, "candidate")
            try:
                verification = self.verify(base, cand, self.metrics, self.objective)
            except PerfpilotError as exc:
                ws.reject()
                return Outcome(index, proposal, "rejected", "run failed", str(exc), diff=candidate.diff)
            outcome = self._decide(proposal, index, verification, candidate)
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

    def _decide(self, proposal: Proposal, index: int, v: Verification, candidate: Candidate) -> Outcome:
        objective = v.verdicts[self.objective]
        common = dict(verdicts=v.verdicts, runs=v.runs, values_a=v.values_a, values_b=v.values_b,
                      diff=candidate.diff)
        notes = "; ".join([*(objective.get("notes") or []), *v.notes])
        if not objective.get("improved"):
            word = objective.get("verdict", "inconclusive")
            reason = {"faster": "inconclusive", "smaller": "inconclusive"}.get(word, word)
            detail = (f"{self.objective}: {word}, ratio {objective['ratio']:.3f} "
                      f"(CI {objective['ci_low']:.3f}–{objective['ci_high']:.3f}, threshold ±{objective['threshold']:.1%})")
            return Outcome(index, proposal, "rejected", reason, detail + (f"; {notes}" if notes else ""), **common)
        for metric, limit in self.guards.items():
            guard = v.verdicts.get(metric)
            if guard is None:
                continue
            if guard["ratio"] > 1 + limit:
                return Outcome(index, proposal, "rejected", "guard violated",
                               f"{metric} ratio {guard['ratio']:.3f} exceeds the allowed +{limit:.0%}", **common)
        detail = (f"{self.objective} ratio {objective['ratio']:.3f} "
                  f"(CI {objective['ci_low']:.3f}–{objective['ci_high']:.3f}, p={objective['p_value']:.2g})")
        status = "winner" if proposal.trial else "accepted"
        return Outcome(index, proposal, status, "improved", detail, **common)

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
                                              commands=[self.settings.run, self.settings.test])
            result.workspace_dirs = [str(self.workspace.base), str(self.workspace.candidate_dir)]
            result.baseline = self._baseline()
            self._loop()
            self._cumulative()
        except KeyboardInterrupt:
            result.interrupted = True
            result.stop_reason = "interrupted (Ctrl-C)"
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
                    result.error = str(exc)
                    result.stop_reason = f"the backend failed: {exc}"
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


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _drain(proc: subprocess.Popen) -> tuple[str, str]:
    """What a killed process wrote; gives up on pipes that a process which left the group holds."""
    try:
        stdout, stderr = proc.communicate(timeout=5)
        return stdout or "", stderr or ""
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        return "", ""


def _list_files(root: Path, limit: int = 500) -> list[str]:
    out = []
    for path in sorted(root.rglob("*")):
        if ".git" in path.parts or "__pycache__" in path.parts or not path.is_file():
            continue
        out.append(path.relative_to(root).as_posix())
        if len(out) >= limit:
            break
    return out
