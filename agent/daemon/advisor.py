"""``--propose``: a finding's hot spots go to the optimiser's proposer; what it proposes
is stored, never applied.

When a finding is raised (and its process has hot spots, or ``wait_s`` has passed
without any), the advisor builds the optimiser's :class:`~perfpilot.agent.context.Context`
for the process behind it -- its hot spots with source, the watch's telemetry, the
finding as the bottleneck -- and asks the configured proposer (``llm`` with any backend:
``openai``, ``mock``) on its own thread, so a slow or dead LLM never delays sampling.
The question is asked as pytest's ``--perfpilot-suggest`` asks it (:mod:`perfpilot.agent.advice`: the
optimiser's own context and reply parser); the result is written to the store's
``proposals`` table and shown by ``/api/proposals`` and ``perfpilot daemon proposals``:

    ok       the reply held usable proposals (stored as the optimiser's proposal dicts)
    invalid  the reply could not be used (the parser's problems are stored)
    failed   the backend failed (unreachable, auth, rate limit...): its error is stored

Which process: for a watch's finding, the watch's process that has hot spots and uses
the most CPU; for a host finding (CPU saturation, I/O wait), the busiest watched process
with hot spots. CPU steal gets no proposal: it is the hypervisor's doing, not the code's.

Rate limit: at most one request per (finding kind, process command line) per
``every`` (default 1 h; ``[daemon] propose_every``), remembered across restarts through
the store. A failed request may be retried after ``min(every, 10 min)``.

Secrets: the process's environment is never read; its command line is sent with
secret-looking values masked (``--token X``, ``password=X``, key patterns); quoted
source is masked and secret files are never quoted (the optimiser's rules); and every
message is masked again as a whole, including the daemon's own bearer token and the
LLM API key should either appear anywhere.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from perfpilot.agent.advice import Question, ask
from perfpilot.agent.context import MASK, Context, mask_secrets
from perfpilot.agent.daemon.sampler import WatchState
from perfpilot.agent.proposers import Proposer

log = logging.getLogger("perfpilot.daemon")

NO_PROPOSALS_FOR = {"cpu_steal"}
OBJECTIVE = {"cpu_saturation": "cpu", "memory_growth": "peak_rss", "gpu_idle": "gpu_memory", "io_wait": "wall",
             "restarts": "wall"}
BOTTLENECK = {"memory_growth": "memory growth (leak suspected)", "gpu_idle": "GPU under-used",
              "io_wait": "I/O", "restarts": "crashes (the process restarts often)"}
FAILED_RETRY_S = 600.0
CHECK_EVERY_S = 5.0  # how often findings waiting for hot spots look again
MAX_QUEUE = 16
_SECRET_FLAG = re.compile(r"(?i)^-{1,2}[\w.-]*(?:key|secret|token|passw(?:or)?d|credential|auth)[\w.-]*$")


def mask_argv(argv: Iterable[str]) -> list[str]:
    """A command line safe to send: ``--token X`` and ``--password=X`` lose their values."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        flag, eq, _value = arg.partition("=")
        if _SECRET_FLAG.match(flag):
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(mask_secrets(arg))
    return out


@dataclass
class Request:
    finding: dict[str, Any]
    key: tuple[str, str]
    pid: int | None
    command: str
    hotspots: list[dict[str, Any]]
    state: WatchState | None
    cwd: str | None
    argv: tuple[str, ...]


@dataclass
class AdvisorStats:
    requested: int = 0
    ok: int = 0
    invalid: int = 0
    failed: int = 0
    rate_limited: int = 0
    dropped: int = 0  # queue full


class Advisor:
    """Turns findings into stored proposals; one worker thread, bounded queue."""

    def __init__(self, proposer: Proposer, *, backend: str, store: Any, every: float, wait_s: float, window: float,
                 hotspots: Callable[[], dict[int, tuple[list[str], list[dict[str, Any]]]]],
                 process: Callable[[int], Any], budget_tokens: int = 12000, secrets: Iterable[str] = ()) -> None:
        """``hotspots()``: pid -> (watches, rolling hot spots); ``process(pid)``: its
        :class:`~perfpilot.agent.daemon.watch.ProcInfo` or None."""
        self.proposer = proposer
        self.backend = backend
        self.store = store
        self.every = every
        self.wait_s = wait_s
        self.window = window
        self.hotspots = hotspots
        self.process = process
        self.budget_tokens = budget_tokens
        self.secrets = tuple(s for s in secrets if s)
        self.stats = AdvisorStats()
        self.last: dict[tuple[str, str], tuple[float, str, int | None]] = {}  # key -> (ts, status, proposal id)
        self.waiting: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, entity) -> finding
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)  # what the API shows when the store cannot
        self._queue: queue.Queue[Request | None] = queue.Queue(MAX_QUEUE)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._next_check = -math.inf

    # --------------------------------------------------------------- lifecycle

    def load_history(self) -> None:
        """The rate limit's memory from the store (requests made before a restart)."""
        self.last.update(self.store.proposal_history(since=time.time() - self.every))

    def start(self) -> None:
        self.load_history()
        self._thread = threading.Thread(target=self._loop, name="perfpilot-propose", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # an LLM call in flight is abandoned, not awaited

    # ---------------------------------------------------------------- on ticks

    def note(self, findings: Iterable[dict[str, Any]]) -> None:
        """Findings that changed this tick: newly raised ones wait for a proposal."""
        for finding in findings:
            key = (finding["kind"], finding["entity"])
            if not finding.get("active"):
                self.waiting.pop(key, None)
            elif finding["first_seen"] == finding["last_seen"] and finding["kind"] not in NO_PROPOSALS_FOR:
                self.waiting[key] = finding
                self._next_check = -math.inf  # a new finding is looked at on this tick

    def tick(self, now: float, watches: dict[str, WatchState]) -> None:
        """Ask about waiting findings whose process has hot spots (or waited long enough)."""
        if not self.waiting or now < self._next_check:
            return
        # Rolling hot spots are merged (and their source read) for this: not every tick.
        self._next_check = now + CHECK_EVERY_S
        spots = None
        for key, finding in list(self.waiting.items()):
            if not finding.get("active"):
                del self.waiting[key]
                continue
            if spots is None:
                spots = self.hotspots()
            chosen = self._choose(finding, watches, spots)
            if chosen is None and now - finding["first_seen"] < self.wait_s:
                continue  # hot spots come with the next snapshot round
            del self.waiting[key]
            self._submit(now, finding, chosen, watches)

    def _choose(self, finding: dict[str, Any], watches: dict[str, WatchState],
                spots: dict[int, tuple[list[str], list[dict[str, Any]]]]) -> tuple[int, list[dict[str, Any]]] | None:
        entity = finding["entity"]
        cpu: dict[int, float] = {}
        for watch, state in watches.items():
            if entity in ("host", watch):
                for pid, _name, cpu_pct, _rss, _threads in state.rows:
                    cpu[pid] = max(cpu.get(pid, 0.0), cpu_pct)
        candidates = [(cpu.get(pid, -1.0), pid) for pid, (owners, hot) in spots.items()
                      if hot and (entity == "host" or entity in owners) and (entity != "host" or pid in cpu)]
        if not candidates:
            return None
        _cpu, pid = max(candidates)
        return pid, spots[pid][1]

    def _submit(self, now: float, finding: dict[str, Any], chosen: tuple[int, list[dict[str, Any]]] | None,
                watches: dict[str, WatchState]) -> None:
        entity = finding["entity"]
        pid: int | None = None
        hotspots: list[dict[str, Any]] = []
        if chosen is not None:
            pid, hotspots = chosen
        elif entity != "host":
            state = watches.get(entity)
            if state is not None and state.rows:
                pid = max(state.rows, key=lambda r: r[2])[0]
        info = self.process(pid) if pid is not None else None
        argv = tuple(info.cmdline) if info is not None else ()
        command = " ".join(mask_argv(argv)) if argv else (f"[{info.name}]" if info is not None else entity)
        key = (finding["kind"], command)
        last = self.last.get(key)
        if last is not None:
            wait = self.every if last[1] != "failed" else min(self.every, FAILED_RETRY_S)
            if now - last[0] < wait:
                self.stats.rate_limited += 1
                if last[2] is not None:
                    # The same process's earlier proposal answers this finding too.
                    finding["proposal"] = {"id": last[2], "status": "rate-limited", "titles": []}
                    self.store.put_finding(finding)
                log.info("perfpilot daemon: no proposal for %s on %s: one was asked %.0f s ago (limit: one per %.0f s)",
                         finding["kind"], command[:80], now - last[0], wait)
                return
        cwd = None
        if pid is not None:
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                cwd = None
        state = watches.get(entity)
        if state is None and pid is not None:  # a host finding: the watch the chosen process is in
            state = next((st for st in watches.values() if any(r[0] == pid for r in st.rows)), None)
        request = Request(finding, key, pid, command, hotspots, state, cwd, argv)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            self.stats.dropped += 1
            return
        self.last[key] = (now, "pending", None)
        self.stats.requested += 1

    # ----------------------------------------------------------------- worker

    def run_pending(self) -> list[dict[str, Any]]:
        """Handle what is queued on the calling thread (embedding and tests; the daemon's
        worker thread does this)."""
        records = []
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return records
            if request is not None:
                records.append(self.handle(request))

    def _loop(self) -> None:
        while not self._stop.is_set():
            request = self._queue.get()
            if request is None or self._stop.is_set():
                break
            try:
                self.handle(request)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any one request
                log.warning("perfpilot daemon: proposal worker: %s: %s", type(exc).__name__, exc)

    def handle(self, request: Request) -> dict[str, Any]:
        """Ask the proposer and record the outcome (called on the worker thread)."""
        finding = request.finding
        answer = ask(self.proposer, self.context(request))
        status, proposals = answer.status, answer.proposals
        now = time.time()
        record = {
            "ts": now, "kind": finding["kind"], "entity": finding["entity"], "pid": request.pid,
            "process": request.command, "status": status, "backend": self.backend,
            "finding": finding.get("message", ""), "proposals": proposals, "error": answer.error[:2000],
            "request": answer.messages, "applied": False,
        }
        record["id"] = self.store.add_proposal(record)
        self.recent.append(record)
        self.last[request.key] = (now, status, record["id"])
        setattr(self.stats, status, getattr(self.stats, status) + 1)
        finding["proposal"] = {"id": record["id"], "status": status,
                               "titles": [p.get("title") or p.get("kind") for p in proposals]}
        self.store.put_finding(finding)  # active or resolved meanwhile: the link is kept either way
        if status == "ok":
            log.info("perfpilot daemon: %d proposal(s) stored for %s on %s (not applied): %s", len(proposals),
                     finding["kind"], request.command[:80], "; ".join(finding["proposal"]["titles"])[:200])
        else:
            log.warning("perfpilot daemon: proposal for %s on %s %s: %s", finding["kind"], request.command[:80],
                        status, answer.error[:300])
        return record

    def context(self, request: Request) -> Context:
        """The optimiser's context for one finding's process."""
        return self.question(request).context()

    def question(self, request: Request) -> Question:
        finding = request.finding
        details = finding.get("details") or {}
        window = float(details.get("span_s") or details.get("window_s") or self.window)
        summary: dict[str, Any] = {"wall_s": window}
        state = request.state
        if state is not None and state.processes:
            summary["cpu_utilization_mean_pct"] = round(state.cpu_pct, 1)
            summary["cpu_user_s"] = round(state.cpu_pct / 100.0 * window, 3)  # user+system, as the daemon reads it
            summary["cpu_system_s"] = 0.0
            summary["peak_rss_bytes"] = state.rss_bytes
            summary["processes"] = state.processes
            summary["threads"] = state.threads
            if state.gpu_memory_bytes:
                summary["gpu_memory_peak_bytes"] = state.gpu_memory_bytes
        for key, value in details.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                summary[f"finding.{key}"] = value
        label = BOTTLENECK.get(finding["kind"])  # None: the classifier's, from the figures
        why = f"perfpilot daemon finding {finding['kind']}: {finding.get('message', '')}"
        return Question(project=_project_root(request.argv, request.cwd), command=request.command,
                        objective=OBJECTIVE.get(finding["kind"], "cpu"), bottleneck=(label, why), summary=summary,
                        hotspots=list(request.hotspots), duration_s=window, budget_tokens=self.budget_tokens,
                        pid=request.pid, secrets=self.secrets)

    def listing(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "request"} for r in reversed(self.recent)]


def _project_root(argv: tuple[str, ...], cwd: str | None) -> Path:
    """Where the process's own code lives: its script's directory, else its working
    directory; never ``/`` (that would make every library on the host "the project")."""
    base = Path(cwd) if cwd else None
    script = None
    if argv:
        first = os.path.basename(argv[0])
        if re.match(r"^(python|pypy)[0-9.]*$", first):
            rest = [a for a in argv[1:] if not a.startswith("-")]
            script = rest[0] if rest and (argv[1:2] != ("-m",) and argv[1:2] != ("-c",)) else None
    for candidate in ([(base / script).parent if base and script else None, Path(script).parent if script else None,
                       base]):
        if candidate is not None and candidate.is_absolute() and candidate.is_dir() and str(candidate) != "/":
            return candidate.resolve()
    return Path("/nonexistent-perfpilot-project")  # nothing quoted: hot spots are named only
