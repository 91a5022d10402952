"""The daemon: one sampling thread on a monotonic schedule, a snapshot thread, an HTTP
thread, and the main thread waiting for SIGTERM/SIGINT.

Each tick: rescan watched processes, read them, read the host, run the collectors (each
isolated; one that raises is recorded and, after repeated failures, disabled), read
GPUs, hand everything to the store's buffer and the findings engine, and publish a new
state for ``/metrics``. With ``propose``, newly raised findings go to the
:class:`~perfpilot.agent.daemon.advisor.Advisor`, which asks the LLM proposer on its
own thread (a slow backend never delays a tick). Every step of a tick is guarded: an error is logged, counted
(``perfpilot_tick_errors_total``) and the next tick runs.

Shutdown (SIGTERM, SIGINT, or :meth:`Daemon.stop`): the sampler finishes its tick, the
py-spy child is killed, the store flushes and checkpoints, the HTTP server stops; the
process exits 0. All of it takes well under a second.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfpilot import __version__
from perfpilot.agent.daemon.config import PROPOSE_NEEDS_BACKEND, DaemonConfig, is_loopback, join_listen
from perfpilot.agent.daemon.exporter import Exporter, HeldValues
from perfpilot.agent.daemon.findings import KINDS, FindingEngine
from perfpilot.agent.daemon.sampler import CollectorRunner, GpuProbe, HostProbe, ProcessSampler
from perfpilot.agent.daemon.snapshots import Snapshotter
from perfpilot.agent.daemon.store import Store
from perfpilot.agent.daemon.watch import Watcher
from perfpilot.errors import ConfigError

if TYPE_CHECKING:
    from perfpilot.agent.daemon.advisor import Advisor

log = logging.getLogger("perfpilot.daemon")

MAX_LOGGED_ERRORS = 20


@dataclass
class TickCounters:
    ticks: int = 0
    late: int = 0
    seconds: float = 0.0
    errors: int = 0
    last_tick: float = 0.0  # time.time() of the last completed tick
    recent_errors: list[str] = field(default_factory=list)


class Daemon:
    def __init__(self, config: DaemonConfig, *, collectors: list[Any] | None = None, nvml: Any = None,
                 problems: list[str] | None = None, proposer: Any = None, backend: str = "",
                 budget_tokens: int = 12000, secrets: list[str] | None = None) -> None:
        """``collectors``: instances to run for host telemetry (the CLI builds them from
        the plugin registry); ``nvml``: a pynvml-like module (tests pass a fake);
        ``problems``: plugins that could not be loaded, reported as degraded;
        ``proposer``: the optimiser's proposer (``llm`` with a backend) for ``propose``;
        ``secrets``: strings that must never reach it (API keys)."""
        if config.propose and proposer is None:
            raise ConfigError(PROPOSE_NEEDS_BACKEND)
        self.config = config
        self.problems = list(problems or [])
        self.store = Store(config.db, max_bytes=config.max_db_bytes, raw_retention=config.raw_retention,
                           rollup_retention=config.rollup_retention, rollup_step=config.rollup_step)
        self.started_at = time.time()
        self.watcher = Watcher(config.watch, exclude={os.getpid()}, top_every=config.top_every,
                               max_per_group=config.max_processes_per_watch,
                               restart_window=config.findings.restarts_window)
        self.watch_lock = threading.Lock()
        self.processes = ProcessSampler(self.watcher, started_at=self.started_at)
        self.host = HostProbe()
        self.collectors = CollectorRunner(collectors or [])
        self.gpu = GpuProbe(nvml)
        self.findings = FindingEngine(config.findings, config.interval)
        self.snapshots = Snapshotter(config.snapshots, self.watcher, self.watch_lock, self._on_hotspots)
        self.counters = TickCounters()
        self.advisor: "Advisor | None" = None
        if config.propose:
            from perfpilot.agent.daemon.advisor import Advisor  # the optimiser's context: only when proposing

            snaps = config.snapshots
            token = config.resolved_token()
            self.advisor = Advisor(
                proposer, backend=backend, store=self.store, every=config.propose_every,
                # hot spots come with the next snapshot round: wait for it, not forever
                wait_s=max(2 * snaps.every + snaps.duration, 10.0) if snaps.enabled and self.snapshots.available else 0.0,
                window=config.findings.window, hotspots=self.snapshots.by_process, process=self._process_info,
                budget_tokens=budget_tokens, secrets=[*(secrets or []), *([token] if token else [])])
        self.exporter: Exporter | None = None
        self._state: dict[str, Any] = {"watches": {}}
        self._collector_values = HeldValues(keep_s=max(5 * config.interval, 5.0))  # see exporter.HeldValues
        self._version = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_flush = 0.0
        self._last_maintain = 0.0
        self._gpu_ok = False

    # --------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Open the store and the port (errors here are the user's to fix), then start threads."""
        self.store.open()
        if self.store.stats.opened_after_crash:
            log.warning("perfpilot daemon: %s was not closed cleanly last time; checked it, it is sound",
                        self.config.db)
        token = self.config.resolved_token()
        try:
            self.exporter = Exporter(self.config.host, self.config.port, token=token, state=self.state,
                                     api=self.api, version=lambda: self._version)
        except BaseException:
            self.store.close()
            raise
        if self.advisor is not None:
            self.advisor.start()
        self.collectors.start()
        self._gpu_ok = self.gpu.start()
        self.exporter.start()
        # where this database's daemon really listens (port 0 picks one): `daemon status --db` asks there
        self.store.set_meta("listen", join_listen(self.exporter.host, self.exporter.port))
        self._tick()
        self._thread = threading.Thread(target=self._loop, name="perfpilot-sampler", daemon=True)
        self._thread.start()
        self.snapshots.start()
        auth = "token required" if token else "no token"
        log.info("perfpilot daemon: listening on http://%s:%d/metrics (%s), interval %gs, db %s, watching %s",
                 self.exporter.host, self.exporter.port, auth, self.config.interval, self.config.db,
                 ", ".join(self.config.watch) or "host only")
        for problem in self.capabilities()["missing"]:
            log.info("perfpilot daemon: degraded: %s", problem)

    def stop(self) -> None:
        self._stop.set()
        self.snapshots.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.exporter is not None:
            self.exporter.stop()
        try:
            self.collectors.stop()
        except Exception:  # noqa: BLE001 - shutdown goes on
            pass
        self.gpu.stop()
        if self.advisor is not None:
            self.advisor.stop()
        self.host.close()
        self.store.close()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status (0 on a clean stop)."""
        stop_signal: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            stop_signal.append(signum)
            self._stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self._stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        name = signal.Signals(stop_signal[0]).name if stop_signal else "stop"
        log.info("perfpilot daemon: %s received, flushing and exiting", name)
        self.stop()
        return 0

    # -------------------------------------------------------------- sampling

    def _loop(self) -> None:
        interval = self.config.interval
        t0 = time.monotonic()
        k = 1
        while True:
            delay = t0 + k * interval - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            if self._stop.is_set():
                break
            if delay < -interval:
                self.counters.late += 1
            self._tick()
            # Skip ticks we are late for rather than bursting to catch up.
            k = max(k + 1, int((time.monotonic() - t0) / interval) + 1)

    def _guard(self, what: str, func: Any, *args: Any, default: Any = None) -> Any:
        try:
            return func(*args)
        except Exception as exc:  # noqa: BLE001 - one failing part must not stop the daemon
            self.counters.errors += 1
            message = f"{what}: {type(exc).__name__}: {exc}"
            if len(self.counters.recent_errors) < MAX_LOGGED_ERRORS:
                log.warning("perfpilot daemon: %s", message)
            self.counters.recent_errors = [*self.counters.recent_errors[-9:], message]
            return default

    def _tick(self) -> None:
        started = time.monotonic()
        now = time.time()
        with self.watch_lock:
            self._guard("watch", self.watcher.refresh, now)
            watches = self._guard("processes", self.processes.sample, time.monotonic(), default={}) or {}
            events = [(g.watch, kind, msg) for g in self.watcher.groups for kind, msg in g.events]
            # The deques themselves: only this thread changes them (in refresh, above).
            restart_times = {g.watch: g.restart_times for g in self.watcher.groups if g.restart_times}
            for group in self.watcher.groups:
                group.events.clear()
        host = self._guard("host", self.host.sample, default={}) or {}
        collected = self._guard("collectors", self.collectors.sample, default={}) or {}
        gpu_devices: dict[str, float] = {}
        if self._gpu_ok:
            sampled = self._guard("gpu", self.gpu.sample, default=({}, {}))
            gpu_devices, per_pid = sampled
            for group in self.watcher.groups:
                if group.watch in watches:
                    held = [per_pid[p] for p in group.members if p in per_pid]
                    watches[group.watch].gpu_memory_bytes = sum(held) if held else 0.0
        self.store.add_samples(now, "host", {**host, **gpu_devices})
        if collected:
            self.store.add_samples(now, "collectors", collected)
        for watch, state in watches.items():
            self.store.add_samples(now, watch, state.metrics())
        for watch, kind, message in events:
            self.store.add_event(now, kind, watch, message)
            log.info("perfpilot daemon: %s: %s", watch, message)
        self.findings.observe(now, host, watches, gpu_devices)
        changed = self._guard("findings", self.findings.evaluate, now, watches, restart_times, default=[]) or []
        for finding in changed:
            self.store.put_finding(finding)
            if finding["first_seen"] == finding["last_seen"] or not finding["active"]:
                log.info("perfpilot daemon: finding %s: %s", "raised" if finding["active"] else "resolved",
                         finding["message"])
        if self.advisor is not None:
            self.advisor.note(changed)
            self._guard("propose", self.advisor.tick, now, watches)
        if time.monotonic() - self._last_flush >= self.config.flush_interval:
            self._last_flush = time.monotonic()
            self._guard("store flush", self.store.flush)
        if time.monotonic() - self._last_maintain >= self.config.maintenance_every:
            self._last_maintain = time.monotonic()
            self._guard("store maintenance", self.store.maintain, now)
        self.counters.ticks += 1
        self.counters.seconds += time.monotonic() - started
        self.counters.last_tick = now
        self._publish(now, host, collected, gpu_devices, watches)

    def _publish(self, now: float, host: dict[str, float], collected: dict[str, float],
                 gpu_devices: dict[str, float], watches: dict[str, Any]) -> None:
        active: dict[str, int] = {}
        for kind, _entity in self.findings.active:
            active[kind] = active.get(kind, 0) + 1
        stats = self.store.stats
        state = {
            "ts": now,
            "version": __version__,
            "db": str(self.config.db),
            "host": {**host, **gpu_devices},
            "host_cpu_totals": dict(self.host.totals),
            "collectors": self._collector_values.update(now, collected),
            "collector_status": self.collectors.status(),
            "watches": {w: copy.copy(s) for w, s in watches.items()},
            "findings_active": active,
            "findings_raised": dict(self.findings.raised_total),
            "self": {
                "ticks": self.counters.ticks, "late": self.counters.late, "tick_seconds": self.counters.seconds,
                "tick_errors": self.counters.errors, "store_bytes": self.store.file_bytes(),
                "flushes": stats.flushes, "dropped": stats.dropped, "evictions": stats.size_evictions,
                "flushed_until": stats.flushed_until, "snapshots_ok": self.snapshots.stats.ok,
                "snapshots_failed": self.snapshots.stats.failed,
                "snapshot_cpu_seconds": self.snapshots.stats.cpu_seconds,
                "http_rejected": self.exporter.rejected if self.exporter else 0,
                **({"proposals": self.advisor.stats.requested,
                    "proposal_failures": self.advisor.stats.failed + self.advisor.stats.invalid}
                   if self.advisor is not None else {}),
            },
        }
        self._state = state
        self._version += 1

    def _on_hotspots(self, ts: float, watch: str, pid: int, hotspots: list[dict[str, Any]]) -> None:
        self.store.add_hotspots(ts, watch, pid, hotspots)

    def _process_info(self, pid: int) -> Any:
        with self.watch_lock:
            return self.watcher.info(pid)

    # ------------------------------------------------------------------ reading

    def state(self) -> dict[str, Any]:
        return self._state

    def capabilities(self) -> dict[str, Any]:
        missing: list[str] = list(self.problems)
        root = os.geteuid() == 0
        if "io" in self.processes.missing or "fds" in self.processes.missing:
            missing.append("per-process I/O and open fds of other users' processes need root or CAP_SYS_PTRACE")
        if self.config.snapshots.enabled and not self.snapshots.available:
            missing.append(f"hot spots: {self.snapshots.reason}")
        elif self.snapshots.stats.problems:
            missing.append("hot spots: " + next(iter(self.snapshots.stats.problems.values())))
        if not self._gpu_ok:
            missing.append(f"GPU: {self.gpu.reason}")
        for name, st in self.collectors.status().items():
            if not st.get("available"):
                missing.append(f"collector {name}: {st.get('reason')}")
            elif st.get("disabled"):
                missing.append(f"collector {name} disabled after errors: {(st.get('errors') or ['?'])[-1]}")
        return {"root": root, "missing": missing}

    def api(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        state = self._state
        if path in {"/", "/healthz"}:
            age = time.time() - self.counters.last_tick
            healthy = age <= max(5 * self.config.interval, 5.0) and not self._stop.is_set()
            stats = self.store.stats
            # Degraded, not down: telemetry and /metrics still work while the store drops rows,
            # and a restart would not free the disk. 200, so liveness probes do not kill it.
            degraded = []
            if stats.failing_since is not None:
                since = time.strftime("%H:%M:%S", time.localtime(stats.failing_since))
                degraded.append(f"store: writes failing since {since} ({stats.dropped_while_failing} rows dropped): "
                                f"{stats.last_error}")
            return (200 if healthy else 503), {
                "status": "stale" if not healthy else "degraded" if degraded else "ok",
                "degraded": degraded,
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started_at, 3),
                "interval_s": self.config.interval,
                "ticks": self.counters.ticks,
                "late_ticks": self.counters.late,
                "tick_errors": self.counters.errors,
                "recent_errors": self.counters.recent_errors,
                "last_tick_age_s": round(age, 3),
                "store": {"path": str(self.config.db), "file_bytes": self.store.file_bytes(),
                          "max_bytes": self.config.max_db_bytes, "flushes": stats.flushes,
                          "flushed_until": stats.flushed_until, "rows_written": stats.rows_written,
                          "dropped": stats.dropped, "evictions": stats.size_evictions,
                          "last_error": stats.last_error, "recovered_after_crash": stats.opened_after_crash},
                "collectors": state.get("collector_status", {}),
                "snapshots": {"enabled": self.config.snapshots.enabled, "available": self.snapshots.available,
                              "ok": self.snapshots.stats.ok, "failed": self.snapshots.stats.failed,
                              "idle": self.snapshots.stats.idle,
                              "cpu_seconds": round(self.snapshots.stats.cpu_seconds, 3),
                              "problems": self.snapshots.stats.problems},
                "capabilities": self.capabilities(),
                "proposals": ({"enabled": True, "every_s": self.config.propose_every,
                               **dataclasses.asdict(self.advisor.stats), "waiting": len(self.advisor.waiting)}
                              if self.advisor is not None else {"enabled": False}),
                "listen": f"{self.config.host}:{self.exporter.port if self.exporter else self.config.port}",
                "loopback_only": is_loopback(self.config.host),
            }
        if path == "/api/latest":
            watches = {w: {**s.metrics(), "processes": s.members} for w, s in state.get("watches", {}).items()}
            return 200, {"ts": state.get("ts"), "host": state.get("host", {}), "collectors": state.get("collectors", {}),
                         "watches": watches}
        if path == "/api/hotspots":
            watch = (query.get("watch") or [None])[0]
            stacks = (query.get("stacks") or ["0"])[0].lower() in {"1", "true", "yes"}
            return 200, {"hotspots": self.snapshots.hotspots(watch, stacks=stacks),
                         "rate_hz": self.config.snapshots.rate}
        if path == "/api/findings":
            return 200, {"findings": self.findings.listing(), "kinds": list(KINDS)}
        if path == "/api/proposals":
            return self._proposals(query)
        return 404, {"error": f"no such endpoint {path}",
                     "endpoints": ["/metrics", "/healthz", "/api/latest", "/api/hotspots", "/api/findings",
                                   "/api/proposals"]}

    def _proposals(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        """Stored proposals, newest first; ``?id=N`` adds the messages that were sent."""
        enabled = self.advisor is not None
        wanted = (query.get("id") or [None])[0]
        if wanted is not None:
            proposal_id = _int_param("id", wanted, 1, 2**63 - 1)
            if isinstance(proposal_id, str):
                return 400, {"error": proposal_id}
            rows = self.store.proposals(proposal_id=proposal_id, with_request=True)
            if not rows:
                return 404, {"error": f"no proposal {proposal_id}"}
            return 200, {"proposal": rows[0]}
        limit = _int_param("limit", (query.get("limit") or ["50"])[0], 1, 2**31)
        if isinstance(limit, str):
            return 400, {"error": limit}
        rows = self.store.proposals(limit=min(MAX_LIMIT, limit))
        if not rows and enabled:
            rows = self.advisor.listing()  # type: ignore[union-attr] - the store could not take them
        return 200, {"enabled": enabled, "applied": False, "proposals": rows,
                     "stats": dataclasses.asdict(self.advisor.stats) if self.advisor is not None else {}}


MAX_LIMIT = 500  # ?limit= above this is served as this many rows


def _int_param(name: str, text: str, low: int, high: int) -> int | str:
    """A query parameter as an int in [low, high], or the one-line error for a 400.
    ASCII digits only: str.isdigit() accepts "²", which int() then refuses."""
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        return f"{name} must be a whole number, got {text[:40]!r}"
    value = int(text)
    if not low <= value <= high:
        return f"{name} must be between {low} and {high}, got {value}"
    return value


def configure_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("perfpilot.daemon")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
