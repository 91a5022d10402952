"""Python stacks of the target, sampled out of process with py-spy.

The target starts unmodified; py-spy attaches to it with ``--pid`` (``--subprocesses``
follows its children, ``--nonblocking`` never pauses it, which is what keeps the
overhead at the level of py-spy alone; ``--native`` needs the pauses, so it drops
``--nonblocking``).

Why windows: py-spy writes its samples only when it stops, and its one format with
timestamps (chrometrace) cannot tell an idle thread from a busy one. To attribute energy
over time (:mod:`perfpilot.profilers.energy_attribution`) we record consecutive
*windows*: one py-spy per window, stopped with SIGINT (py-spy then writes its raw
output) and replaced at once. Windows last 1 s for the first 20 s, then 5 s. The gap
between windows (py-spy exiting and re-attaching, ~10-30 ms) is not sampled; the
Profile says how much of the run was covered.

Attaching is retried while the target lives: a just-launched interpreter is not
initialised yet, and a shell or launcher may start Python only later. Failures that no
retry can fix (ptrace denied, Python version unsupported by this py-spy, py-spy not
installed) end sampling at once with a message that says why and what to do; the rest
of the Profile is recorded as usual.
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
from perfpilot.profilers.target import Target

PY_SPY_ENV = "PERFPILOT_PY_SPY"  # path to a py-spy executable (read here, not a setting)
SHORT_WINDOW_S = 1.0
LONG_WINDOW_S = 5.0
SHORT_WINDOWS_FOR_S = 20.0
RETRY_FIRST_S = 0.02
RETRY_MAX_S = 0.5
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


@dataclass
class StackRecorder:
    """Handle returned by :func:`start`; the session calls :meth:`finish` once."""

    target_pid: int
    settings: Settings
    executable: str | None
    reason: str | None = None  # set when sampling is impossible (then nothing runs)
    windows: list[Window] = field(default_factory=list)
    collapsed: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    failures: list[str] = field(default_factory=list)
    started_wall: float = field(default_factory=time.time)
    _proc: subprocess.Popen[bytes] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _tmpdir: str = ""

    @property
    def pid(self) -> int | None:
        """The running py-spy's pid (the session must not reap it)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    # ------------------------------------------------------------ thread

    def _command(self, out: str, window_s: float) -> list[str]:
        assert self.executable is not None
        # --duration only as a safety net: if perfpilot is killed, py-spy still ends.
        argv = [self.executable, "record", "--pid", str(self.target_pid), "--rate", str(self.settings.rate),
                "--format", "raw", "--output", out, "--full-filenames", "--duration", str(int(window_s) + 60)]
        if self.settings.native:
            # py-spy must pause the target to unwind native frames (it refuses
            # --nonblocking with --native): more accurate, and more overhead.
            argv.append("--native")
        else:
            argv.append("--nonblocking")
        if self.settings.subprocesses:
            argv.append("--subprocesses")
        return argv

    def _alive(self) -> bool:
        try:
            return psutil.Process(self.target_pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _window_length(self) -> float:
        elapsed = time.time() - self.started_wall
        return SHORT_WINDOW_S if elapsed < SHORT_WINDOWS_FOR_S else LONG_WINDOW_S

    def _record_one(self, index: int) -> Attempt:
        out = os.path.join(self._tmpdir, f"window-{index}.txt")
        env = {**os.environ, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}
        with self._lock:
            if self._stop.is_set():
                return Attempt("gone")
            start = time.time()
            window = self._window_length()
            proc = subprocess.Popen(self._command(out, window), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True)
            self._proc = proc
        self.attempts += 1
        stderr_chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        deadline = start + window
        stopped = False
        while proc.poll() is None:
            remaining = deadline - time.time()
            stopping = self._stop.wait(min(max(remaining, 0.0), 0.25))
            if proc.poll() is not None:
                break
            if stopping:
                # SIGINT makes py-spy write everything it sampled, exactly as when it
                # sees the target exit by itself, so there is nothing to wait for.
                stopped = True
                self._interrupt(proc)
                break
            if time.time() >= deadline:
                stopped = True
                self._interrupt(proc)
                break
        proc.wait()
        end = time.time()
        reader.join(timeout=5)
        stderr = b"".join(stderr_chunks).decode("utf-8", "replace")
        written = os.path.exists(out)
        attempt = classify(proc.returncode, stderr, written)
        if stopped and attempt.kind == "failed":
            # Our own SIGINT before py-spy had attached (it was still looking for a
            # Python interpreter): not a py-spy problem, try again.
            attempt = Attempt("no_python", "interrupted while attaching")
        if written:
            text = Path(out).read_text(encoding="utf-8", errors="replace")
            os.unlink(out)
            match = _SAMPLES.search(stderr)
            collapsed = hs.parse_collapsed(text)
            self.collapsed.update(collapsed)
            self.windows.append(Window.from_collapsed(start, end, collapsed, int(match.group(2)) if match else 0))
        return attempt

    @staticmethod
    def _interrupt(proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        except ProcessLookupError:
            pass

    def _run(self) -> None:
        delay = RETRY_FIRST_S
        index = 0
        try:
            while not self._stop.is_set():
                attempt = self._record_one(index)
                index += 1
                if attempt.kind == "ok":
                    delay = RETRY_FIRST_S
                    continue
                if attempt.kind in ("denied", "unsupported"):
                    self.reason = self._explain(attempt)
                    return
                if not self._alive():
                    return
                if attempt.kind == "no_python" and can_read_process(self.target_pid) is False:
                    self.reason = ptrace_denied_message(self.target_pid)
                    return
                if attempt.kind == "failed":
                    self.failures.append(attempt.detail)
                    if len(self.failures) >= 5 and not self.windows:
                        self.reason = f"py-spy failed 5 times: {attempt.detail}"
                        return
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, RETRY_MAX_S)
        except Exception as exc:  # noqa: BLE001 - stacks are optional; never take the session down
            self.reason = f"stack sampling stopped: {type(exc).__name__}: {exc}"
        finally:
            self._proc = None

    def _explain(self, attempt: Attempt) -> str:
        if attempt.kind == "denied":
            return ptrace_denied_message(self.target_pid)
        version = py_spy_version(self.executable or "py-spy")
        return (f"py-spy {version} cannot read this Python ({attempt.detail}). "
                f"Fix: upgrade py-spy (`pip install -U py-spy`) or run the target on a Python it supports. "
                f"Telemetry was recorded without stacks.")

    def begin(self) -> None:
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
        cwd = profile.target.get("cwd") or None
        status: dict[str, Any] = {
            "tool": "py-spy",
            "rate_hz": self.settings.rate,
            "subprocesses": self.settings.subprocesses,
            "native": self.settings.native,
            "windows": len(self.windows),
            "attempts": self.attempts,
            "sampling_errors": sum(w.errors for w in self.windows),
        }
        if self.windows:
            covered = sum(w.end - w.start for w in self.windows)
            span = max(profile.duration_s, 1e-9)
            status["coverage_pct"] = round(min(100.0, 100.0 * covered / span), 1)
        if self.failures:
            status["failures"] = self.failures[:5]
        if samples:
            profile.hotspots = hs.aggregate(collapsed, cwd=cwd)
            profile.stacks = {
                "rate_hz": self.settings.rate,
                "samples": samples,
                "collapsed": dict(collapsed.most_common()),
                "timeline": [
                    {"start_s": round(w.start - _t0(profile, self.started_wall), 3),
                     "end_s": round(w.end - _t0(profile, self.started_wall), 3), "samples": w.samples}
                    for w in self.windows
                ],
            }
            status["status"] = "ok"
            energy_attribution.attribute(profile, self.windows, _t0(profile, self.started_wall))
        else:
            status["status"] = "unavailable"
            profile.annotations["stacks_note"] = self.reason or self._no_samples_reason(profile)
        if self.reason and samples:
            profile.annotations["stacks_note"] = f"sampling ended early: {self.reason}"
        profile.annotations["stacks"] = status

    def _no_samples_reason(self, profile: Any) -> str:
        target = describe_process(self.target_pid) if self._alive() else \
            f"pid {self.target_pid} ({' '.join(profile.target.get('command') or [])[:80]})"
        if self.failures:
            return f"py-spy could not sample {target}: {self.failures[-1]}"
        if self.windows:
            return (f"no Python code was running on CPU in {target} while py-spy sampled "
                    f"(idle or native code; try --native)")
        if profile.duration_s < 0.5:
            return (f"the target exited after {profile.duration_s:.2f} s, before py-spy could attach; "
                    f"stacks need a longer run")
        return (f"no Python process found in {target} or its children: telemetry without stacks "
                f"(stacks are sampled for Python programs only)")


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
    recorder = StackRecorder(target.pid, settings, executable)
    recorder.begin()
    return recorder
