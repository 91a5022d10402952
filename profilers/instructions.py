"""Instructions retired in user space by a whole process tree: a deterministic cost figure.

Wall and CPU time drift 1.6-2.5x between sessions on shared machines; the number of
instructions a program executes does not. Two sources, labelled like energy:

``pmu``
    Hardware counters through ``perf_event_open(2)`` (ctypes, no extra package):
    ``PERF_COUNT_HW_INSTRUCTIONS``, ``exclude_kernel``, ``inherit=1`` (children and
    grandchildren count too, added to the parent's counter as they exit), opened on a
    gated child and enabled on its ``exec`` (``enable_on_exec``), so the launcher's own
    instructions are not counted. Near-zero overhead. Needs a CPU/VM that exposes the
    counter and ``kernel.perf_event_paranoid`` <= 2.
``valgrind``
    ``valgrind --tool=cachegrind --cache-sim=no --trace-children=yes``: every process
    of the tree runs on valgrind's CPU simulator and writes its own ``cg.<pid>`` file;
    the figure is the sum of their ``Ir`` totals. About 50x slower than native; exact
    to a few parts in 10,000 run to run, and equal with ``PYTHONHASHSEED`` pinned.

A counting run is a separate run from a timed one: under valgrind the wall time means
nothing, so :func:`counting_profile` returns a Profile without ``wall_s``. Python's hash
seed is pinned (``PYTHONHASHSEED=0`` unless the caller set one) and recorded in the
Profile (``annotations["instructions"]["pinned_env"]``).

Valgrind must be given the real interpreter: a pyenv shim is a bash script that runs
``pyenv exec`` (dozens of processes whose instructions would be counted too), so
:func:`resolve_command` replaces shims and ``#!/usr/bin/env`` launchers by the binary
they would run, and says so in the notes (or says that it could not).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from perfpilot.errors import ConfigError, PerfpilotError
from perfpilot.profilers.host import host_info
from perfpilot.profilers.profile import Profile

METRIC = "instructions"
SOURCES = ("pmu", "valgrind")
SOURCE_ENV = "PERFPILOT_INSTRUCTIONS_SOURCE"  # auto | pmu | valgrind
PINNED_ENV = {"PYTHONHASHSEED": "0"}


@dataclass(frozen=True)
class Confine:
    """How a caller confines the runs it launches (the optimiser's sandbox): the counting run goes in too.

    ``wrap(argv)`` is the launched command; valgrind runs inside it. ``scratch`` is a folder
    writable inside it, for valgrind's files (a sandbox's /tmp is private to it).
    """

    wrap: Callable[[list[str]], list[str]]
    scratch: str | None = None


class InstructionsUnavailable(PerfpilotError):
    """Neither hardware counters nor valgrind can count instructions here."""


class CountingFailed(PerfpilotError):
    """The counting run produced no figure (valgrind could not start, or wrote nothing)."""


@dataclass
class InstructionCount:
    """One counting run of a command."""

    instructions: int
    source: str
    exit_code: int
    signal: int | None = None
    pinned_env: dict[str, str] = field(default_factory=dict)
    processes: list[dict[str, Any]] = field(default_factory=list)  # valgrind: pid, command, instructions
    command: list[str] = field(default_factory=list)  # what really ran (after resolving shims)
    notes: list[str] = field(default_factory=list)
    output: tuple[bytes, bytes] | None = None

    def annotation(self) -> dict[str, Any]:
        return {"source": self.source, "pinned_env": dict(self.pinned_env), "command": list(self.command),
                "processes": list(self.processes), "notes": list(self.notes)}


# ------------------------------------------------------------------ pmu

_PERF_TYPE_HARDWARE = 0
_PERF_COUNT_HW_INSTRUCTIONS = 1
_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
FLAG_DISABLED, FLAG_INHERIT, FLAG_EXCLUDE_KERNEL, FLAG_EXCLUDE_HV, FLAG_ENABLE_ON_EXEC = 1, 2, 32, 64, 4096
_READ_TIMES = 1 | 2  # PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING
_SYSCALL = {"x86_64": 298, "aarch64": 241, "ppc64le": 319, "s390x": 331, "riscv64": 241}


def perf_event_open(pid: int, flags: int) -> int:
    """An instructions counter on ``pid`` (0: this process); the fd, or -errno."""
    number = _SYSCALL.get(platform.machine())
    if number is None:
        return -errno.ENOSYS
    attr = bytearray(128)
    struct.pack_into("IIQ", attr, 0, _PERF_TYPE_HARDWARE, _ATTR_SIZE, _PERF_COUNT_HW_INSTRUCTIONS)
    struct.pack_into("QQ", attr, 32, _READ_TIMES, flags)  # read_format at 32, the flag bits at 40
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = (ctypes.c_char * len(attr)).from_buffer(attr)
    fd = libc.syscall(number, buffer, ctypes.c_int(pid), ctypes.c_int(-1), ctypes.c_int(-1), ctypes.c_ulong(8))
    return fd if fd >= 0 else -ctypes.get_errno()


def pmu_refusal(err: int) -> str:
    if err == errno.ENOENT or err == errno.EOPNOTSUPP:
        return "perf_event_open: this CPU or VM exposes no hardware instructions counter (ENOENT)"
    if err in (errno.EACCES, errno.EPERM):
        try:
            paranoid = Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip()
        except OSError:
            paranoid = ""
        return f"perf_event_open refused (kernel.perf_event_paranoid={paranoid or '?'}; 2 or less allows user-space counting)"
    if err == errno.ENOSYS:
        return f"perf_event_open is not available on {platform.system()} {platform.machine()}"
    return f"perf_event_open failed: {os.strerror(err)}"


def pmu_status() -> tuple[bool, str]:
    """Whether hardware counters can count this user's instructions, and why not (one line)."""
    fd = perf_event_open(0, FLAG_DISABLED | FLAG_EXCLUDE_KERNEL | FLAG_EXCLUDE_HV)
    if fd < 0:
        return False, pmu_refusal(-fd)
    os.close(fd)
    return True, "hardware counters (perf_event_open), user space, children inherited"


_GATE = "import os,sys; os.read(int(sys.argv[1]),1); os.execvp(sys.argv[2], sys.argv[2:])"


def _count_pmu(argv: list[str], env: Mapping[str, str], cwd: str | None, timeout: float | None,
               capture: bool, confine: Confine | None) -> tuple[int, int, list[str], tuple[bytes, bytes] | None]:
    """Run ``argv`` behind a gate, open the counter on it, then let it exec (counted from there)."""
    read_end, write_end = os.pipe()
    pipe = subprocess.PIPE if capture else None
    try:
        # Confined, the sandbox's own launcher is counted too (the same few instructions for A and B).
        launched = confine.wrap(list(argv)) if confine is not None else list(argv)
        child = subprocess.Popen([sys.executable, "-c", _GATE, str(read_end), *launched], env=dict(env), cwd=cwd,
                                 pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe)
    finally:
        os.close(read_end)
    flags = FLAG_DISABLED | FLAG_INHERIT | FLAG_EXCLUDE_KERNEL | FLAG_EXCLUDE_HV | FLAG_ENABLE_ON_EXEC
    fd = perf_event_open(child.pid, flags)
    if fd < 0:
        child.kill()
        child.wait()
        os.close(write_end)
        raise InstructionsUnavailable(pmu_refusal(-fd), hint=f"set {SOURCE_ENV}=valgrind")
    try:
        os.write(write_end, b"x")
        os.close(write_end)
        out, err = child.communicate(timeout=timeout)
        value, enabled, running = struct.unpack("QQQ", os.read(fd, 24))
    finally:
        os.close(fd)
    notes = []
    if 0 < running < enabled:  # the counter shared the PMU with others: the kernel's figure is scaled
        value = int(value * enabled / running)
        notes.append(f"counter multiplexed: ran {running / enabled:.0%} of the time, figure scaled")
    return value, child.returncode, notes, (out or b"", err or b"") if capture else None


# ------------------------------------------------------------- valgrind


def valgrind_status() -> tuple[bool, str]:
    path = shutil.which("valgrind")
    if path is None:
        return False, "valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)"
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"valgrind --version failed: {exc}"
    return True, f"{version or 'valgrind'} cachegrind, whole process tree (~50x slower than native)"


def _parse_cachegrind(path: Path) -> tuple[int | None, str]:
    total, command = None, ""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("cmd:"):
            command = line[4:].strip()
        elif line.startswith("summary:"):
            total = int(line.split()[1])
    return total, command


def _count_valgrind(argv: list[str], env: Mapping[str, str], cwd: str | None, timeout: float | None,
                    capture: bool, confine: Confine | None
                    ) -> tuple[int, int, list[dict[str, Any]], list[str], tuple[bytes, bytes] | None]:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise InstructionsUnavailable("valgrind is not installed", hint="apt-get install valgrind")
    scratch = confine.scratch if confine is not None else None
    with tempfile.TemporaryDirectory(prefix=".perfpilot-cg-", dir=scratch) as tmp:
        command = [valgrind, "--tool=cachegrind", "--cache-sim=no", "--trace-children=yes",
                   f"--cachegrind-out-file={tmp}/cg.%p", f"--log-file={tmp}/vg.%p.log", *argv]
        pipe = subprocess.PIPE if capture else None
        if confine is not None:
            command = confine.wrap(command)
        child = subprocess.Popen(command, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe)
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise CountingFailed(f"the counting run under valgrind took over {timeout:.0f} s and was stopped",
                                 hint="valgrind runs ~50x slower than native: count a smaller workload") from None
        processes = []
        for path in sorted(Path(tmp).glob("cg.*")):
            total, cmd = _parse_cachegrind(path)
            if total is not None:
                processes.append({"pid": int(path.name.split(".")[1]), "command": cmd, "instructions": total})
        notes = []
        logs = sorted(Path(tmp).glob("vg.*.log"))
        if len(logs) > len(processes):
            notes.append(f"{len(logs) - len(processes)} process(es) wrote no count (killed, or exec'd a "
                         "setuid program valgrind cannot follow)")
        if not processes:
            last = _last_log_line(logs)
            raise CountingFailed(f"valgrind counted nothing running {shlex.join(argv)!r}"
                                 + (f": {last}" if last else ""),
                                 hint="run the command alone under valgrind to see why")
    total = sum(p["instructions"] for p in processes)
    return total, child.returncode, processes, notes, (out or b"", err or b"") if capture else None


def _last_log_line(logs: list[Path]) -> str:
    for path in logs:
        lines = [ln.split("==", 2)[-1].strip() for ln in path.read_text(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(("Cachegrind", "Copyright", "Using Valgrind"))]
        if lines:
            return lines[-1][:200]
    return ""


# ------------------------------------------------------ choosing a source


def sources() -> list[tuple[str, bool, str]]:
    """``(source, available, reason)`` for each source, best first (``perfpilot plugins``)."""
    return [("pmu", *pmu_status()), ("valgrind", *valgrind_status())]


def choose_source(requested: str | None = None) -> str:
    """The source to count with: ``requested`` (or $PERFPILOT_INSTRUCTIONS_SOURCE), else the best available."""
    requested = (requested or os.environ.get(SOURCE_ENV) or "auto").strip().lower()
    if requested not in ("auto", *SOURCES):
        raise ConfigError(f"unknown instructions source {requested!r}", hint="use auto, pmu or valgrind")
    found = {name: (ok, reason) for name, ok, reason in sources()}
    if requested != "auto":
        ok, reason = found[requested]
        if not ok:
            raise InstructionsUnavailable(f"instructions source {requested} is unavailable: {reason}")
        return requested
    for name in SOURCES:
        if found[name][0]:
            return name
    raise InstructionsUnavailable(
        "cannot count instructions here: " + "; ".join(f"{n}: {r}" for n, (_ok, r) in found.items()),
        hint="install valgrind (apt-get install valgrind), or use a machine whose CPU exposes hardware counters")


# ------------------------------------------------- the real interpreter


def _which(name: str, env: Mapping[str, str], cwd: str | None) -> str | None:
    if "/" in name:
        path = Path(cwd or ".", name)
        return str(path) if path.is_file() else None
    return shutil.which(name, path=env.get("PATH", os.defpath))


def _shebang(path: str) -> list[str] | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    return head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()


def _is_pyenv_shim(path: str) -> bool:
    try:
        return "pyenv" in Path(path).read_text(errors="replace")[:2000] and "/shims/" in path
    except OSError:
        return False


def resolve_command(argv: Sequence[str], env: Mapping[str, str], cwd: str | None = None) -> tuple[list[str], list[str]]:
    """``argv`` with launcher scripts replaced by the binary they would exec, and notes saying so.

    Handled: pyenv shims (``pyenv which NAME`` in the same env and cwd), ``#!/usr/bin/env
    NAME`` and ``#!/path/interp`` scripts (the interpreter runs the script directly). A
    script that is none of these (a shell wrapper) stays, with a note: valgrind then
    counts the shell's instructions too (still deterministic, but not your program's alone).
    """
    argv, notes = [str(a) for a in argv], []
    for _depth in range(4):
        path = _which(argv[0], env, cwd)
        if path is None:
            return argv, notes  # the launch itself reports "not found"
        shebang = _shebang(path)
        if shebang is None:
            return argv, notes
        if _is_pyenv_shim(path):
            real = _pyenv_which(Path(argv[0]).name, env, cwd)
            if real is None:
                notes.append(f"{argv[0]} is a pyenv shim that `pyenv which` could not resolve: valgrind counts "
                             "pyenv's bash processes too; give the real interpreter (e.g. sys.executable)")
                return argv, notes
            notes.append(f"resolved pyenv shim {argv[0]} to {real}")
            argv = [real, *argv[1:]]
            continue
        interpreter = shebang[0]
        if Path(interpreter).name == "env" and len(shebang) >= 2 and not shebang[1].startswith("-"):
            argv = [shebang[1], *shebang[2:], path, *argv[1:]]
        elif Path(interpreter).name in ("sh", "bash", "dash", "zsh") and _looks_python(argv[0]):
            notes.append(f"{argv[0]} is a shell script, not the interpreter: valgrind counts the shell too; "
                         "give the real interpreter (e.g. sys.executable)")
            return argv, notes
        else:
            argv = [*shebang, path, *argv[1:]]
    return argv, notes


def _looks_python(name: str) -> bool:
    return Path(name).name.startswith("python")


def _pyenv_which(name: str, env: Mapping[str, str], cwd: str | None) -> str | None:
    pyenv = shutil.which("pyenv", path=env.get("PATH", os.defpath))
    if pyenv is None:
        return None
    try:
        found = subprocess.run([pyenv, "which", name], env=dict(env), cwd=cwd, capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    real = found.stdout.strip()
    if found.returncode != 0 or not real or not os.path.isfile(real) or _is_pyenv_shim(real):
        return None  # e.g. without PYENV_ROOT/HOME pyenv answers with the shim itself
    return real


# ------------------------------------------------------------------ API


def pinned_env(env: Mapping[str, str]) -> dict[str, str]:
    """The run-to-run randomness pinned for counting: the caller's own value wins."""
    return {key: env.get(key, value) for key, value in PINNED_ENV.items()}


def count_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                  source: str | None = None, timeout: float | None = None,
                  capture_output: bool = False, confine: Confine | None = None) -> InstructionCount:
    """Count the user-space instructions of ``argv`` and all its descendants.

    ``env`` is added to ``os.environ`` (like :class:`perfpilot.profilers.session.RunOptions`).
    A command that exits non-zero still gives its count, with ``exit_code`` set: the
    caller decides whether a failed run may be judged (it may not, in a comparison).
    """
    if not argv:
        raise ConfigError("an empty command cannot be counted", hint='give one, e.g. "python app.py"')
    chosen = choose_source(source)
    if confine is None:
        argv, confine = launcher_confine(argv, cwd)
    full_env = {**os.environ, **{k: str(v) for k, v in (env or {}).items()}}
    pins = pinned_env(full_env)
    full_env.update(pins)
    real, notes = resolve_command(argv, full_env, cwd)
    if _which(real[0], full_env, cwd) is None:
        raise CountingFailed(f"command not found: {real[0]}", hint="check the spelling, or give a full path")
    processes: list[dict[str, Any]] = []
    if chosen == "pmu":
        total, code, more, output = _count_pmu(real, full_env, cwd, timeout, capture_output, confine)
    else:
        total, code, processes, more, output = _count_valgrind(real, full_env, cwd, timeout, capture_output, confine)
    return InstructionCount(
        instructions=int(total), source=chosen, exit_code=code if code >= 0 else 128 - code,
        signal=-code if code < 0 else None, pinned_env=pins, processes=processes, command=real,
        notes=[*notes, *more], output=output,
    )


def add_to_profile(profile: Profile, count: InstructionCount) -> None:
    """Put a count into a Profile: summary ``instructions``/``instructions_source`` and the details."""
    profile.summary[METRIC] = count.instructions
    profile.summary["instructions_source"] = count.source
    profile.annotations[METRIC] = count.annotation()


def counting_profile(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                     source: str | None = None, timeout: float | None = None,
                     capture_output: bool = False, confine: Confine | None = None) -> Profile:
    """A Profile of one counting run: ``instructions`` only (no ``wall_s``: under valgrind it means nothing)."""
    started = time.time()
    count = count_command(argv, env=env, cwd=cwd, source=source, timeout=timeout, capture_output=capture_output,
                          confine=confine)
    profile = Profile(
        target={"command": [str(a) for a in argv], "cwd": cwd or os.getcwd(), "pid": None,
                "exit_code": count.exit_code, "signal": count.signal, "attached": False, "counting_run": True},
        host=host_info(),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        duration_s=time.time() - started,
    )
    add_to_profile(profile, count)
    profile.annotations[METRIC]["wall_note"] = (
        "a counting run: its wall time is not reported" if count.source == "valgrind" else
        "a counting run, separate from the timed runs")
    profile.output = count.output
    return profile


def with_count(timed: Callable[[], Profile], argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               cwd: str | None = None, source: str | None = None, timeout: float | None = None,
               confine: Confine | None = None) -> Profile:
    """A timed run (``timed()``) followed by a counting run of the same command, merged into one Profile."""
    profile = timed()
    if profile.exit_code:
        return profile  # no point counting a failed run; the caller reports the failure
    # The timed run's output is the one kept; the counting run's is captured and dropped.
    count = count_command(argv, env=env, cwd=cwd, source=source, timeout=timeout, capture_output=True,
                          confine=confine)
    add_to_profile(profile, count)
    if count.exit_code:
        profile.annotations[METRIC]["notes"].append(f"the counting run exited with {count.exit_code}")
        profile.target["exit_code"] = count.exit_code  # a run that failed either way is a failed run
    return profile


def describe(profile: Profile) -> str | None:
    """``"396,590,112 instructions (valgrind, PYTHONHASHSEED=0)"`` for a Profile that has a count."""
    value = profile.summary.get(METRIC)
    if not isinstance(value, int):
        return None
    details = profile.annotations.get(METRIC, {})
    pins = ", ".join(f"{k}={v}" for k, v in (details.get("pinned_env") or {}).items())
    return f"{value:,} instructions ({profile.summary.get('instructions_source', '?')}{', ' + pins if pins else ''})"


# ------------------------------------------- hooks for compare/optimize

# An instruction-count win must not hide a wall-time loss (fewer instructions that
# stall more, e.g. on memory): optimising instructions keeps this wall guard unless the
# user sets their own `wall` guard, or `wall = "off"` to drop it.
DEFAULT_WALL_GUARD = "+10%"
GUARD_OFF = ("off", "none")


def needs_count(metrics: Sequence[str]) -> bool:
    return METRIC in metrics


def launcher_confine(argv: Sequence[str], cwd: str | None) -> tuple[list[str], Confine | None]:
    """``sh -c '... "$@"' NAME CMD...`` (a launcher that execs its arguments, e.g. the optimiser's
    bubblewrap sandbox) -> ``(CMD, Confine)``: valgrind must run inside such a launcher, not around
    it (outside, it cannot follow into the sandbox's namespaces and private /tmp). Its files go
    to ``cwd``, the one folder a sandboxed run may write. Any other command: ``(argv, None)``.
    """
    argv = [str(a) for a in argv]
    if len(argv) > 4 and Path(argv[0]).name in ("sh", "bash", "dash") and argv[1] == "-c" and '"$@"' in argv[2]:
        prefix = argv[:4]
        return argv[4:], Confine(wrap=lambda command: [*prefix, *command], scratch=cwd)
    return argv, None


def measured_run(metrics: Sequence[str], argv: Sequence[str], *, timed: Callable[[], Profile],
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 capture_output: bool = False, confine: Confine | None = None) -> Profile:
    """One run of a comparison or baseline that must yield ``metrics``.

    Without ``instructions``: the timed run alone. With only ``instructions``: a counting
    run alone (no wall time: under valgrind it means nothing). With both: the timed run,
    then a separate counting run of the same command, merged into one Profile.
    """
    if not needs_count(metrics):
        return timed()
    if all(m == METRIC for m in metrics):
        return counting_profile(argv, env=env, cwd=cwd, capture_output=capture_output, confine=confine)
    return with_count(timed, argv, env=env, cwd=cwd, confine=confine)


def default_guards(objective: str, guards: Mapping[str, Any] | None) -> dict[str, Any]:
    """``guards`` plus the default wall guard when optimising instructions; ``wall = "off"`` drops it."""
    out = dict(guards or {})
    if objective == METRIC and "wall" not in out:
        out["wall"] = DEFAULT_WALL_GUARD
    return {metric: limit for metric, limit in out.items() if str(limit).strip().lower() not in GUARD_OFF}


def count_into(profile: Profile, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               cwd: str | None = None, source: str | None = None) -> str:
    """``perfpilot profile --instructions``: add a separate counting run's figure; a line saying what happened."""
    if profile.exit_code or profile.target.get("signal") or profile.target.get("interrupted"):
        profile.annotations[METRIC] = {"not_counted": "the timed run failed or was interrupted"}
        return "instructions: not counted (the timed run did not succeed)"
    count = count_command(argv, env=env, cwd=cwd, source=source)
    add_to_profile(profile, count)
    if count.exit_code:
        profile.annotations[METRIC]["notes"].append(f"the counting run exited with {count.exit_code}")
    return describe(profile) or ""
