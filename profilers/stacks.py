"""Python stacks of the target, sampled out of process with py-spy.

The target starts unmodified; py-spy attaches to it with ``--pid`` (``--subprocesses``
follows its children, ``--nonblocking`` never pauses it, which is what keeps the
overhead at the level of py-spy alone; ``--native`` needs the pauses, so it drops
``--nonblocking``).

Finding the interpreter. Commands are often launchers: a pyenv shim, ``uv run``, a shell
script that execs Python (same pid, new binary) or starts it as a child. We watch the
tree (:mod:`perfpilot.profilers.python_procs`: ``/proc/<pid>/exe`` and children, every
5 ms for the first 2 s) and start py-spy the moment a Python process is in it. The
alternative, ``py-spy record -- cmd`` launching the command itself, was rejected: py-spy
would be the target's parent, so the session could no longer reap it with ``wait4`` for
exact CPU/memory/IO totals (and py-spy's own CPU would land in them), and one py-spy for
the whole run gives no windows for energy attribution. It is also no more patient: its
``--subprocesses`` mode gives an exec'd interpreter 5 tries (~0.1 s) and never retries
the root. The first py-spy runs without ``--subprocesses`` (20 tries at a not yet
initialised interpreter); a following one takes over at once.

Why windows: py-spy writes its samples only when it stops, and its one format with
timestamps (chrometrace) cannot tell an idle thread from a busy one. To attribute energy
over time (:mod:`perfpilot.profilers.energy_attribution`) we record consecutive
*windows* (1 s for the first 20 s, then 5 s). Each handoff overlaps: the next py-spy
attaches while the current one still samples, and the current one gets SIGINT (py-spy
then writes its raw output) the moment the next prints "Sampling process". Nothing is
left unsampled; at most a sample or two per window is counted twice (~1% at 100 Hz in
1 s windows). The window boundary is the handoff instant, so windows tile the run for
energy attribution. With ``--native`` two tracers cannot pause one thread, so there the
old py-spy stops before the new one starts and the gap is not sampled.

Coverage (:mod:`perfpilot.profilers.stack_coverage`) is recorded in the Profile, and
when it is below 90% the reports say so in words with the causes.

Attaching is retried while the target lives. Failures that no retry can fix (ptrace
denied, Python version unsupported by this py-spy, py-spy not installed) end sampling at
once with a message that says why and what to do; the rest of the Profile is recorded
as usual.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from perfpilot.config import Settings
from perfpilot.errors import PerfpilotError
from perfpilot.profilers import hotspots as hs
from perfpilot.profilers import stack_coverage as coverage
from perfpilot.profilers.python_procs import PythonFinder, alive, descendants
from perfpilot.profilers.target import Target

PY_SPY_ENV = "PERFPILOT_PY_SPY"  # path to a py-spy executable (read here, not a setting)
SHORT_WINDOW_S = 1.0
LONG_WINDOW_S = 5.0
SHORT_WINDOWS_FOR_S = 20.0
RETRY_FIRST_S = 0.02
RETRY_MAX_S = 0.5
POLL_FIRST_S = 0.005  # looking for a Python process in the tree: first 2 s
POLL_LATER_S = 0.02  # ... up to 10 s
POLL_IDLE_S = 0.1  # ... after that (a non-Python target pays at most this)
EARLY_FRESH_S = 0.25  # Python appeared this long after the early py-spy began: start a fresh one too
ROOTS_CHECK_S = 0.1  # while sampling: how often to look for Python processes py-spy does not follow
CAP_SYS_PTRACE = 19

_SAMPLES = re.compile(r"Samples: (\d+) Errors: (\d+)")


class StacksUnavailable(PerfpilotError):
    """py-spy cannot sample this target; the message says why and how to fix it."""


# ---------------------------------------------------------------- diagnosis


def find_py_spy() -> str:
    """The py-spy executable: $PERFPILOT_PY_SPY, next to this Python, then PATH."""
    explicit = os.environ.get(PY_SPY_ENV)
    if explicit is not None:
        if explicit and os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise StacksUnavailable(
            f"py-spy not found at {PY_SPY_ENV}={explicit!r}",
            hint=f"point {PY_SPY_ENV} at a py-spy executable or unset it; install with `pip install py-spy`",
        )
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("py-spy")
    if found:
        return found
    raise StacksUnavailable(
        "py-spy is not installed, so Python stacks were not sampled",
        hint=f"`{Path(sys.executable).name} -m pip install py-spy` (it is a perfpilot dependency), or --no-stacks",
    )


def py_spy_version(executable: str) -> str:
    try:
        out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().replace("py-spy ", "") or "unknown"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def in_container() -> bool:
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
        return True
    cgroup = _read("/proc/1/cgroup") or ""
    return any(word in cgroup for word in ("docker", "kubepods", "containerd", "libpod", "lxc"))


def has_cap_sys_ptrace() -> bool:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    return False


def ptrace_scope() -> int | None:
    text = _read("/proc/sys/kernel/yama/ptrace_scope")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def ptrace_denied_message(pid: int) -> str:
    """One line: py-spy may not read pid's memory, why that is likely, and every fix."""
    user = None
    try:
        proc = psutil.Process(pid)
        user = proc.username()
        who = f"pid {pid} ({proc.name()}, user {user})"
        target_uid = proc.uids().effective
    except psutil.Error:
        who, target_uid = f"pid {pid}", None
    reasons: list[str] = []
    fixes: list[str] = []
    if target_uid is not None and target_uid != os.geteuid():
        reasons.append(f"it runs as another user ({user})")
        fixes.append(f"run perfpilot as {user}" + (" or as root" if os.geteuid() != 0 else ""))
    scope = ptrace_scope()
    if scope is not None and scope >= 1:
        reasons.append(f"kernel.yama.ptrace_scope={scope}")
        fixes.append("`sudo sysctl kernel.yama.ptrace_scope=0`" if scope < 3
                     else "ptrace_scope=3 disables ptrace until reboot")
        if scope < 3 and os.geteuid() != 0:
            fixes.append("or run perfpilot with sudo")
    if not has_cap_sys_ptrace():
        reasons.append("this process lacks CAP_SYS_PTRACE")
        if in_container():
            fixes.append("in a container add SYS_PTRACE (docker run --cap-add SYS_PTRACE; Kubernetes "
                         "securityContext.capabilities.add: [SYS_PTRACE])")
        else:
            fixes.append("run as root or grant CAP_SYS_PTRACE (`sudo setcap cap_sys_ptrace+ep $(which py-spy)`)")
    if not fixes:
        fixes.append("run as root; in a container add SYS_PTRACE (docker run --cap-add SYS_PTRACE)")
    why = "; ".join(reasons) if reasons else "the kernel refused ptrace access"
    return (f"py-spy cannot attach to {who}: ptrace permission denied ({why}). "
            f"Fix: {'; '.join(fixes)}. Telemetry was recorded without stacks.")


def can_read_process(pid: int) -> bool | None:
    """False when the kernel refuses ptrace-level access to pid (what py-spy needs)."""
    try:
        os.readlink(f"/proc/{pid}/exe")
        return True
    except PermissionError:
        return False
    except OSError:
        return None  # gone, a kernel thread, or a zombie


def describe_process(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"pid {pid} ({' '.join(proc.cmdline())[:80] or proc.name()})"
    except psutil.Error:
        return f"pid {pid}"


@dataclass
class Attempt:
    """What one py-spy run said, classified."""

    kind: str  # ok | no_python | denied | unsupported | gone | failed
    detail: str = ""


def classify(returncode: int, stderr: str, output_written: bool) -> Attempt:
    error = next((ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("Error:")), "")
    if "Permission Denied" in stderr or "Permission denied (os error 13)" in stderr \
            or "Operation not permitted (os error 1)" in stderr:
        return Attempt("denied", error or "Permission denied")
    if "Unsupported version of Python" in stderr or "Unsupported version" in stderr:
        line = next((ln.strip() for ln in stderr.splitlines() if "Unsupported version" in ln), error)
        return Attempt("unsupported", line)
    if output_written:
        return Attempt("ok")
    if "Failed to find python version" in stderr or "No python processes found" in stderr:
        return Attempt("no_python", error)
    if "Failed to get process executable name" in stderr or "No such process" in stderr:
        return Attempt("gone", error)
    detail = error or (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1]
    return Attempt("failed", detail.removeprefix("Error: "))


# ---------------------------------------------------------------- recording


@dataclass
class Window:
    """One py-spy recording: its wall-clock span and samples per function (self and
    total). Its stacks are merged into the run's total at once, so a long run keeps
    only these small per-window counts (what energy attribution needs)."""

    start: float  # time.time()
    end: float
    samples: int
    self_counts: Counter[str]
    total_counts: Counter[str]
    errors: int = 0

    @classmethod
    def from_collapsed(cls, start: float, end: float, collapsed: Counter[str], errors: int = 0) -> "Window":
        self_counts, total_counts = hs.function_counts(collapsed)
        return cls(start, end, sum(collapsed.values()), self_counts, total_counts, errors)


class SpyRun:
    """One py-spy process. It has *attached* when it prints "Sampling process" on stdout
    (py-spy does so once it has read one stack of the target); the window starts there."""

    def __init__(self, argv: list[str], out: str, pid: int, follow: bool) -> None:
        self.out = out
        self.pid = pid  # the process py-spy was pointed at
        self.follow = follow
        self.started = time.time()
        self.attached: float | None = None
        self.eof: float | None = None
        self.cut: float | None = None  # when we stopped it (or a successor took over)
        self._event = threading.Event()
        self._stderr: list[bytes] = []
        env = {**os.environ, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}
        # Out of the terminal's process group (Ctrl-C is ours to forward). process_group
        # keeps Popen on vfork; start_new_session forks a copy of perfpilot, which cost
        # up to 0.2 s per window on a loaded 2-core VM.
        group: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, **group)
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=lambda: self._stderr.append(self.proc.stderr.read()),  # type: ignore[union-attr]
                                          daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self.attached is None and b"Sampling process" in line:
                self.attached = time.time()
                self._event.set()
        self.eof = time.time()
        self._event.set()

    def wait_attached(self, stop: threading.Event) -> bool:
        """True once sampling; False when py-spy exited first or ``stop`` was set."""
        while not self._event.wait(0.02):
            if stop.is_set():
                return False
        return self.attached is not None

    def running(self) -> bool:
        return self.proc.poll() is None

    def interrupt(self, at: float | None = None) -> None:
        """SIGINT: py-spy writes everything it sampled, as when the target exits."""
        if self.cut is None:
            self.cut = at or time.time()
        try:
            self.proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass

    def finish(self) -> tuple[Attempt, Window | None, Counter[str]]:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        end = min(t for t in (self.cut, self.eof, time.time()) if t is not None)
        stderr = b"".join(self._stderr).decode("utf-8", "replace")
        written = os.path.exists(self.out)
        attempt = classify(self.proc.returncode, stderr, written)
        if self.cut is not None and attempt.kind == "failed":
            # Our own SIGINT before py-spy had attached (it was still looking for a
            # Python interpreter): not a py-spy problem, try again.
            attempt = Attempt("no_python", "interrupted while attaching")
        if not written:
            return attempt, None, Counter()
        text = Path(self.out).read_text(encoding="utf-8", errors="replace")
        os.unlink(self.out)
        collapsed = hs.parse_collapsed(text)
        if self.attached is None:
            return attempt, None, collapsed
        match = _SAMPLES.search(stderr)
        window = Window.from_collapsed(self.attached, max(end, self.attached), collapsed,
                                       int(match.group(2)) if match else 0)
        return attempt, window, collapsed


@dataclass
class StackRecorder:
    """Handle returned by :func:`start`; the session calls :meth:`finish` once."""

    target_pid: int
    settings: Settings
    executable: str | None
    reason: str | None = None  # set when sampling is impossible (then nothing runs)
    target: Target | None = None  # for orphans the session adopted (they left the pid tree)
    windows: list[Window] = field(default_factory=list)
    collapsed: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    failures: list[str] = field(default_factory=list)
    started_wall: float = field(default_factory=time.time)
    python_seen: float | None = None  # time.time() a Python process was first seen in the tree
    python_at_launch: bool = False  # the command itself was the interpreter
    spawned: list[int] = field(default_factory=list)  # every py-spy pid (none may be reaped as the target's)
    _live: list[SpyRun] = field(default_factory=list)
    _finder: PythonFinder = field(default_factory=PythonFinder)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _tmpdir: str = ""
    _index: int = 0
    _polls: int = 0

    @property
    def pid(self) -> int | None:
        """The newest running py-spy's pid (the session must not reap it)."""
        live = [run for run in list(self._live) if run.running()]
        return live[-1].proc.pid if live else None

    # ------------------------------------------------------------ py-spy processes

    def _command(self, out: str, window_s: float, pid: int | None = None, follow: bool | None = None) -> list[str]:
        assert self.executable is not None
        # --duration only as a safety net: if perfpilot is killed, py-spy still ends.
        argv = [self.executable, "record", "--pid", str(pid or self.target_pid), "--rate", str(self.settings.rate),
                "--format", "raw", "--output", out, "--full-filenames", "--duration", str(int(window_s) + 600)]
        if self.settings.native:
            # py-spy must pause the target to unwind native frames (it refuses
            # --nonblocking with --native): more accurate, and more overhead.
            argv.append("--native")
        else:
            argv.append("--nonblocking")
        if self.settings.subprocesses if follow is None else follow:
            argv.append("--subprocesses")
        return argv

    def _spawn(self, pid: int, follow: bool) -> SpyRun:
        out = os.path.join(self._tmpdir, f"window-{self._index}.txt")
        self._index += 1
        self.attempts += 1
        run = SpyRun(self._command(out, self._window_length(), pid, follow), out, pid, follow)
        self.spawned.append(run.proc.pid)
        self._live.append(run)
        return run

    def _collect(self, run: SpyRun) -> Attempt:
        if run.running() and run.cut is None:
            run.interrupt()
        attempt, window, collapsed = run.finish()
        self._live.remove(run)
        self.collapsed.update(collapsed)
        if window is not None:
            self.windows.append(window)
        return attempt

    def _window_length(self) -> float:
        elapsed = time.time() - self.started_wall
        return SHORT_WINDOW_S if elapsed < SHORT_WINDOWS_FOR_S else LONG_WINDOW_S

    # ------------------------------------------------------------ the tree

    def _alive(self) -> bool:
        return alive(self.target_pid) or any(alive(p.pid) for p in self._adopted())

    def _adopted(self) -> list[Any]:
        if self.target is None:
            return []
        return [p for p in self.target.processes() if p.pid != self.target_pid]

    def _python_roots(self) -> list[int]:
        pids = descendants(self.target_pid)
        for proc in self._adopted():
            if proc.pid not in pids:
                pids.extend(descendants(proc.pid))
        return self._finder.roots(pids)

    def _choose(self, roots: list[int]) -> int:
        """One Python root: py-spy on it. Several: py-spy on the launcher, following them all."""
        if len(roots) == 1 or not self.settings.subprocesses:
            return roots[0]
        return self.target_pid

    def _poll_python(self) -> list[int]:
        """The Python roots in the tree now (and when the first one was seen)."""
        roots = self._python_roots()
        if not roots:
            self._polls += 1
            return roots
        if self.python_seen is None:
            self.python_at_launch = self._polls == 0 and self.target_pid in roots and self._command_is(self.target_pid)
            self.python_seen = time.time()
        return roots

    def _command_is(self, pid: int) -> bool:
        """Whether the launched command is itself the binary pid runs (then Python ran
        from launch; otherwise a launcher exec'd it before our first look, time unknown)."""
        command = (self.target.command if self.target is not None else None) or []
        found = shutil.which(command[0], path=os.environ.get("PATH")) if command else None
        try:
            return found is not None and os.path.realpath(found) == os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return False

    def _await_python(self) -> int | None:
        """Poll the tree until a Python process is in it; None once the target is gone."""
        begun = time.monotonic()
        while not self._stop.is_set():
            roots = self._poll_python()
            if roots:
                return self._choose(roots)
            if not self._alive():
                return None
            waited = time.monotonic() - begun
            self._stop.wait(POLL_FIRST_S if waited < 2 else POLL_LATER_S if waited < 10 else POLL_IDLE_S)
        return None

    def _early(self) -> SpyRun | Attempt:
        """A py-spy on the launched pid before it runs Python: py-spy retries for ~0.5 s,
        so an interpreter that a launcher execs is sampled as soon as it can be, without
        waiting for a py-spy to start. If the exec comes late in those retries, a fresh
        py-spy joins (the first may run out of tries while Python starts up); whichever
        samples first wins. If Python shows up elsewhere (a child), that wins."""
        runs = [self._spawn(self.target_pid, follow=False)]
        while not self._stop.is_set() and not any(r.attached for r in runs):
            roots = self._poll_python()
            if roots and self.target_pid not in roots:
                break
            if roots and len(runs) == 1 and time.time() - runs[0].started > EARLY_FRESH_S:
                runs.append(self._spawn(self.target_pid, follow=False))
                continue
            if all(r._event.is_set() for r in runs):
                break  # every one gave up
            self._stop.wait(POLL_FIRST_S)
        attached = [r for r in runs if r.attached]
        winner = min(attached, key=lambda r: r.attached or 0.0) if attached else None
        attempt = Attempt("no_python")
        for run in runs:
            if run is not winner:
                if run.running():
                    run.interrupt(at=winner.attached if winner else None)
                attempt = self._collect(run)
        if winner is None:
            return attempt
        self._poll_python()  # when Python started, for the coverage figures
        return winner

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        current: SpyRun | None = None
        try:
            while not self._stop.is_set():
                if current is None:
                    current = self._first_attach()
                    if current is None:
                        return
                    continue
                event = self._wait_window(current)
                if event == "exited":
                    self._collect(current)
                    current = None
                elif event == "rotate":
                    roots = self._python_roots()
                    current = self._handoff(current, self._choose(roots) if roots else current.pid)
        except Exception as exc:  # noqa: BLE001 - stacks are optional; never take the session down
            self.reason = f"stack sampling stopped: {type(exc).__name__}: {exc}"
        finally:
            for run in list(self._live):
                self._collect(run)

    def _first_attach(self) -> SpyRun | None:
        """Attach as soon as a Python process exists; None when there is none to sample.

        The first py-spy runs without --subprocesses: it retries a not-yet-initialised
        interpreter 20 times, where --subprocesses gives the root process 5 tries and
        then waits a second for children. A following py-spy takes over at once."""
        delay = RETRY_FIRST_S
        early = self._early() if not self.attempts else None
        while not self._stop.is_set():
            if isinstance(early, SpyRun):
                return self._handoff(early, early.pid) if self.settings.subprocesses else early
            if early is None:
                pid = self._await_python()
                if pid is None:
                    return None
                # Several Python processes under a launcher: the first one at once, then a
                # py-spy on the launcher that follows them all (it is slow to attach while
                # they start up: it retries each child only 5 times).
                first = pid if self._finder.is_python(pid) else (self._python_roots() or [pid])[0]
                run = self._spawn(first, follow=False)
                if run.wait_attached(self._stop):
                    return self._handoff(run, pid) if self.settings.subprocesses else run
                attempt = self._collect(run)
                pid = first
            else:
                attempt, pid, early = early, self.target_pid, None
                if attempt.kind == "no_python" and can_read_process(pid) is not False:
                    continue  # the early py-spy gave up, or Python runs in a child: look again now
            if attempt.kind in ("denied", "unsupported"):
                self.reason = self._explain(attempt)
                return None
            if attempt.kind == "no_python":
                if can_read_process(pid) is False:
                    self.reason = ptrace_denied_message(pid)
                    return None
                if self.python_seen is None:
                    continue  # not Python yet: wait for it
            if attempt.kind == "failed":
                self.failures.append(attempt.detail)
                if len(self.failures) >= 5 and not self.windows:
                    self.reason = f"py-spy failed 5 times: {attempt.detail}"
                    return None
            if self._stop.wait(delay):
                return None
            delay = min(delay * 2, RETRY_MAX_S)
        return None

    def _handoff(self, old: SpyRun, pid: int) -> SpyRun | None:
        """The next window: a new py-spy attaches while the old one still samples, and
        the old one stops the moment the new one samples, so no time goes unsampled.
        (--native pauses the target; two tracers cannot, so there the old stops first.)"""
        follow = self.settings.subprocesses
        if self.settings.native:
            self._collect(old)
            new = self._spawn(pid, follow)
            if new.wait_attached(self._stop):
                return new
            self._note_failure(self._collect(new))
            return None
        new = self._spawn(pid, follow)
        if new.wait_attached(self._stop):
            old.interrupt(at=new.attached)
            self._collect(old)
            return new
        # The target ended meanwhile (or we are stopping): the old py-spy has the rest.
        self._note_failure(self._collect(new))
        return old

    def _note_failure(self, attempt: Attempt) -> None:
        if attempt.kind == "failed" and self._alive():
            self.failures.append(attempt.detail)

    def _wait_window(self, run: SpyRun) -> str:
        """Until the window is over ("rotate"), py-spy ended ("exited"), or the Python
        processes changed so that another pid must be followed ("rotate")."""
        assert run.attached is not None
        deadline = run.attached + self._window_length()
        while True:
            remaining = deadline - time.time()
            if self._stop.wait(max(0.0, min(remaining, ROOTS_CHECK_S))):
                return "stop"
            if not run.running():
                return "exited"
            if time.time() >= deadline:
                return "rotate"
            roots = self._python_roots()
            if roots and self._choose(roots) != run.pid and not (run.follow and set(roots) <= set(descendants(run.pid))):
                return "rotate"

    def _explain(self, attempt: Attempt) -> str:
        if attempt.kind == "denied":
            return ptrace_denied_message(self.target_pid)
        version = py_spy_version(self.executable or "py-spy")
        return (f"py-spy {version} cannot read this Python ({attempt.detail}). "
                f"Fix: upgrade py-spy (`pip install -U py-spy`) or run the target on a Python it supports. "
                f"Telemetry was recorded without stacks.")

    def begin(self) -> None:
        self._poll_python()  # at once, so "Python from the start" is not a late first look
        self._tmpdir = tempfile.mkdtemp(prefix="perfpilot-stacks-")
        self._thread = threading.Thread(target=self._run, name="perfpilot-stacks", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ finish

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def finish(self, profile: Any) -> None:
        """Stop sampling and fill ``profile.hotspots``, ``profile.stacks`` and notes."""
        self.stop()
        from perfpilot.profilers import energy_attribution

        collapsed = self.collapsed
        samples = sum(collapsed.values())
        t0 = _t0(profile, self.started_wall)
        status: dict[str, Any] = {
            "tool": "py-spy",
            "rate_hz": self.settings.rate,
            "subprocesses": self.settings.subprocesses,
            "native": self.settings.native,
            "windows": len(self.windows),
            "attempts": self.attempts,
            "sampling_errors": sum(w.errors for w in self.windows),
        }
        python_seen = t0 if self.python_at_launch else self.python_seen
        if self.windows and (python_seen is None or python_seen > self.windows[0].start):
            python_seen = min(w.start for w in self.windows)  # it ran by then at the latest
        status.update(coverage.figures(self.windows, t0, profile.duration_s, python_seen))
        if self.failures:
            status["failures"] = self.failures[:5]
        if samples:
            profile.hotspots = hs.aggregate(collapsed, cwd=profile.target.get("cwd") or None)
            profile.stacks = {
                "rate_hz": self.settings.rate,
                "samples": samples,
                "collapsed": dict(collapsed.most_common()),
                "timeline": [{"start_s": round(w.start - t0, 3), "end_s": round(w.end - t0, 3), "samples": w.samples}
                             for w in self.windows],
            }
            status["status"] = "ok"
            energy_attribution.attribute(profile, self.windows, t0)
        else:
            status["status"] = "unavailable"
            profile.annotations["stacks_note"] = self.reason or self._no_samples_reason(profile)
        if self.reason and samples:
            profile.annotations["stacks_note"] = f"sampling ended early: {self.reason}"
        note = coverage.note(status, profile.duration_s, samples) if samples else None
        if note:
            status["coverage_note"] = note
        profile.annotations["stacks"] = status

    def _no_samples_reason(self, profile: Any) -> str:
        target = describe_process(self.target_pid) if self._alive() else \
            f"pid {self.target_pid} ({' '.join(profile.target.get('command') or [])[:80]})"
        if self.failures:
            return f"py-spy could not sample {target}: {self.failures[-1]}"
        if self.windows:
            return (f"no Python code was running on CPU in {target} while py-spy sampled "
                    f"(idle or native code; try --native)")
        if self.python_seen is not None and profile.duration_s < 1.0:
            return (f"the target exited after {profile.duration_s:.2f} s, before py-spy could take a sample; "
                    f"stacks need a longer run (the totals above are exact)")
        if self.python_seen is None:
            return (f"no Python process found in {target} or its children: telemetry without stacks "
                    f"(stacks are sampled for Python programs only)")
        return f"py-spy did not attach to the Python process of {target} before it exited"


def _t0(profile: Any, fallback: float) -> float:
    """Wall-clock time of the Profile's t=0 (series times are relative to it)."""
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(profile.started_at).timestamp()
    except (TypeError, ValueError):
        return fallback


def start(target: Target, settings: Settings) -> StackRecorder:
    """Begin sampling ``target`` (returns at once; attaching happens in the background).

    When py-spy is missing or ptrace is refused, the returned handle carries the
    reason and :meth:`StackRecorder.finish` records it; nothing is raised.
    """
    try:
        executable = find_py_spy()
    except StacksUnavailable as exc:
        return StackRecorder(target.pid, settings, None, reason=str(exc))
    if can_read_process(target.pid) is False:
        return StackRecorder(target.pid, settings, executable, reason=ptrace_denied_message(target.pid))
    recorder = StackRecorder(target.pid, settings, executable, target=target)
    recorder.begin()
    return recorder
