"""HTTP: Prometheus ``/metrics`` (prometheus-client), ``/healthz`` and a small JSON API.

Endpoints::

    /metrics            Prometheus text format (prometheus_client.generate_latest)
    /healthz            200 {"status": "ok", ...} while sampling keeps up, else 503
    /api/latest         latest host, collector and per-watch values (with per-process rows)
    /api/hotspots       rolling hot spots per watch and process (?watch=name:gunicorn)
    /api/findings       active findings, then recently resolved ones

Security: bound to 127.0.0.1 by default. Any other address needs a token, and then every
request must carry ``Authorization: Bearer <token>`` or gets 401 (compared in constant
time). Prometheus sends it with ``authorization: {credentials_file: ...}`` in its scrape
config.

Metric naming follows Prometheus conventions: ``perfpilot_`` prefix, base units in the
name (``_bytes``, ``_seconds``), ``_total`` for counters. Labels are bounded by the
configuration: ``watch`` (one value per selector), ``mode`` (8 CPU modes), ``collector``
and ``kind`` (fixed sets). Process ids, function names and hot spots are not labels (they
would grow without bound); they are in the JSON API.

Flood safety: the exposition is rendered once per sample tick and served from cache, and
at most ``MAX_CONCURRENT`` requests are handled at once (the rest get 503 straight away),
so a request flood cannot starve the sampler of the GIL.
"""

from __future__ import annotations

import hmac
import json
import re
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from perfpilot.errors import ConfigError

MAX_CONCURRENT = 8
MAX_COLLECTOR_METRICS = 200
REQUEST_TIMEOUT_S = 5.0

_UNITS = {"pct": "percent", "bytes": "bytes", "s": "seconds", "w": "watts", "j": "joules", "hz": "hertz",
          "c": "celsius", "ratio": "ratio", "count": "", "per_s": "per_second"}


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
    for suffix, unit in _UNITS.items():
        if quantity.endswith("_" + suffix):
            quantity = quantity[: -len(suffix) - 1] + (("_" + unit) if unit else "")
            break
    name = re.sub(r"[^a-zA-Z0-9_]", "_", f"perfpilot_{domain}_{quantity}")
    return (name, labels) if re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", name) else None


class DaemonMetrics:
    """A prometheus_client collector reading the daemon's latest state at scrape time."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def describe(self) -> Iterable[Any]:
        return []  # families depend on what is watched; describe lazily (prometheus_client allows it)

    def collect(self) -> Iterable[Any]:
        s = self.state()
        watches: dict[str, Any] = s.get("watches", {})

        def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels or [])

        info = gauge("perfpilot_daemon_info", "The daemon: version, interval and database path.",
                     ["version", "db"])
        info.add_metric([s.get("version", ""), s.get("db", "")], 1.0)
        yield info
        per_watch = [
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
        ]
        for name, doc, attr, counter in per_watch:
            family = (CounterMetricFamily(name.removesuffix("_total"), doc, labels=["watch"]) if counter
                      else gauge(name, doc, ["watch"]))
            for watch, state in watches.items():
                value = getattr(state, attr)
                if value is not None:
                    family.add_metric([watch], float(value))
            yield family

        host = s.get("host", {})
        host_totals = s.get("host_cpu_totals", {})
        if host_totals:
            cpu = CounterMetricFamily("perfpilot_host_cpu_seconds", "Host CPU time by mode, all CPUs together.",
                                      labels=["mode"])
            for mode, seconds in host_totals.items():
                cpu.add_metric([mode], seconds)
            yield cpu
        for key, name, doc in (
            ("memory.total_bytes", "perfpilot_host_memory_total_bytes", "Host memory."),
            ("memory.available_bytes", "perfpilot_host_memory_available_bytes", "Host memory available."),
            ("memory.swap_used_bytes", "perfpilot_host_swap_used_bytes", "Host swap in use."),
            ("cpu.load1", "perfpilot_host_load1", "1-minute load average."),
        ):
            if key in host:
                g = gauge(name, doc)
                g.add_metric([], host[key])
                yield g

        families: dict[str, tuple[GaugeMetricFamily, list[str]]] = {}
        reserved = {"perfpilot_daemon_info", "perfpilot_host_load1"}
        for metric, value in list(s.get("collectors", {}).items())[:MAX_COLLECTOR_METRICS]:
            mapped = prometheus_name(metric)
            if mapped is None or mapped[0] in reserved or mapped[0].startswith("perfpilot_watch_"):
                continue
            name, labels = mapped
            if name not in families:
                names = sorted(labels)
                families[name] = (gauge(name, f"Collector metric {metric.split('.')[0]}.* (figures of a process "
                                              "tree describe the daemon itself).", names), names)
            family, names = families[name]
            if sorted(labels) == names:  # a name seen with other labels is skipped, not a broken exposition
                family.add_metric([labels[k] for k in names], value)
        yield from (family for family, _names in families.values())

        status = s.get("collector_status", {})
        up = gauge("perfpilot_collector_up", "1 when a collector is available and not disabled.", ["collector"])
        errors = CounterMetricFamily("perfpilot_collector_errors", "Errors raised by a collector.",
                                     labels=["collector"])
        for name, st in status.items():
            up.add_metric([name], 1.0 if st.get("available") and not st.get("disabled") else 0.0)
            errors.add_metric([name], float(len(st.get("errors", []))))
        yield up
        yield errors

        findings = gauge("perfpilot_findings_active", "Active findings by kind.", ["kind"])
        raised = CounterMetricFamily("perfpilot_findings", "Findings raised by kind.", labels=["kind"])
        active = s.get("findings_active", {})
        for kind, total in s.get("findings_raised", {}).items():
            findings.add_metric([kind], float(active.get(kind, 0)))
            raised.add_metric([kind], float(total))
        yield findings
        yield raised

        own = s.get("self", {})
        for name, doc, key, counter in (
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
        ):
            if key not in own:
                continue
            family = (CounterMetricFamily(name.removesuffix("_total"), doc) if counter else gauge(name, doc))
            family.add_metric([], float(own[key]))
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
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonMetrics(state))
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
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="perfpilot-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def metrics_text(self) -> bytes:
        version = self.version()
        with self._cache_lock:
            if self._cache[0] != version:
                self._cache = (version, generate_latest(self.registry))
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
        except Exception as exc:  # noqa: BLE001 - a bad request must not kill the server thread
            code, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
        body = (json.dumps(payload, default=str, indent=1) + "\n").encode()
        reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(code, "Error")
        start_response(f"{code} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
