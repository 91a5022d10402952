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
:mod:`perfpilot.profilers.stats`).

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
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from perfpilot.config import Settings
from perfpilot.errors import ConfigError, PerfpilotError
from perfpilot.profilers.metrics import MetricUnavailable, check_metric_names, metric_source, metric_value
from perfpilot.profilers.profile import Profile
from perfpilot.profilers.stats import StoppingPlan, Verdict, verdict

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
    return "estimate" if any(metric_source(p, metric) == "estimate" for p in profiles) else "measured"


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


def compare(
    a: Arm,
    b: Arm,
    *,
    metrics: Sequence[str] = ("wall",),
    primary: str | None = None,
    settings: Settings | None = None,
    max_runs: int = 10,
    min_runs: int = 5,
    warmup: int = 1,
    threshold: float | None = None,
    confidence: float = 0.95,
    on_run: OnRun | None = None,
    capture_output: bool = False,
    extra_metrics: Sequence[str] = (),
    cpus: Sequence[int] | None = None,
    plugin_set: Any = None,
) -> Comparison:
    """Measure A and B (see the module docstring) and judge every metric.

    Added to the contract: ``extra_metrics`` are judged too when every run has them
    (silently skipped otherwise); ``cpus`` pins every run to those CPUs; ``plugin_set``
    (required for commands) is the caller's :func:`perfpilot.registry.build_plugin_manager` result. ``on_run(side,
    index, profile)`` is called after every run: side ``"A"``/``"B"``, index 0 for a
    warm-up, 1.. for measured runs.
    """
    from perfpilot.profilers.session import RunOptions, profile_command

    metrics = list(dict.fromkeys(metrics))
    check_metric_names([*metrics, *extra_metrics])
    primary = primary or metrics[0]
    check_metric_names([primary])
    if primary not in metrics:
        metrics.insert(0, primary)
    if max_runs < 2:
        raise ConfigError(f"need at least 2 runs per side for a verdict, got {max_runs}", hint="use --runs 10")
    if warmup < 0:
        raise ConfigError(f"warm-up runs cannot be negative, got {warmup}")
    plan = StoppingPlan(min(min_runs, max_runs), max_runs, confidence)
    settings = (settings or Settings()).replace(stacks=False)
    argvs = {"A": pinned(a.argv(), cpus), "B": pinned(b.argv(), cpus)}
    arms = {"A": a, "B": b}
    runs: dict[str, list[Profile]] = {"A": [], "B": []}
    failures: list[tuple[str, int, str]] = []
    first_failed: Profile | None = None
    total = 0
    optional = [m for m in dict.fromkeys(extra_metrics) if m not in metrics]

    def run(side: str, index: int) -> Profile:
        nonlocal total, first_failed
        arm = arms[side]
        options = RunOptions(env=arm.env, cwd=arm.cwd, capture_output=capture_output, stdin_devnull=True,
                             plugin_set=plugin_set)
        profile = profile_command(argvs[side], settings, options)
        total += 1
        if _failed(profile):
            failures.append((side, index, _describe_exit(profile)))
            first_failed = first_failed or profile
        if on_run is not None:
            on_run(side, index, profile)
        return profile

    def check_failures() -> None:
        if failures:
            raise RunFailed(_failure_message(failures, total, first_failed), failures=list(failures), profiles=runs,
                            hint="run the failing command alone (perfpilot profile -- ...) to see why")

    def check_metrics(profile: Profile, side: str) -> None:
        for metric in metrics:
            try:
                metric_value(profile, metric)
            except MetricUnavailable as exc:
                raise MetricUnavailable(f"{side}: {exc.message}", hint=exc.hint) from None

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    for _ in range(warmup):
        for side in ("A", "B"):
            profile = run(side, 0)
            check_failures()
            check_metrics(profile, side)

    looks_taken: list[int] = []
    current: Verdict | None = None
    for index in range(1, max_runs + 1):
        for side in ("A", "B"):
            runs[side].append(run(side, index))
        check_failures()
        if index == 1 and warmup == 0:
            check_metrics(runs["A"][0], "A")
            check_metrics(runs["B"][0], "B")
        if plan.is_look(index):
            looks_taken.append(index)
            current, stop = plan.decide(_values(runs["A"], primary), _values(runs["B"], primary), metric=primary,
                                        threshold=threshold, source=_source([*runs["A"], *runs["B"]], primary))
            if stop:
                break
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    n = len(runs["A"])
    judged = [*metrics, *(m for m in optional if _available(runs["A"] + runs["B"], m))]
    verdicts = _verdicts(runs["A"], runs["B"], [m for m in judged if m != primary], threshold=threshold,
                         confidence=plan.confidence_at(n))
    assert current is not None  # the last run is always a look
    verdicts = {primary: current, **verdicts}
    notes = [note for note in (_load_note(load_before, load_after),) if note]
    return Comparison(
        a=runs["A"], b=runs["B"], verdicts={m: verdicts[m] for m in judged}, runs=n,
        stopped_early=n < max_runs, primary=primary, labels=(a.display(), b.display()), plan=plan,
        looks_taken=looks_taken, notes=notes,
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
