"""HTTP: Prometheus ``/metrics`` (prometheus-client), ``/healthz`` and a small JSON API.

Endpoints::

    /metrics            Prometheus text format (prometheus_client.generate_latest)
    /healthz            200 {"status": "ok", ...} while sampling keeps up, else 503
    /api/latest         latest host, collector and per-watch values (with per-process rows)
    /api/hotspots       rolling hot spots per watch and process (?watch=name:gunicorn); with
                        ?stacks=1 also each process's collapsed stacks (daemon hotspots --from)
    /api/findings       active findings, then recently resolved ones
    /api/proposals      proposals made for findings with --propose (?id=N: one, with the
                        messages that were sent); stored for a person to judge, never applied

Security: bound to 127.0.0.1 by default. Any other address needs a token, and then every
request must carry ``Authorization: Bearer <token>`` or gets 401 (compared in constant
time). Prometheus sends it with ``authorization: {credentials_file: ...}`` in its scrape
config.

Metric naming follows Prometheus conventions: ``perfpilot_`` prefix, base units in the
name (``_bytes``, ``_seconds``), ``_total`` for counters: every figure that only grows is a
counter (the daemon's own I/O bytes and syscalls, ``perfpilot_daemon_io_*_total``, see
:data:`COUNTER_METRICS`), and one that starts again from zero when its process restarts is
a counter reset, which ``rate()`` handles. Labels are bounded by the
configuration: ``watch`` (one value per selector), ``mode`` (8 CPU modes), ``collector``
and ``kind`` (fixed sets). Process ids, function names and hot spots are not labels (they
would grow without bound); they are in the JSON API.

Cost: :class:`TextRenderer` writes the same bytes as prometheus-client's
``generate_latest`` (a test checks it against the :class:`DaemonMetrics` collector) at
about a fifth of the CPU, which matters at one scrape a second within a 1%-of-a-core budget.

Flood safety: the exposition is rendered once per sample tick and served from cache, and
at most ``MAX_CONCURRENT`` requests are handled at once (the rest get 503 straight away),
so a request flood cannot starve the sampler of the GIL.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable, Iterator, NamedTuple
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from perfpilot.errors import ConfigError

MAX_CONCURRENT = 8
MAX_COLLECTOR_METRICS = 200
MAX_PREFIXES = 20000
REQUEST_TIMEOUT_S = 5.0

# "per_s" before "s": a rate must read "_per_second", not "_per_seconds"
_UNITS = {"per_s": "per_second", "pct": "percent", "bytes": "bytes", "s": "seconds", "w": "watts", "j": "joules", "hz": "hertz",
          "c": "celsius", "ratio": "ratio", "count": ""}
# Built-in collector figures of their *target tree*: in the daemon that tree is the daemon
# itself, so they are exported as perfpilot_daemon_* -- under their plain names
# (perfpilot_cpu_utilization_percent 0 while the host is saturated) they read as host figures.
DAEMON_SELF_METRICS = frozenset({
    "cpu.processes", "cpu.utilization_pct", "cpu.ctx_switches_voluntary_per_s", "cpu.ctx_switches_involuntary_per_s",
    "memory.rss_bytes", "memory.uss_bytes", "memory.pss_bytes", "memory.minor_faults_per_s",
    "memory.major_faults_per_s", "io.read_bytes", "io.write_bytes", "io.read_chars_bytes", "io.write_chars_bytes",
    "io.read_syscalls", "io.write_syscalls", "power.cpu_estimate_w",
})
BUILTIN_DOMAINS = frozenset({"cpu", "memory", "io", "power", "gpu"})
_SELF_PATTERN = re.compile(r"^gpu\d+\.target_")
# Collector figures that only grow while their source lives (totals read from /proc/<pid>/io,
# an energy counter): Prometheus counters (``_total``), so rate()/increase() apply. When the
# source starts again from zero (the daemon restarted, a driver reloaded) the exposed value
# drops: that is a counter reset, which rate() detects and counts across; it is not clamped
# or carried here. A third-party collector opts in by naming its quantity ``..._total``.
COUNTER_METRICS = frozenset({
    "io.read_bytes", "io.write_bytes", "io.read_chars_bytes", "io.write_chars_bytes",
    "io.read_syscalls", "io.write_syscalls",
})
_COUNTER_PATTERN = re.compile(r"^(gpu\d+\.energy_j|[^.]+\.[a-z0-9_]+_total)$")


class HeldValues:
    """Collector figures as of their latest reading. A collector with its own pace (io
    reads /proc every 0.5 s) returns nothing on the ticks in between; without this its
    families vanished from every other scrape, and Prometheus marked the series stale
    each time. A figure not read for ``keep_s`` (a collector disabled, a GPU gone) is dropped."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._values: dict[str, tuple[float, float]] = {}

    def update(self, now: float, fresh: dict[str, float]) -> dict[str, float]:
        values = self._values
        for metric, value in fresh.items():
            values[metric] = (now, value)
        if len(fresh) != len(values):
            for metric in [m for m, (ts, _v) in values.items() if now - ts > self.keep_s]:
                del values[metric]
        return {metric: value for metric, (_ts, value) in values.items()}


def is_counter(metric: str) -> bool:
    """Whether a collector figure is cumulative (exported as a ``_total`` counter)."""
    return metric in COUNTER_METRICS or bool(_COUNTER_PATTERN.match(metric))


def prometheus_name(metric: str) -> tuple[str, dict[str, str]] | None:
    """``cpu.utilization_pct`` -> ``perfpilot_cpu_utilization_percent``; ``gpu0.power_w`` ->
    (``perfpilot_gpu_power_watts``, {"gpu": "0"}). None for names that cannot be mapped."""
    domain, _, quantity = metric.partition(".")
    if not quantity:
        return None
    labels: dict[str, str] = {}
    match = re.match(r"^([a-z_]+?)(\d+)$", domain)
    if match:
        domain, labels = match.group(1), {match.group(1): match.group(2)}
    core = re.match(r"^core(\d+)_(.+)$", quantity)
    if core:  # cpu.core3_busy_pct: one family with a bounded core label, not one name per core
        quantity, labels = f"core_{core.group(2)}", {**labels, "core": core.group(1)}
    for suffix, unit in _UNITS.items():
        if quantity.endswith("_" + suffix):
            quantity = quantity[: -len(suffix) - 1] + (("_" + unit) if unit else "")
            break
    name = re.sub(r"[^a-zA-Z0-9_]", "_", f"perfpilot_{domain}_{quantity}")
    return (name, labels) if re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", name) else None


def collector_doc(metric: str, own: bool, counter: bool = False) -> str:
    """HELP text of a collector metric: which collector figure it is, and whose."""
    generic = re.sub(r"^(gpu)\d+\.", r"\1N.", re.sub(r"\.core\d+_", ".coreN_", metric))
    collector = metric.split(".")[0].rstrip("0123456789")
    if own:
        since = " since the daemon started" if counter else ""
        return f"The daemon's own process: {generic} from the {collector} collector{since}."
    if collector in BUILTIN_DOMAINS:
        return f"Host-wide {generic} from the {collector} collector."
    return f"{generic} from the {collector} collector (a process-tree figure describes the daemon itself)."


class Family(NamedTuple):
    """One metric family as /metrics shows it; ``name`` of a counter lacks ``_total``."""

    name: str
    type: str  # "gauge" or "counter"
    doc: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]]


def families(s: dict[str, Any]) -> Iterator[Family]:
    """What /metrics holds, from the daemon's latest state (one definition for both the
    fast renderer and the prometheus-client collector). A family with no samples (I/O
    not readable for any watched process, no collectors) is left out, not shown empty."""
    return (fam for fam in _families(s) if fam.samples)


def _families(s: dict[str, Any]) -> Iterator[Family]:
    watches: dict[str, Any] = s.get("watches", {})
    yield Family("perfpilot_daemon_info", "gauge", "The daemon: version, interval and database path.",
                 ("version", "db"), [((s.get("version", ""), s.get("db", "")), 1.0)])
    for name, doc, attr, counter in PER_WATCH:
        samples = []
        for watch, state in watches.items():
            value = getattr(state, attr)
            if value is not None:
                samples.append(((watch,), float(value)))
        yield Family(name.removesuffix("_total") if counter else name, "counter" if counter else "gauge", doc,
                     ("watch",), samples)

    host = s.get("host", {})
    host_totals = s.get("host_cpu_totals", {})
    if host_totals:
        yield Family("perfpilot_host_cpu_seconds", "counter", "Host CPU time by mode, all CPUs together.", ("mode",),
                     [((mode,), float(seconds)) for mode, seconds in host_totals.items()])
    for key, name, doc in HOST_GAUGES:
        if key in host:
            yield Family(name, "gauge", doc, (), [((), float(host[key]))])

    collected: dict[str, tuple[tuple[str, ...], str, str, list[tuple[tuple[str, ...], float]]]] = {}
    reserved = {"perfpilot_daemon_info", "perfpilot_host_load1"}
    for metric, value in list(s.get("collectors", {}).items())[:MAX_COLLECTOR_METRICS]:
        mapped = prometheus_name(metric)
        if mapped is None or mapped[0] in reserved or mapped[0].startswith("perfpilot_watch_"):
            continue
        name, labels = mapped
        if metric.endswith("_per_s"):
            # A rate over the collector's own window is not a Prometheus metric (rate() over a
            # counter is); it stays in /api/latest. Host disk/net counters: node_exporter.
            continue
        own = metric in DAEMON_SELF_METRICS or bool(_SELF_PATTERN.match(metric))
        if own:
            name = "perfpilot_daemon_" + name.removeprefix("perfpilot_")
        kind = "counter" if is_counter(metric) else "gauge"
        if kind == "counter":
            name = name.removesuffix("_total")  # the renderers add it back
        if name not in collected:
            collected[name] = (tuple(sorted(labels)), kind, collector_doc(metric, own, kind == "counter"), [])
        names, fam_kind, _doc, samples = collected[name]
        if tuple(sorted(labels)) == names and fam_kind == kind:  # a clash is skipped, not a broken exposition
            samples.append((tuple(labels[k] for k in names), float(value)))
    for name, (names, kind, doc, samples) in collected.items():
        yield Family(name, kind, doc, names, samples)

    status = s.get("collector_status", {})
    yield Family("perfpilot_collector_up", "gauge", "1 when a collector is available and not disabled.",
                 ("collector",), [((name,), 1.0 if st.get("available") and not st.get("disabled") else 0.0)
                                  for name, st in status.items()])
    yield Family("perfpilot_collector_errors", "counter", "Errors raised by a collector.", ("collector",),
                 [((name,), float(st.get("error_count", len(st.get("errors", []))))) for name, st in status.items()])

    active = s.get("findings_active", {})
    raised = s.get("findings_raised", {})
    yield Family("perfpilot_findings_active", "gauge", "Active findings by kind.", ("kind",),
                 [((kind,), float(active.get(kind, 0))) for kind in raised])
    yield Family("perfpilot_findings", "counter", "Findings raised by kind.", ("kind",),
                 [((kind,), float(total)) for kind, total in raised.items()])

    own = s.get("self", {})
    for name, doc, key, counter in SELF:
        if key in own:
            yield Family(name.removesuffix("_total") if counter else name, "counter" if counter else "gauge", doc,
                         (), [((), float(own[key]))])


PER_WATCH = (
    ("perfpilot_watch_processes", "Processes currently matched by the watch.", "processes", False),
    ("perfpilot_watch_resident_memory_bytes", "Resident set size summed over the watch's processes.",
     "rss_bytes", False),
    ("perfpilot_watch_threads", "Threads summed over the watch's processes.", "threads", False),
    ("perfpilot_watch_open_fds", "Open file descriptors (needs same user or root).", "open_fds", False),
    ("perfpilot_watch_gpu_memory_bytes", "GPU memory held by the watch's processes (NVML).",
     "gpu_memory_bytes", False),
    ("perfpilot_watch_cpu_seconds_total", "CPU time (user+system) of the watch's processes since the "
     "daemon started watching; survives restarts.", "cpu_seconds_total", True),
    ("perfpilot_watch_read_bytes_total", "Storage bytes read (needs same user or root).",
     "read_bytes_total", True),
    ("perfpilot_watch_written_bytes_total", "Storage bytes written (needs same user or root).",
     "write_bytes_total", True),
    ("perfpilot_watch_restarts_total", "Times a watched process exited and was replaced.",
     "restarts_total", True),
)
HOST_GAUGES = (
    ("memory.total_bytes", "perfpilot_host_memory_total_bytes", "Host memory."),
    ("memory.available_bytes", "perfpilot_host_memory_available_bytes", "Host memory available."),
    ("memory.swap_used_bytes", "perfpilot_host_swap_used_bytes", "Host swap in use."),
    ("cpu.load1", "perfpilot_host_load1", "1-minute load average."),
)
SELF = (
    ("perfpilot_ticks_total", "Sampling ticks done.", "ticks", True),
    ("perfpilot_ticks_late_total", "Ticks that started more than one interval late.", "late", True),
    ("perfpilot_tick_seconds_total", "Wall time spent sampling.", "tick_seconds", True),
    ("perfpilot_tick_errors_total", "Errors inside a tick (the daemon went on).", "tick_errors", True),
    ("perfpilot_store_size_bytes", "Database size on disk (with WAL).", "store_bytes", False),
    ("perfpilot_store_flushes_total", "Batched writes committed.", "flushes", True),
    ("perfpilot_store_dropped_rows_total", "Rows dropped because the store was full.", "dropped", True),
    ("perfpilot_store_evictions_total", "Times the size bound deleted the oldest data.", "evictions", True),
    ("perfpilot_store_flushed_until_timestamp_seconds", "Newest sample known to be on disk.",
     "flushed_until", False),
    ("perfpilot_snapshots_total", "py-spy snapshots taken.", "snapshots_ok", True),
    ("perfpilot_snapshot_failures_total", "py-spy snapshots that failed.", "snapshots_failed", True),
    ("perfpilot_snapshot_cpu_seconds_total", "CPU time spent by py-spy (the cost of hot spots).",
     "snapshot_cpu_seconds", True),
    ("perfpilot_http_rejected_total", "Requests refused with 503 because too many were in flight.",
     "http_rejected", True),
    ("perfpilot_proposals_total", "Proposals asked of the LLM backend for findings (--propose).",
     "proposals", True),
    ("perfpilot_proposal_failures_total", "Proposal requests that failed (backend errors, unusable replies).",
     "proposal_failures", True),
)


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


class TextRenderer:
    """Prometheus text format (0.0.4), byte for byte what ``generate_latest`` writes for
    the same families, at a fraction of its cost: headers and ``name{labels} `` prefixes
    are built once and cached (labels come from the configuration, so the cache is
    bounded), leaving one float formatting per sample per scrape."""

    def __init__(self) -> None:
        self._headers: dict[tuple[str, str, str], str] = {}
        self._prefixes: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str] = {}

    def render(self, fams: Iterable[Family]) -> bytes:
        out: list[str] = []
        headers, prefixes = self._headers, self._prefixes
        for fam in fams:
            name = fam.name + "_total" if fam.type == "counter" else fam.name
            key = (name, fam.type, fam.doc)
            header = headers.get(key)
            if header is None:
                doc = fam.doc.replace("\\", r"\\").replace("\n", r"\n")
                header = headers[key] = f"# HELP {name} {doc}\n# TYPE {name} {fam.type}\n"
            out.append(header)
            labels = fam.labels
            for values, value in fam.samples:
                pkey = (name, labels, values)
                prefix = prefixes.get(pkey)
                if prefix is None:
                    if len(prefixes) > MAX_PREFIXES:
                        prefixes.clear()  # watch sets changed a lot (config reloads): start over
                    if labels:
                        pairs = sorted(zip(labels, values))
                        prefix = name + "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs) + "} "
                    else:
                        prefix = name + " "
                    prefixes[pkey] = prefix
                out.append(prefix + floatToGoString(value) + "\n")
        return "".join(out).encode("utf-8")


class DaemonMetrics:
    """The same families as a prometheus_client collector, for a ``CollectorRegistry``
    (``generate_latest``, pushgateway, another exposition format)."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def describe(self) -> Iterable[Any]:
        return []  # families depend on what is watched; describe lazily (prometheus_client allows it)

    def collect(self) -> Iterable[Any]:
        for fam in families(self.state()):
            cls = CounterMetricFamily if fam.type == "counter" else GaugeMetricFamily
            family = cls(fam.name, fam.doc, labels=list(fam.labels))
            for values, value in fam.samples:
                family.add_metric(list(values), value)
            yield family


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self.rejected = 0
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.rejected += 1
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S  # a slow client cannot hold a slot forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


class Exporter:
    """The HTTP server on its own thread; ``api`` answers the JSON routes."""

    def __init__(self, host: str, port: int, *, token: str | None, state: Callable[[], dict[str, Any]],
                 api: Callable[[str, dict[str, list[str]]], tuple[int, Any]], version: Callable[[], int]) -> None:
        self.token = token
        self.api = api
        self.version = version
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonMetrics(state))
        self.renderer = TextRenderer()
        self._cache: tuple[int, bytes] = (-1, b"")
        self._cache_lock = threading.Lock()
        server_class = _V6Server if ":" in host else _Server
        try:
            self.server = make_server(host, port, self.app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}",
                              hint="pick another port with --listen HOST:PORT, or stop what holds it") from None
        self.host, self.port = host, self.server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def rejected(self) -> int:
        return self.server.rejected  # type: ignore[attr-defined,no-any-return]

    def start(self) -> None:
        # The poll interval only bounds how long shutdown waits; each wake-up costs CPU.
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="perfpilot-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def metrics_text(self) -> bytes:
        version = self.version()
        with self._cache_lock:
            if self._cache[0] != version:
                self._cache = (version, self.renderer.render(families(self.state())))
            return self._cache[1]

    def _authorized(self, environ: dict[str, Any]) -> bool:
        if not self.token:
            return True
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if not self._authorized(environ):
            body = b'{"error": "missing or wrong bearer token"}\n'
            start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                                ("WWW-Authenticate", 'Bearer realm="perfpilot"'),
                                                ("Content-Length", str(len(body)))])
            return [body]
        if environ.get("REQUEST_METHOD", "GET") not in {"GET", "HEAD"}:
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        if path == "/metrics":
            body = self.metrics_text()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
            return [body]
        try:
            code, payload = self.api(path, parse_qs(environ.get("QUERY_STRING", "")))
        except Exception:  # noqa: BLE001 - a bad request must not kill the server thread
            # The traceback goes to the daemon's log; the client gets no internals (paths,
            # SQL, values), only where to look.
            logging.getLogger("perfpilot.daemon").exception("API request %s failed", path)
            code, payload = 500, {"error": "internal error answering this request; the daemon's log has the details"}
        body = (json.dumps(payload, default=str, indent=1) + "\n").encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}.get(code, "Error")
        start_response(f"{code} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
