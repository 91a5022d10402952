"""Profiling sessions: launch a command (or attach to a PID), sample every collector
on one loop, reap the target for exact totals, and assemble the Profile.

One sampler thread ticks at ``settings.interval`` on a monotonic schedule; the calling
thread blocks in ``os.wait4`` so the target's exit is seen at once (wall time is not
rounded up to the next tick).

The collectors come from the caller: ``RunOptions.plugin_set`` is a
:class:`~perfpilot.profilers.collector.CollectorSource` (the front door's
``perfpilot.registry.build_plugin_manager()``); the engine never builds the registry.
A launched run and an attached one share their start and finish (:class:`_Observation`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as dt
import os
import signal
import subprocess
import threading
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from perfpilot import reporting
from perfpilot.config import Settings
from perfpilot.errors import CommandNotExecutable, CommandNotFound, ConfigError, TargetError
from perfpilot.profilers.collector import CollectorSet, CollectorSource
from perfpilot.profilers.host import host_info
from perfpilot.profilers.profile import Profile
from perfpilot.profilers import ranks
from perfpilot.profilers.target import Target, add_io, add_rusage, own_hwm_bytes, read_proc_io, rusage_to_dict

TickCallback = Callable[[float, Mapping[str, float]], None]

PR_SET_CHILD_SUBREAPER = 36
INTERRUPT_GRACE_S = 3.0


def _set_child_subreaper() -> bool:
    """Make orphaned descendants reparent to us, so their rusage can be reaped too."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class RunOptions:
    """How to launch the target (what to measure comes from Settings)."""

    env: Mapping[str, str] | None = None  # added to os.environ
    cwd: str | None = None
    capture_output: bool = False  # keep stdout/stderr on profile.output instead of passing through
    stdin_devnull: bool = False
    on_tick: TickCallback | None = None
    # Where the collectors come from, and who hears that a profile is finished: a
    # CollectorSource such as perfpilot.registry.PluginSet. Required; the caller builds it.
    plugin_set: CollectorSource | None = None
    subreaper: bool = True
    # Count zombie children never seen in the tree as the target's orphans: only safe
    # when nothing else in this process starts children during the run (the CLI).
    claim_unseen_orphans: bool = False


@dataclass
class _Sampler:
    collectors: CollectorSet
    target: Target
    interval: float
    t0: float
    on_tick: TickCallback | None
    times: list[float] = field(default_factory=list)
    rows: list[dict[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def tick(self) -> None:
        now = time.monotonic()
        self.target.refresh()
        values = self.collectors.sample(now)
        self.times.append(round(now - self.t0, 6))
        self.rows.append(values)
        if self.on_tick is not None:
            try:
                self.on_tick(now - self.t0, values)
            except Exception:  # noqa: BLE001 - a display problem must not stop measuring
                self.on_tick = None

    def _loop(self) -> None:
        k = 1
        while not self._stop.is_set():
            deadline = self.t0 + k * self.interval
            delay = deadline - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            self.tick()
            # Skip ticks we are late for rather than bursting to catch up.
            k = max(k + 1, int((time.monotonic() - self.t0) / self.interval) + 1)

    def start(self) -> None:
        self.tick()
        self._thread = threading.Thread(target=self._loop, name="perfpilot-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def series(self) -> dict[str, Any]:
        names: list[str] = []
        for row in self.rows:
            for name in row:
                if name not in names:
                    names.append(name)
        values = {name: [row.get(name) for row in self.rows] for name in names}
        return {"t": self.times, "values": values}


def _collectors_for(settings: Settings, options: RunOptions) -> CollectorSet:
    if options.plugin_set is None:
        # The caller owns the registry (dependency direction: the front door builds it).
        raise ValueError("RunOptions.plugin_set is required: pass perfpilot.registry.build_plugin_manager()")
    collectors = CollectorSet(options.plugin_set.make_collectors(settings))
    collectors.check_available()
    return collectors


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _kill_tree(target: Target, sig: int) -> None:
    procs = target.refresh() or target.processes()
    for proc in reversed(procs):
        try:
            proc.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _child_pids() -> set[int]:
    try:
        return {child.pid for child in psutil.Process().children()}
    except psutil.Error:
        return set()


def _reap_orphans(target: Target, exclude: set[int], claim_unseen: bool, before: set[int]) -> dict[str, float] | None:
    """Reap zombies reparented to us (we are subreaper) that belonged to the tree.

    An orphan that lived less than a sampling tick was never seen in the tree. With
    ``claim_unseen`` (the CLI, where perfpilot starts no other children) every zombie
    child born during the run, other than ``exclude`` (py-spy), is the target's.
    """
    total = None
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return None
    for child in children:
        if child.pid in exclude or child.pid == target.pid:
            continue
        if child.pid not in target.seen_pids and (not claim_unseen or child.pid in before):
            # Never seen in the tree: it may be a child the host program owns (a Popen
            # it will wait for itself); reaping it would steal that exit status.
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
            io = read_proc_io(child.pid)  # readable until the zombie is reaped
            pid, _status, ru = os.wait4(child.pid, os.WNOHANG)
        except (ChildProcessError, psutil.Error):
            continue
        if pid:
            total = add_rusage(total, rusage_to_dict(ru))
            if io is not None:
                target.orphan_io = add_io(target.orphan_io, io)
    return total


def _split_command(command: Sequence[str] | str) -> list[str]:
    if isinstance(command, str):
        import shlex

        argv = shlex.split(command)
    else:
        argv = list(command)
    if not argv or not argv[0]:
        raise ConfigError("no command to profile", hint="give one after --, e.g. perfpilot profile -- python app.py")
    return argv


def _start_stacks(target: Target, settings: Settings) -> Any:
    if not settings.stacks:
        return None
    from perfpilot.profilers import stacks

    return stacks.start(target, settings)


class _InterruptForwarder:
    """While waiting for the target, turn Ctrl-C/SIGTERM into "stop the target".

    A Python KeyboardInterrupt raised inside ``os.wait4`` could lose the child's exit
    status and rusage (the kernel may already have reaped it), so the handler only
    records the interrupt and lets ``wait4`` return when the target exits. A terminal's
    Ctrl-C already reached the target (same process group); if the target is still
    running shortly after, the signal is forwarded, and after a grace period the tree
    is killed. A second Ctrl-C kills at once.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.interrupted = False
        self._old: dict[int, Any] = {}
        self._timers: list[threading.Timer] = []

    def _later(self, delay: float, sig: int) -> None:
        timer = threading.Timer(delay, _kill_tree, args=(self.target, sig))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.interrupted:
            _kill_tree(self.target, signal.SIGKILL)
            return
        self.interrupted = True
        if signum == signal.SIGTERM:
            _kill_tree(self.target, signal.SIGTERM)
        else:
            self._later(0.5, signum)
        self._later(INTERRUPT_GRACE_S, signal.SIGKILL)

    def __enter__(self) -> "_InterruptForwarder":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for timer in self._timers:
            timer.cancel()
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _raise_launch_error(exc: OSError, argv: list[str], cwd: str) -> None:
    if isinstance(exc, FileNotFoundError):
        if not Path(cwd).is_dir():
            raise TargetError(f"working directory does not exist: {cwd}") from None
        raise CommandNotFound(f"command not found: {argv[0]}", hint="check the spelling or your PATH") from None
    if isinstance(exc, PermissionError):
        raise CommandNotExecutable(f"permission denied: {argv[0]}", hint="is it executable (chmod +x)?") from None
    raise CommandNotExecutable(f"cannot execute {argv[0]}: {exc.strerror}") from None


@dataclass
class _Observation:
    """What a launched and an attached run share: the collectors, the sampler thread and
    the stacks, from the target's first moment to the finished Profile."""

    collectors: CollectorSet
    sampler: _Sampler
    plugin_set: CollectorSource
    started_at: str
    stacks: Any = None
    stacks_note: str | None = None

    @classmethod
    def start(cls, target: Target, collectors: CollectorSet, settings: Settings, options: RunOptions,
              started_at: str) -> _Observation:
        assert options.plugin_set is not None and target.started_at is not None
        stacks, note = None, None
        try:
            # Before the collectors start: py-spy should attach the moment Python runs.
            stacks = _start_stacks(target, settings)
        except Exception as exc:  # noqa: BLE001 - stacks are optional; telemetry goes on
            note = f"stacks unavailable: {exc}"
        collectors.start(target)
        sampler = _Sampler(collectors, target, settings.interval, target.started_at, options.on_tick)
        sampler.start()
        return cls(collectors, sampler, options.plugin_set, started_at, stacks, note)

    def profile(self, target_info: dict[str, Any], wall: float) -> Profile:
        """The Profile with every collector's totals (the sampler must be stopped)."""
        profile = Profile(target=target_info, host=host_info(), started_at=self.started_at, duration_s=wall,
                          series=self.sampler.series())
        profile.summary = {"wall_s": wall, **self.collectors.stop()}
        profile.annotations.update(self.collectors.annotations())
        profile.collectors = self.collectors.status()
        return profile

    def finish(self, profile: Profile, interrupted: bool) -> Profile:
        """Stacks into the Profile, plugins told; Ctrl-C re-raised with the Profile on it."""
        if self.stacks is not None:
            self.stacks.finish(profile)
        elif self.stacks_note:
            profile.annotations["stacks_note"] = self.stacks_note
        ranks.annotate(profile)  # needs both the processes table and the stacks
        self.plugin_set.profile_finished(profile)
        if interrupted:
            raise ProfileInterrupted(profile)
        return profile


@dataclass
class _Launched:
    popen: subprocess.Popen[bytes]
    target: Target
    metrics_path: str
    children_before: set[int]
    outputs: dict[str, bytes] = field(default_factory=dict)
    readers: list[threading.Thread] = field(default_factory=list)


def _launch(argv: list[str], settings: Settings, options: RunOptions) -> _Launched:
    """Start the command with the reporting file in its environment (and its output
    read by threads when captured)."""
    metrics_fd, metrics_path = tempfile.mkstemp(prefix="perfpilot-metrics-", suffix=".jsonl")
    os.close(metrics_fd)
    env = {**os.environ, **{k: str(v) for k, v in (options.env or {}).items()}, reporting.ENV_VAR: metrics_path}
    cwd = options.cwd or settings.cwd or os.getcwd()
    pipe = subprocess.PIPE if options.capture_output else None
    launcher_hwm = own_hwm_bytes()
    children_before = _child_pids()
    t0 = time.monotonic()
    try:
        popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=pipe, stderr=pipe,
                                 stdin=subprocess.DEVNULL if options.stdin_devnull else None)
    except OSError as exc:
        os.unlink(metrics_path)
        _raise_launch_error(exc, argv, cwd)
    target = Target(pid=popen.pid, launched=True, command=argv, cwd=cwd, started_at=t0,
                    marker=f"{reporting.ENV_VAR}={metrics_path}", launcher_hwm_bytes=launcher_hwm)
    run = _Launched(popen, target, metrics_path, children_before)
    if options.capture_output:
        for name, stream in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            thread = threading.Thread(target=lambda n=name, s=stream: run.outputs.__setitem__(n, s.read()), daemon=True)
            thread.start()
            run.readers.append(thread)
    return run


def _wait_for_exit(run: _Launched, timeout: float | None) -> tuple[bool, bool]:
    """Block until the target exits; its rusage and I/O go on the Target.
    Returns (interrupted, timed_out)."""
    target, popen = run.target, run.popen
    timed_out = False
    timer = None
    if timeout:
        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            _kill_tree(target, signal.SIGKILL)

        timer = threading.Timer(timeout, on_timeout)
        timer.daemon = True
        timer.start()
    with _InterruptForwarder(target) as forwarder:
        # Wait without reaping first: the zombie's /proc/<pid>/io still holds the exact
        # I/O of the whole waited-for tree (chars and syscalls have no rusage field).
        os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT)
        target.exit_io = read_proc_io(popen.pid)
        _pid, status, ru = os.wait4(popen.pid, 0)
    assert target.started_at is not None
    target.ended_at = time.monotonic()
    if timer is not None:
        timer.cancel()
    popen.returncode = os.waitstatus_to_exitcode(status)
    target.exit_rusage = rusage_to_dict(ru)
    target.ended = True
    return forwarder.interrupted, timed_out


def profile_command(
    command: Sequence[str] | str,
    settings: Settings | None = None,
    options: RunOptions | None = None,
) -> Profile:
    """Run ``command`` to completion under every available collector.

    A string is split with ``shlex`` (no shell); pass ``["sh", "-c", "..."]`` for shell
    syntax. Ctrl-C (KeyboardInterrupt) stops the target, finishes the Profile, and
    re-raises only after the Profile is complete: the caller gets it on
    ``exc.profile``. ``options.plugin_set`` (required) gives the collectors.
    """
    settings = settings or Settings()
    options = dataclasses.replace(options) if options else RunOptions()
    argv = _split_command(command)
    collectors = _collectors_for(settings, options)
    if options.subreaper:
        _set_child_subreaper()
    started_at = _now_iso()
    run = _launch(argv, settings, options)
    target, popen = run.target, run.popen
    observed = _Observation.start(target, collectors, settings, options, started_at)
    interrupted, timed_out = _wait_for_exit(run, settings.timeout)
    assert target.started_at is not None and target.ended_at is not None
    wall = target.ended_at - target.started_at
    observed.sampler.stop()
    exclude = set(getattr(observed.stacks, "spawned", ()))  # every py-spy, none of them the target's
    target.orphan_rusage = _reap_orphans(target, exclude, options.claim_unseen_orphans, run.children_before)
    for thread in run.readers:
        thread.join(timeout=5)
    code = popen.returncode
    profile = observed.profile({
        "command": argv, "cwd": target.cwd, "pid": popen.pid, "exit_code": code if code >= 0 else 128 - code,
        "signal": -code if code < 0 else None, "attached": False, "interrupted": interrupted, "timed_out": timed_out,
    }, wall)
    reported, problems = reporting.read_reported(run.metrics_path)
    os.unlink(run.metrics_path)
    profile.summary.update(reported)
    if problems:
        profile.annotations["reported_metrics_problems"] = problems[:10]
    if options.capture_output:
        profile.output = (run.outputs.get("stdout", b""), run.outputs.get("stderr", b""))
    return observed.finish(profile, interrupted)


def _attach(pid: int) -> tuple[psutil.Process, list[str], str]:
    """(the root process, its command line, its cwd) or a TargetError that says why not."""
    if pid <= 0:
        raise TargetError(f"--pid must be a positive process id, got {pid}")
    try:
        root = psutil.Process(pid)
        command = root.cmdline()
    except psutil.NoSuchProcess:
        raise TargetError(f"no process with pid {pid}", hint="check the pid with `ps`") from None
    except psutil.AccessDenied:
        command = []
    try:
        cwd = root.cwd()
    except psutil.AccessDenied:
        # Another user's process: what /proc still shows (CPU, RSS) is measured; the
        # collectors and the stacks note say what was refused and how to get it.
        cwd = ""
    except psutil.NoSuchProcess:
        raise TargetError(f"process {pid} exited before it could be observed") from None
    return root, command, cwd


def _watch(root: psutil.Process, end: float | None, interval: float) -> bool:
    """Wait until ``root`` exits or ``end`` passes; True when Ctrl-C cut it short."""
    try:
        while root.is_running() and root.status() != psutil.STATUS_ZOMBIE:
            if end is not None and time.monotonic() >= end:
                break
            time.sleep(min(0.05, interval))
    except KeyboardInterrupt:
        return True
    except psutil.NoSuchProcess:
        pass
    return False


def profile_pid(
    pid: int,
    duration: float | None,
    settings: Settings | None = None,
    options: RunOptions | None = None,
) -> Profile:
    """Attach to a running process tree for ``duration`` seconds (or until it exits).
    ``options.plugin_set`` (required) gives the collectors."""
    settings = settings or Settings()
    options = dataclasses.replace(options) if options else RunOptions()
    root, command, cwd = _attach(pid)
    collectors = _collectors_for(settings, options)
    target = Target(pid=pid, launched=False, command=command, cwd=cwd)
    started_at = _now_iso()
    t0 = target.started_at = time.monotonic()
    observed = _Observation.start(target, collectors, settings, options, started_at)
    interrupted = _watch(root, None if duration is None else t0 + duration, settings.interval)
    wall = time.monotonic() - t0
    observed.sampler.stop()
    target.ended = True
    target.ended_at = t0 + wall
    profile = observed.profile({"command": command, "cwd": cwd, "pid": pid, "exit_code": None, "signal": None,
                                "attached": True, "interrupted": interrupted, "timed_out": False}, wall)
    return observed.finish(profile, interrupted)


class ProfileInterrupted(KeyboardInterrupt):
    """Ctrl-C during a profile: the target was stopped and the Profile is complete."""

    def __init__(self, profile: Profile) -> None:
        super().__init__("interrupted")
        self.profile = profile
