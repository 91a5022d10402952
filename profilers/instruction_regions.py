"""Instructions of one region of code inside this process (e.g. a pytest test's call phase).

Two ways, chosen by :func:`region_counter`:

``pmu``
    A hardware counter opened on this process (``inherit=1``: threads and children it
    starts are included once they exit), read before and after the region.
``valgrind``
    The whole process runs under ``valgrind --tool=callgrind --instr-atstart=no``
    (:func:`valgrind_command` builds that command; perfpilot's pytest plugin relaunches
    the session with it). Nothing is simulated outside regions, so start-up and
    collection run at valgrind's uninstrumented speed. Around a region, valgrind client
    requests from a tiny C helper -- ``CALLGRIND_ZERO_STATS``,
    ``CALLGRIND_START_INSTRUMENTATION``, then ``CALLGRIND_STOP_INSTRUMENTATION`` and
    ``CALLGRIND_DUMP_STATS_AT(label)`` -- make callgrind write the region's ``Ir`` to a
    file, read at once. This is how pytest-codspeed's instrumentation mode works too.
    The helper is compiled at launch with ``gcc`` against ``<valgrind/callgrind.h>``
    (Debian packages ``gcc`` and ``valgrind``); processes the region starts are not
    counted (they are not traced).

Cost: each region flushes valgrind's translation cache (start/stop instrumentation),
so every test pays a re-translation of the code it runs: roughly a second per test on
top of ~50x slower execution of the call itself.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from perfpilot.errors import PerfpilotError
from perfpilot.profilers import instructions

HELPER_ENV = "PERFPILOT_CALLGRIND_HELPER"  # the compiled helper, set by the launcher
DUMPS_ENV = "PERFPILOT_CALLGRIND_DIR"  # where callgrind writes its dumps

HELPER_C = r"""
#include <valgrind/callgrind.h>
int perfpilot_on_valgrind(void) { return RUNNING_ON_VALGRIND; }
void perfpilot_region_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void perfpilot_region_stop(const char *label) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS_AT(label); }
void perfpilot_collect_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_TOGGLE_COLLECT; }
void perfpilot_collect_stop(const char *label) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS_AT(label); }
"""
MODE_ENV = "PERFPILOT_CALLGRIND_MODE"  # "instrument" (default) or "collect"


class HelperBuildFailed(PerfpilotError):
    """The C helper for valgrind client requests could not be compiled."""


def build_helper(folder: Path) -> Path:
    """Compile the client-request helper into ``folder``; a one-line error says what is missing."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise HelperBuildFailed("counting instructions per test under valgrind needs a C compiler, and none is "
                                "installed", hint="apt-get install gcc")
    if not Path("/usr/include/valgrind/callgrind.h").is_file() and not _header_elsewhere():
        raise HelperBuildFailed("valgrind's header <valgrind/callgrind.h> is missing",
                                hint="apt-get install valgrind (Debian ships the headers with it)")
    source = folder / "perfpilot_callgrind.c"
    source.write_text(HELPER_C)
    library = folder / "perfpilot_callgrind.so"
    done = subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise HelperBuildFailed(f"compiling the valgrind helper failed: {last[:200]}",
                                hint="check gcc and valgrind's headers")
    return library


def _header_elsewhere() -> bool:
    probe = subprocess.run(["sh", "-c", "echo '#include <valgrind/callgrind.h>' | cc -E - >/dev/null 2>&1"])
    return probe.returncode == 0


def valgrind_command(argv: Sequence[str], folder: Path, env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` under callgrind with regions, and the environment it needs (helper, dump folder, hash seed)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise instructions.InstructionsUnavailable("valgrind is not installed", hint="apt-get install valgrind")
    helper = build_helper(folder)
    mode = env.get(MODE_ENV, "instrument")
    full = {**env, **instructions.pinned_env(env), HELPER_ENV: str(helper), DUMPS_ENV: str(folder), MODE_ENV: mode}
    real, _notes = instructions.resolve_command(argv, full)
    atstart = ["--instr-atstart=no"] if mode == "instrument" else ["--instr-atstart=yes", "--collect-atstart=no"]
    command = [valgrind, "--tool=callgrind", *atstart, "--trace-children=no", "--dump-line=no",
               "--compress-strings=no", "--compress-pos=no", f"--callgrind-out-file={folder}/cg.%p",
               f"--log-file={folder}/valgrind.log", *real]
    return command, full


class CallgrindRegions:
    """Regions of this process counted by callgrind (this process runs under :func:`valgrind_command`)."""

    source = "valgrind"

    def __init__(self, helper: str, folder: str) -> None:
        self.lib = ctypes.CDLL(helper)
        instrument = os.environ.get(MODE_ENV, "instrument") == "instrument"
        self._start = self.lib.perfpilot_region_start if instrument else self.lib.perfpilot_collect_start
        self._stop = self.lib.perfpilot_region_stop if instrument else self.lib.perfpilot_collect_stop
        self._stop.argtypes = [ctypes.c_char_p]
        self.folder = Path(folder)
        self.pattern = f"cg.{os.getpid()}.*"

    def on_valgrind(self) -> bool:
        return bool(self.lib.perfpilot_on_valgrind())

    def start(self) -> None:
        for stale in self.folder.glob(self.pattern):
            stale.unlink()
        self._start()

    def stop(self, label: str) -> int:
        self._stop(label.encode("utf-8", "replace")[:500])
        total = 0
        for dump in self.folder.glob(self.pattern):
            total += _dump_total(dump)
            dump.unlink()
        return total


def _dump_total(path: Path) -> int:
    # `totals:` is the dump's own events; `summary:` can read 0 in a client-request dump.
    found = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            found[line.split(":", 1)[0]] = int(line.split()[1])
    return found.get("totals", found.get("summary", 0))


class PmuRegions:
    """Regions counted by a hardware counter on this process (threads and children inherited)."""

    source = "pmu"

    def __init__(self) -> None:
        flags = instructions.FLAG_INHERIT | instructions.FLAG_EXCLUDE_KERNEL | instructions.FLAG_EXCLUDE_HV
        fd = instructions.perf_event_open(0, flags)
        if fd < 0:
            raise instructions.InstructionsUnavailable(instructions.pmu_refusal(-fd))
        self.fd = fd
        self.before = 0

    def _read(self) -> int:
        value, _enabled, _running = struct.unpack("QQQ", os.read(self.fd, 24))  # position is ignored
        return value

    def start(self) -> None:
        self.before = self._read()

    def stop(self, label: str) -> int:  # noqa: ARG002 - same shape as CallgrindRegions
        return self._read() - self.before


def region_counter() -> tuple[Any | None, str]:
    """A region counter for this process, or ``(None, why not)``: callgrind when launched under it, else the PMU."""
    helper, folder = os.environ.get(HELPER_ENV), os.environ.get(DUMPS_ENV)
    if helper and folder:
        counter = CallgrindRegions(helper, folder)
        if counter.on_valgrind():
            return counter, "valgrind (callgrind, per-region client requests)"
        return None, f"{HELPER_ENV} is set but this process is not running under valgrind"
    ok, reason = instructions.pmu_status()
    if ok:
        return PmuRegions(), reason
    return None, reason


def scratch_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="perfpilot-callgrind-"))
