"""Candidates' processes under bubblewrap: the code a proposal brings runs with the
project's copy writable and nothing else.

Every run of the optimiser's test and run commands (the baseline's too, so both sides of
a verification start the same way and the sandbox cannot bias A against B) is launched as
``bwrap … -- <command>`` with:

- the whole filesystem read-only (``--ro-bind / /``), ``/tmp`` a private tmpfs, and only
  the side's own copy of the project bound writable (a test that writes to ``~`` or to
  ``/etc`` gets "Read-only file system");
- its own network namespace (``--unshare-net``): loopback only, so servers a test
  starts on 127.0.0.1 work and nothing leaves the machine;
- a minimal ``/dev`` (plus the GPU device nodes when present) and every capability
  dropped, so running as root does not let a candidate remount ``/`` writable.

The pid namespace is *not* unshared: py-spy and the collectors outside attach to the
PIDs they see, which are the real ones. bwrap waits for its child and exits with its
status, so rusage of reaped children (CPU time, peak RSS) still covers the command.

The measuring session hands the run a metrics file under the real ``/tmp``
(``PERFPILOT_METRICS_FILE``); a tiny ``sh`` shim binds that one file into the sandbox
at launch and ``exec``s bwrap, so the PID the session started is bwrap's.

Modes: ``auto`` (default: on where bubblewrap works), ``on`` (an error where it does
not), ``off``. Setting ``sandbox`` in ``[tool.perfpilot]``, ``PERFPILOT_SANDBOX`` or
``--sandbox`` selects one.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from perfpilot.errors import ConfigError

MODES = {"auto": "auto", "on": "on", "true": "on", "yes": "on", "1": "on",
         "off": "off", "false": "off", "no": "off", "0": "off"}
BWRAP_ENV = "PERFPILOT_BWRAP"  # path to a bwrap executable (tests point it at a missing one)
METRICS_VAR = "PERFPILOT_METRICS_FILE"
_DEVICES = ("/dev/nvidia*", "/dev/dri", "/dev/kfd")  # GPUs: CUDA and ROCm need their device nodes
_ERRORS = {  # what a sandboxed failure's output says -> what to tell the user
    "Read-only file system": "it tried to write outside its copy of the project",
    "Network is unreachable": "it tried to reach the network",
    "Temporary failure in name resolution": "it tried to reach the network",
    "Name or service not known": "it tried to reach the network",
}


def parse_mode(value: object) -> str:
    mode = MODES.get(str(value).strip().lower())
    if mode is None:
        raise ConfigError(f"sandbox = {value!r}: expected auto, on or off",
                          hint="auto (the default) sandboxes where bubblewrap works; off opts out")
    return mode


def _flags(bwrap: str, writable: Path) -> list[str]:
    flags = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev"]
    for pattern in _DEVICES:
        for device in sorted(glob.glob(pattern)):
            flags += ["--dev-bind-try", device, device]
    writable = writable.resolve()
    flags += ["--proc", "/proc", "--tmpfs", "/tmp"]
    for path in _kept_from_tmp():  # read-only again over the private /tmp
        flags += ["--ro-bind-try", path, path]
    flags += ["--bind", str(writable), str(writable), "--unshare-net", "--die-with-parent", "--cap-drop", "ALL"]
    return flags


def _kept_from_tmp() -> list[str]:
    """What the runs need that may live under /tmp: the interpreter, its environment and
    perfpilot itself (a venv or a checkout made with ``mktemp -d``). Hidden by the
    private /tmp, a venv there would leave the sandboxed tests without their Python."""
    here = Path(__file__).resolve().parents[1]  # the checkout (editable) or site-packages
    found = {Path(p).resolve() for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, here)}
    found.add(Path(sys.executable).resolve().parent)
    return sorted(str(p) for p in found if p.is_relative_to("/tmp") and p != Path("/tmp"))


def _findable(command: str, cwd: Path) -> bool:
    if "/" in command:
        return os.access(cwd / command, os.X_OK)  # an absolute path replaces cwd in the join
    return shutil.which(command) is not None


@lru_cache(maxsize=4)
def probe(bwrap: str) -> str | None:
    """None when ``bwrap`` can build this sandbox here, else why not (one line)."""
    with tempfile.TemporaryDirectory(prefix="perfpilot-sandbox-probe-") as tmp:
        try:
            done = subprocess.run([*_flags(bwrap, Path(tmp)), "--", "true"], capture_output=True, text=True,
                                  timeout=20, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{bwrap} did not run: {exc}"
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
        return f"bubblewrap cannot create its namespaces here ({first})"
    return None


@dataclass(frozen=True)
class Sandbox:
    """How candidate commands are launched; :meth:`wrap` is the identity when inactive."""

    mode: str
    bwrap: str | None = None
    note: str | None = None  # why it is off in auto mode (shown once, kept in the report)

    @property
    def active(self) -> bool:
        return self.bwrap is not None

    @classmethod
    def create(cls, setting: object = "auto") -> "Sandbox":
        mode = parse_mode(setting)
        if mode == "off":
            return cls(mode)
        bwrap = os.environ.get(BWRAP_ENV) or shutil.which("bwrap")
        why = "bubblewrap (bwrap) is not installed" if not bwrap or not os.access(bwrap, os.X_OK) else probe(bwrap)
        if why is None:
            return cls(mode, bwrap)
        if mode == "on":
            raise ConfigError(f"sandbox = on, but {why}",
                              hint="install bubblewrap (Debian/Ubuntu: apt install bubblewrap) or pass --sandbox off")
        return cls(mode, note=f"candidates run without a sandbox: {why}; install bubblewrap "
                              "(apt install bubblewrap) to confine them, or pass --sandbox off to silence this")

    def wrap(self, argv: Sequence[str], writable: Path) -> list[str]:
        """``argv`` launched inside the sandbox, with ``writable`` (its copy of the project) writable."""
        if self.bwrap is None or not _findable(argv[0], Path(writable)):
            # Not found: launched as is, so the caller's own "command not found" error says so
            # (inside bwrap it would be an exit status 1 and a line on stderr).
            return list(argv)
        flags = shlex.join(_flags(self.bwrap, Path(writable)))
        # exec twice over: the PID the caller started ends up bwrap's, whose child is the command.
        script = (f'if [ -n "${{{METRICS_VAR}:-}}" ] && [ -f "${METRICS_VAR}" ]; then '
                  f'exec {flags} --bind "${METRICS_VAR}" "${METRICS_VAR}" -- "$@"; fi; exec {flags} -- "$@"')
        return ["sh", "-c", script, "perfpilot-sandbox", *argv]

    def explain(self, output: str) -> str:
        """A line to add to a sandboxed command's failure output when the sandbox caused it."""
        if self.bwrap is None:
            return ""
        missing = re.search(r"No such file or directory: '(/tmp/[^']+)'", output)
        if missing:
            return (f"\n(perfpilot sandbox: {missing.group(1)} is outside its copy of the project, and /tmp is "
                    "private to the sandbox. --sandbox off runs candidates unconfined)")
        for needle, why in _ERRORS.items():
            if needle in output:
                return (f"\n(perfpilot sandbox: {why} — \"{needle}\"; only the project's copy is writable and "
                        "only loopback is reachable. --sandbox off runs candidates unconfined)")
        return ""
