"""Repeated measurement: run A and B in fresh processes and judge them with statistics.

:func:`compare` is what ``perfpilot compare``, the optimiser's verification and the pytest
plugin call. Protocol: one plugin manager for every run (building one per run costs
time), Python stacks off (py-spy would perturb what is measured), ``warmup`` discarded
runs per side (page cache, bytecode cache, CPU frequency), then interleaved pairs
A B A B ... so that slow drifts of the machine land on both sides alike. After each
planned look (:class:`~perfpilot.profilers.stats.StoppingPlan`) the primary metric is
judged; a clear verdict stops the runs early, an unclear one keeps them going up to
``max_runs``. The false-win rate stays at most ``1 - confidence`` despite the peeking
(alpha split across the planned looks, a weighted Bonferroni; see
:mod:`perfpilot.profilers.stats`). Options the optimiser uses: stopping for futility
(``stop_for_futility``: B cannot be better by the threshold) and reusing the unchanged
baseline's runs (``reuse_a``, checked for drift by fresh anchor runs: see
:class:`InterleavedRuns`). A near-deterministic primary metric (instructions) gets an
extra look at 3 runs per side.

A run that exits non-zero ends the comparison with :class:`RunFailed`: timing a crash
against a success is meaningless, and a flaky command is the user's first problem.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from perfpilot.config import Settings
from perfpilot.errors import ConfigError, PerfpilotError
from perfpilot.profilers.metrics import (
    MetricUnavailable,
    check_metric_names,
    is_deterministic,
    metric_source,
    metric_value,
)
from perfpilot.profilers.profile import Profile
from perfpilot.profilers.stats import DETERMINISTIC_LOOK, MIXED, StoppingPlan, Verdict, verdict

OnRun = Callable[[str, int, Profile], None]


class RunFailed(PerfpilotError):
    """Some runs exited non-zero; ``failures`` lists (side, run, exit description)."""

    def __init__(self, message: str, *, failures: list[tuple[str, int, str]], profiles: Mapping[str, list[Profile]],
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.failures = failures
        self.profiles = dict(profiles)


class ProfileSetError(PerfpilotError):
    """Saved Profile sets that cannot be compared (empty, mixed commands or machines)."""


@dataclass
class Arm:
    """One side of a comparison: a command and how to launch it."""

    command: str | Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    label: str = ""
    shell: bool = False  # added: run ``command`` (a string) through ``sh -c``

    def argv(self) -> list[str]:
        if self.shell:
            text = self.command if isinstance(self.command, str) else shlex.join(self.command)
            return ["sh", "-c", text]
        if isinstance(self.command, str):
            argv = shlex.split(self.command)
        else:
            argv = [str(part) for part in self.command]
        if not argv or not argv[0]:
            raise ConfigError("an empty command cannot be measured", hint='give one, e.g. "python app.py"')
        return argv

    def display(self) -> str:
        if self.label:
            return self.label
        return self.command if isinstance(self.command, str) else shlex.join(self.command)


@dataclass
class Comparison:
    a: list[Profile]
    b: list[Profile]
    verdicts: dict[str, Verdict]
    runs: int
    stopped_early: bool
    primary: str
    # Added to the contract: enough context to render and audit the result.
    labels: tuple[str, str] = ("A", "B")
    plan: StoppingPlan | None = None
    looks_taken: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))  # files, for saved sets
    stop_reason: str = ""  # clear, futility or max runs ("" for saved sets: one look)
    reused_a: int = 0  # A's runs taken from an earlier comparison (CompareOptions.reuse_a)

    @property
    def primary_verdict(self) -> Verdict:
        return self.verdicts[self.primary]

    def to_dict(self) -> dict[str, Any]:
        def side(label: str, profiles: list[Profile], names: Sequence[str]) -> dict[str, Any]:
            runs = []
            for index, profile in enumerate(profiles):
                values = {}
                for metric in self.verdicts:
                    try:
                        values[metric] = metric_value(profile, metric)
                    except MetricUnavailable:
                        values[metric] = None
                entry: dict[str, Any] = {"exit_code": profile.exit_code, "values": values}
                if index < len(names):
                    entry["file"] = names[index]
                runs.append(entry)
            command = profiles[0].target.get("command") if profiles else None
            return {"label": label, "command": command, "runs": runs}

        return {
            "primary": self.primary,
            "runs": self.runs,
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "reused_a": self.reused_a,
            "stopping": None if self.plan is None else {
                "looks": list(self.plan.looks), "looks_taken": list(self.looks_taken),
                "confidence": self.plan.confidence,
                "per_look_confidence": {str(n): self.plan.confidence_at(n) for n in self.plan.looks},
                "rule": self.plan.describe(),
            },
            "a": side(self.labels[0], self.a, self.sources[0]),
            "b": side(self.labels[1], self.b, self.sources[1]),
            "verdicts": {name: v.to_dict() for name, v in self.verdicts.items()},
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------ helpers


def parse_cpus(spec: str | Sequence[int] | None) -> list[int] | None:
    """``"0"``, ``"0,2"``, ``"0-3"`` -> CPU numbers this process may use, or an error."""
    if spec is None:
        return None
    cpus: set[int] = set()
    if isinstance(spec, str):
        try:
            for part in spec.split(","):
                part = part.strip()
                if "-" in part:
                    low, high = (int(x) for x in part.split("-", 1))
                    cpus.update(range(low, high + 1))
                elif part:
                    cpus.add(int(part))
        except ValueError:
            raise ConfigError(f"--cpus: expected CPU numbers like 0 or 0,1 or 0-3, got {spec!r}") from None
    else:
        cpus = {int(c) for c in spec}
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if not cpus:
        raise ConfigError(f"--cpus: no CPU given in {spec!r}")
    bad = sorted(cpus - allowed)
    if bad:
        raise ConfigError(f"--cpus: CPU {', '.join(map(str, bad))} is not available here",
                          hint=f"this process may use CPUs {', '.join(map(str, sorted(allowed)))}")
    return sorted(cpus)


_AFFINITY_SHIM = "import os,sys; os.sched_setaffinity(0, {%s}); os.execvp(sys.argv[1], sys.argv[1:])"


def pinned(argv: list[str], cpus: Sequence[int] | None) -> list[str]:
    """``argv`` run on ``cpus`` only. The wrapper execs, so the pid (and wait4) is the target's."""
    if not cpus:
        return argv
    if shutil.which("taskset"):
        return ["taskset", "-c", ",".join(map(str, cpus)), *argv]
    return [sys.executable, "-c", _AFFINITY_SHIM % ",".join(map(str, cpus)), *argv]


def _describe_exit(profile: Profile) -> str:
    target = profile.target
    if target.get("timed_out"):
        return "timed out"
    if target.get("signal"):
        return f"was killed by signal {target['signal']}"
    return f"exited with {target.get('exit_code')}"


def _failed(profile: Profile) -> bool:
    return bool(profile.exit_code) or bool(profile.target.get("signal")) or bool(profile.target.get("timed_out"))


def _last_stderr_line(profile: Profile) -> str | None:
    if profile.output is None:
        return None
    lines = [ln.strip() for ln in profile.output[1].decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:160] if lines else None


def _failure_message(failures: list[tuple[str, int, str]], total: int, first: Profile | None) -> str:
    named = ", ".join(f"{side} run {'warm-up' if n == 0 else n} {why}" for side, n, why in failures)
    message = f"{len(failures)} of {total} runs failed ({named}); refusing to judge runs that failed"
    line = _last_stderr_line(first) if first is not None else None
    if line:
        message += f"; last stderr line: {line!r}"
    return message


def _load_note(before: float, after: float) -> str | None:
    cores = os.cpu_count() or 1
    load = max(before, after)
    if load > cores * 0.9:
        return (f"the machine was busy (load average {load:.1f} on {cores} CPUs) while measuring: "
                "close other load or pin with --cpus for steadier figures")
    return None


def _values(profiles: Sequence[Profile], metric: str) -> list[float]:
    return [metric_value(p, metric) for p in profiles]


def _source(profiles: Sequence[Profile], metric: str) -> str:
    """The runs' common source; ``estimate`` if any is one; ``mixed: ...`` when they differ."""
    sources = sorted({metric_source(p, metric) for p in profiles})
    if "estimate" in sources:
        return "estimate"
    if len(sources) > 1:
        return MIXED + ", ".join(sources)
    return sources[0] if sources else "measured"


def _verdicts(a: Sequence[Profile], b: Sequence[Profile], metrics: Sequence[str], *, threshold: float | None,
              confidence: float) -> dict[str, Verdict]:
    out = {}
    for metric in metrics:
        both = [*a, *b]
        out[metric] = verdict(_values(a, metric), _values(b, metric), metric=metric, threshold=threshold,
                              confidence=confidence, source=_source(both, metric))
    return out


def _available(profiles: Sequence[Profile], metric: str) -> bool:
    try:
        _values(profiles, metric)
    except MetricUnavailable:
        return False
    return True


# --------------------------------------------------------------------- API


@dataclass
class CompareOptions:
    """How :func:`compare` measures and judges; every field is also a keyword of it.

    ``extra_metrics`` are judged too when every run has them (silently skipped
    otherwise); ``cpus`` pins every run to those CPUs; ``plugin_set`` (required for
    commands) is the caller's :func:`perfpilot.registry.build_plugin_manager` result.
    ``on_run(side, index,
    profile)`` is called after every run: side ``"A"``/``"B"``, index 0 for a warm-up,
    1.. for measured runs. ``stop_for_futility``: stop as soon as B cannot be better by
    the threshold (:class:`~perfpilot.profilers.stats.StoppingPlan`), for a search that
    keeps only improvements. ``reuse_a``: A's measured runs from an earlier comparison
    of the same, unchanged A (see :class:`InterleavedRuns`).
    """

    metrics: Sequence[str] = ("wall",)
    primary: str | None = None
    settings: Settings | None = None
    max_runs: int = 10
    min_runs: int = 5
    warmup: int = 1
    threshold: float | None = None
    confidence: float = 0.95
    on_run: OnRun | None = None
    capture_output: bool = False
    extra_metrics: Sequence[str] = ()
    cpus: Sequence[int] | None = None
    plugin_set: Any = None
    stop_for_futility: bool = False
    reuse_a: Sequence[Profile] = ()

    def judged(self) -> tuple[list[str], str, list[str]]:
        """(required metrics with the primary first, primary, optional extras); names checked."""
        metrics = list(dict.fromkeys(self.metrics))
        check_metric_names([*metrics, *self.extra_metrics])
        primary = self.primary or metrics[0]
        check_metric_names([primary])
        if primary not in metrics:
            metrics.insert(0, primary)
        if self.max_runs < 2:
            raise ConfigError(f"need at least 2 runs per side for a verdict, got {self.max_runs}", hint="use --runs 10")
        if self.warmup < 0:
            raise ConfigError(f"warm-up runs cannot be negative, got {self.warmup}")
        return metrics, primary, [m for m in dict.fromkeys(self.extra_metrics) if m not in metrics]

    def plan(self, primary: str) -> StoppingPlan:
        early = DETERMINISTIC_LOOK if is_deterministic(primary) else 0
        return StoppingPlan(min(self.min_runs, self.max_runs), self.max_runs, self.confidence,
                            futility=self.stop_for_futility, deterministic_look=early)


# Fresh A runs made even when A's runs are reused: they check that A still measures the same.
ANCHOR_RUNS = 2


class InterleavedRuns:
    """The run loop of :func:`compare`: warm-ups, then A B A B ..., planned looks, failures.

    **Reusing A's runs** (``options.reuse_a``): the optimiser compares many candidates
    against one unchanged baseline, and measuring A afresh each time doubles the cost.
    Reused runs fill A's side (the latest ``max_runs`` of them); only ``ANCHOR_RUNS``
    fresh A runs are made, interleaved with B's first runs, then B runs alone until B
    has as many as A. Reused runs were not interleaved with this B, so a machine that
    drifted since would bias the ratio: if every anchor lies outside the reused runs'
    range on the same side (for unchanged A this happens with probability
    ``2 * 2 / ((r + 1)(r + 2))`` for ``r`` reused runs, 3% at 10: the check then
    costs runs, never correctness), the reused runs are dropped and the comparison goes
    on as a plain interleaved one, with a note. A drift smaller than A's own spread can
    pass the check; reuse is meant for a baseline measured minutes before, on the same
    machine, with the same command (checked against the anchors' recorded command).
    """

    def __init__(self, a: Arm, b: Arm, options: CompareOptions, metrics: Sequence[str], primary: str) -> None:
        self.options, self.metrics, self.primary = options, list(metrics), primary
        self.settings = (options.settings or Settings()).replace(stacks=False)
        self.plugin_set = options.plugin_set
        self.arms = {"A": a, "B": b}
        self.argvs = {side: pinned(arm.argv(), options.cpus) for side, arm in self.arms.items()}
        self.reused = list(options.reuse_a)[-options.max_runs:] if options.reuse_a else []
        self.runs: dict[str, list[Profile]] = {"A": list(self.reused), "B": []}
        self.fresh_a: list[Profile] = []
        self.failures: list[tuple[str, int, str]] = []
        self.first_failed: Profile | None = None
        self.total = 0
        self.notes: list[str] = []

    def run(self, side: str, index: int) -> Profile:
        from perfpilot.profilers.session import RunOptions, profile_command

        arm = self.arms[side]
        options = RunOptions(env=arm.env, cwd=arm.cwd, capture_output=self.options.capture_output,
                             stdin_devnull=True, plugin_set=self.plugin_set)
        profile = profile_command(self.argvs[side], self.settings, options)
        self.total += 1
        if _failed(profile):
            self.failures.append((side, index, _describe_exit(profile)))
            self.first_failed = self.first_failed or profile
        if self.options.on_run is not None:
            self.options.on_run(side, index, profile)
        return profile

    def raise_failures(self) -> None:
        if self.failures:
            raise RunFailed(_failure_message(self.failures, self.total, self.first_failed),
                            failures=list(self.failures), profiles=self.runs,
                            hint="run the failing command alone (perfpilot profile -- ...) to see why")

    def check_metrics(self, profile: Profile, side: str) -> None:
        for metric in self.metrics:
            try:
                metric_value(profile, metric)
            except MetricUnavailable as exc:
                raise MetricUnavailable(f"{side}: {exc.message}", hint=exc.hint) from None

    def warm_up(self) -> None:
        for _ in range(self.options.warmup):
            for side in ("A", "B"):
                profile = self.run(side, 0)
                self.raise_failures()
                self.check_metrics(profile, side)

    def step(self, index: int) -> None:
        """Measured run ``index`` of B, preceded by one of A when A's side needs it."""
        if len(self.runs["A"]) < index or index <= ANCHOR_RUNS:
            profile = self.run("A", len(self.fresh_a) + 1)
            self.fresh_a.append(profile)
            self.runs["A"].append(profile)
        self.runs["B"].append(self.run("B", index))
        self.raise_failures()
        if index == 1:
            self.check_metrics(self.fresh_a[0], "A")
            self.check_metrics(self.runs["B"][0], "B")
            if self.reused:
                self._check_reused()
        if index == ANCHOR_RUNS and self.reused:
            self._drift_check()

    def _check_reused(self) -> None:
        command = self.fresh_a[0].target.get("command")
        for i, profile in enumerate(self.reused, 1):
            if _failed(profile):
                raise ProfileSetError(f"reused A run {i} {_describe_exit(profile)}", hint="reuse only runs that passed")
            if profile.target.get("command") != command:
                raise ProfileSetError(f"reused A run {i} ran {profile.target.get('command')!r}, not A's {command!r}",
                                      hint="reuse A's runs only for the same, unchanged command")
            self.check_metrics(profile, f"A (reused run {i})")

    def _drift_check(self) -> None:
        old = _values(self.reused, self.primary)
        new = _values(self.fresh_a[:ANCHOR_RUNS], self.primary)
        if all(v > max(old) for v in new) or all(v < min(old) for v in new):
            self.notes.append(
                f"A's {len(self.reused)} reused runs were dropped: its {ANCHOR_RUNS} fresh runs all fell "
                f"{'above' if new[0] > max(old) else 'below'} their range ({self.primary}), so the machine or A "
                "changed since; A was measured afresh, interleaved with B")
            self.runs["A"] = list(self.fresh_a)
            self.reused = []

    def measure(self, plan: StoppingPlan, threshold: float | None) -> tuple[Verdict, list[int], str]:
        """Steps up to ``max_runs``, judging the primary metric at each look: (verdict, looks, stop reason)."""
        looks_taken: list[int] = []
        for index in range(1, plan.max_runs + 1):
            self.step(index)
            if plan.is_look(index):
                looks_taken.append(index)
                a, b = _values(self.runs["A"], self.primary), _values(self.runs["B"], self.primary)
                current, _stop = plan.decide(a, b, metric=self.primary, threshold=threshold,
                                             source=_source([*self.runs["A"], *self.runs["B"]], self.primary))
                reason = plan.stop_reason(current, index)
                if reason is not None:
                    return current, looks_taken, reason
        raise AssertionError("the last run is always a look")  # planned_looks ends at max_runs


def compare(a: Arm, b: Arm, options: CompareOptions | None = None, **fields: Any) -> Comparison:
    """Measure A and B (see the module docstring) and judge every metric.

    Settings come as a :class:`CompareOptions` or as its fields by keyword (both: the
    keywords override). Added to the contract: see :class:`CompareOptions`.
    """
    options = replace(options or CompareOptions(), **fields)
    metrics, primary, optional = options.judged()
    plan = options.plan(primary)
    loop = InterleavedRuns(a, b, options, metrics, primary)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    loop.warm_up()
    current, looks_taken, reason = loop.measure(plan, options.threshold)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    runs_a, runs_b = loop.runs["A"], loop.runs["B"]
    n = len(runs_b)
    judged = [*metrics, *(m for m in optional if _available(runs_a + runs_b, m))]
    others = _verdicts(runs_a, runs_b, [m for m in judged if m != primary], threshold=options.threshold,
                       confidence=plan.confidence_at(n))
    verdicts = {primary: current, **others}
    notes = [note for note in (_load_note(load_before, load_after),) if note] + loop.notes
    return Comparison(
        a=runs_a, b=runs_b, verdicts={m: verdicts[m] for m in judged}, runs=n, stopped_early=n < options.max_runs,
        primary=primary, labels=(a.display(), b.display()), plan=plan, looks_taken=looks_taken, notes=notes,
        stop_reason=reason, reused_a=len(loop.reused),
    )


def compare_profiles(
    a: Sequence[Profile],
    b: Sequence[Profile],
    *,
    metrics: Sequence[str] = ("wall",),
    primary: str | None = None,
    threshold: float | None = None,
    confidence: float = 0.95,
    names_a: Sequence[str] = (),
    names_b: Sequence[str] = (),
    extra_metrics: Sequence[str] = (),
    allow_cross_host: bool = False,
) -> Comparison:
    """Judge two sets of saved Profiles (one look, no stopping: the runs already exist).

    Added to the contract. Each set must be non-empty, every run must have succeeded,
    one set must hold one command, and (unless ``allow_cross_host``) all runs must come
    from one machine: timings from two machines say more about the machines.
    """
    metrics = list(dict.fromkeys(metrics))
    check_metric_names([*metrics, *extra_metrics])
    primary = primary or metrics[0]
    if primary not in metrics:
        metrics.insert(0, primary)
    sides = {"A": (list(a), list(names_a)), "B": (list(b), list(names_b))}

    def name(side: str, index: int) -> str:
        names = sides[side][1]
        return names[index] if index < len(names) else f"{side} profile {index + 1}"

    for side, (profiles, _names) in sides.items():
        if not profiles:
            raise ProfileSetError(f"no profiles for {side}", hint="give both sets, e.g. perfpilot compare base/*.json new/*.json")
        failing = [f"{name(side, i)} {_describe_exit(p)}" for i, p in enumerate(profiles) if _failed(p)]
        if failing:
            raise ProfileSetError(f"{side} has failing runs: {', '.join(failing[:5])}"
                                  + (f" and {len(failing) - 5} more" if len(failing) > 5 else ""),
                                  hint="re-record them; a verdict on failed runs is meaningless")
        commands: dict[str, list[str]] = {}
        for i, p in enumerate(profiles):
            command = p.target.get("command")
            key = shlex.join(command) if isinstance(command, list) else str(command)
            commands.setdefault(key, []).append(name(side, i))
        if len(commands) > 1:
            parts = "; ".join(f"{cmd!r} ({len(files)}: {files[0]}{', ...' if len(files) > 1 else ''})"
                              for cmd, files in commands.items())
            raise ProfileSetError(f"{side} mixes different commands: {parts}",
                                  hint="each set must be runs of one command")
        for metric in metrics:
            for i, p in enumerate(profiles):
                try:
                    metric_value(p, metric)
                except MetricUnavailable as exc:
                    raise MetricUnavailable(f"{name(side, i)}: {exc.message}", hint=exc.hint) from None
    machines = {p.host.get("machine_id") for p in [*a, *b]}
    if len(machines) > 1 and not allow_cross_host:
        hosts = sorted({str(p.host.get("hostname")) for p in [*a, *b]})
        raise ProfileSetError(f"the profiles come from {len(machines)} different machines ({', '.join(hosts)})",
                              hint="record both sets on one machine, or pass --allow-cross-host")
    optional = [m for m in dict.fromkeys(extra_metrics) if m not in metrics and _available([*a, *b], m)]
    judged = [*metrics, *optional]
    verdicts = _verdicts(a, b, judged, threshold=threshold, confidence=confidence)
    labels = tuple(
        shlex.join(p[0].target["command"]) if isinstance(p[0].target.get("command"), list) else side
        for side, p in (("A", a), ("B", b))
    )
    notes = []
    if len(machines) > 1:
        notes.append("A and B were recorded on different machines: the ratio mixes code and hardware")
    return Comparison(a=list(a), b=list(b), verdicts=verdicts, runs=min(len(a), len(b)), stopped_early=False,
                      primary=primary, labels=labels, plan=None, notes=notes,  # type: ignore[arg-type]
                      sources=(list(names_a), list(names_b)))


def measure(
    target: Arm | str | Sequence[str] | Callable[[], object],
    *,
    runs: int,
    warmup: int = 1,
    settings: Settings | None = None,
    plugin_set: Any = None,
    cpus: Sequence[int] | None = None,
    capture_output: bool = False,
) -> list[Profile] | list[dict[str, float]]:
    """``runs`` measured runs of one thing (after ``warmup`` discarded ones).

    A command (an :class:`Arm`, or a string/argv) runs in fresh processes and gives
    Profiles; a run that fails raises :class:`RunFailed`. A callable runs in this
    process and gives dicts: ``wall_s`` (perf_counter), ``cpu_s`` (this process's CPU
    time, all threads) and ``peak_rss_bytes`` (the process's high-water mark so far:
    it never goes down, so it shows growth, not a per-call peak). Added to the contract:
    ``plugin_set``, ``cpus`` and ``capture_output`` as for :func:`compare`.
    """
    if runs < 1:
        raise ConfigError(f"runs must be at least 1, got {runs}")
    if callable(target) and not isinstance(target, Arm):
        for _ in range(warmup):
            target()
        results: list[dict[str, float]] = []
        for _ in range(runs):
            c0, t0 = time.process_time(), time.perf_counter()
            target()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
            results.append({"wall_s": wall, "cpu_s": cpu, "peak_rss_bytes": float(peak)})
        return results

    from perfpilot.profilers.session import RunOptions, profile_command

    arm = target if isinstance(target, Arm) else Arm(command=target)  # type: ignore[arg-type]
    settings = (settings or Settings()).replace(stacks=False)
    argv = pinned(arm.argv(), cpus)
    profiles: list[Profile] = []
    for index in range(-warmup + 1, runs + 1):
        options = RunOptions(env=arm.env, cwd=arm.cwd, capture_output=capture_output, stdin_devnull=True,
                             plugin_set=plugin_set)
        profile = profile_command(argv, settings, options)
        if _failed(profile):
            failure = [("run", max(index, 0), _describe_exit(profile))]
            raise RunFailed(_failure_message(failure, len(profiles) + 1, profile), failures=failure,
                            profiles={"runs": profiles}, hint="run the command alone to see why")
        if index >= 1:
            profiles.append(profile)
    return profiles
