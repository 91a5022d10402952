"""The daemon in-process, over real HTTP on 127.0.0.1: faults it must survive.

A collector that raises, a tiny disk bound, a token when bound off loopback, a GPU held
but idle (fake NVML: there is no GPU here), a watched process that dies and restarts.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from polling import wait_for
from perfpilot.agent.daemon.config import daemon_config
from perfpilot.agent.daemon.service import Daemon
from perfpilot.testing import FakeNVML

SLEEPER = "import sys, time; time.sleep(float(sys.argv[1]))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def run_daemon(tmp_path: Path):
    running: list[Daemon] = []

    def start(table: dict[str, Any], **kw: Any) -> Daemon:
        table = {"interval": "0.1s", "flush_interval": "0.2s", "db": str(tmp_path / f"pp{len(running)}.db"),
                 "listen": f"127.0.0.1:{free_port()}", "snapshots": {"enabled": False}, **table}
        daemon = Daemon(daemon_config(table), **kw)
        daemon.start()
        running.append(daemon)
        return daemon

    yield start
    for daemon in running:
        daemon.stop()


class Boom:
    """A third-party collector that always raises."""

    name = "boom"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def start(self, target: Any) -> None:
        pass

    def sample(self, now: float) -> dict[str, float]:
        raise RuntimeError("sensor on fire")

    def stop(self) -> dict[str, Any]:
        return {}


class Steady:
    name = "steady"

    def __init__(self) -> None:
        self.calls = 0

    def available(self) -> tuple[bool, str]:
        return True, ""

    def start(self, target: Any) -> None:
        pass

    def sample(self, now: float) -> dict[str, float]:
        self.calls += 1
        return {"steady.calls_count": float(self.calls), "steady.power_w": 42.0}

    def stop(self) -> dict[str, Any]:
        return {}


class Churn(Steady):
    """Forty series that change every tick: writes that no de-duplication can skip."""

    name = "churn"

    def sample(self, now: float) -> dict[str, float]:
        self.calls += 1
        return {f"churn.series{i}_count": float(self.calls * (i + 1)) for i in range(40)}


def test_a_collector_that_raises_does_not_stop_the_daemon(run_daemon) -> None:
    steady = Steady()
    daemon = run_daemon({"watch": ["top:1"]}, collectors=[Boom(), steady])
    port = daemon.exporter.port
    wait_for(lambda: steady.calls >= 10)
    status, body = get(port, "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok"
    boom = health["collectors"]["boom"]
    assert boom["disabled"] and any("sensor on fire" in e for e in boom["errors"])
    assert any("collector boom disabled" in m for m in health["capabilities"]["missing"])
    families = {f.name: f for f in text_string_to_metric_families(get(port, "/metrics")[1].decode())}
    up = {s.labels["collector"]: s.value for s in families["perfpilot_collector_up"].samples}
    assert up == {"boom": 0.0, "steady": 1.0}
    # the healthy collector's metrics carry on, named with Prometheus units
    assert families["perfpilot_steady_power_watts"].samples[0].value == 42.0
    ticks = health["ticks"]
    wait_for(lambda: json.loads(get(port, "/healthz")[1])["ticks"] >= ticks + 5)


def test_tiny_disk_bound_retention_kicks_in_without_a_crash(run_daemon, tmp_path: Path) -> None:
    limit = 96 * 1024
    # the host and watched processes alone may change too little on a quiet machine to
    # grow the store (unchanged values are skipped): a CI run saw no eviction in 60 s
    daemon = run_daemon({"watch": ["top:20"], "interval": "0.05s", "flush_interval": "0.1s",
                         "maintenance_every": "0.2s", "max_db_bytes": limit, "raw_retention": "10d"},
                        collectors=[Churn()])
    try:
        wait_for(lambda: daemon.store.stats.size_evictions > 0, timeout=60)
    except AssertionError:
        raise AssertionError(f"no size eviction in 60 s: {daemon.store.stats}, {daemon.counters.ticks} ticks, "
                             f"{daemon.store.size_bytes()} bytes, {daemon.store.pending()} pending") from None
    ticks = daemon.counters.ticks
    wait_for(lambda: daemon.counters.ticks >= ticks + 10)
    daemon.store.maintain()
    assert daemon.store.size_bytes() <= limit
    status, body = get(daemon.exporter.port, "/healthz")
    assert status == 200
    assert json.loads(body)["store"]["evictions"] > 0
    # the newest data survives the evictions (at this bound only the last moments fit, and
    # a host series that is written only when it changes may not be among them)
    rows = daemon.store.query(None, time.time() - 5)
    assert rows and max(r["ts"] for r in rows) >= time.time() - 2


def test_token_required_off_loopback(run_daemon, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("let-me-in-0123456789\n")
    token_file.chmod(0o600)
    daemon = run_daemon({"listen": f"0.0.0.0:{free_port()}", "token_file": str(token_file)})
    port = daemon.exporter.port
    for path in ("/metrics", "/healthz", "/api/latest", "/api/hotspots", "/api/findings"):
        assert get(port, path)[0] == 401, path
        assert get(port, path, token="wrong")[0] == 401, path
    status, body = get(port, "/metrics", token="let-me-in-0123456789")
    assert status == 200 and b"perfpilot_ticks_total" in body


def test_weak_tokens_and_readable_token_files_are_refused(tmp_path: Path) -> None:
    from perfpilot.errors import ConfigError

    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    token_file.chmod(0o600)
    off_loopback = {"listen": "0.0.0.0:10464", "db": str(tmp_path / "pp.db"), "token_file": str(token_file)}
    with pytest.raises(ConfigError, match="3 characters; at least 16"):
        daemon_config(off_loopback)
    token_file.write_text("a-long-enough-token-0123\n")
    token_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users \\(mode 644\\)") as caught:
        daemon_config(off_loopback)
    assert caught.value.hint == f"chmod 600 {token_file}"
    token_file.chmod(0o600)
    assert daemon_config(off_loopback).resolved_token() == "a-long-enough-token-0123"
    done = subprocess.run([sys.executable, "-m", "perfpilot", "daemon", "--listen", "0.0.0.0:10464", "--db",
                           str(tmp_path / "pp.db")], env={**os.environ, "PERFPILOT_DAEMON_TOKEN": "short"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        "perfpilot: error: PERFPILOT_DAEMON_TOKEN: the token has 5 characters; at least 16 are needed "
        "(use a random one: openssl rand -hex 32)"]


def test_odd_query_parameters_are_400_with_one_line(run_daemon) -> None:
    port = run_daemon({}).exporter.port
    for query in ("id=abc", "id=%C2%B2", "id=99999999999999999999999", "id=0", "id=-1", "limit=x", "limit=%C2%B2",
                  "limit=0", "limit=1e3", "limit=99999999999999999999999"):
        status, body = get(port, f"/api/proposals?{query}")
        error = json.loads(body)["error"]
        assert status == 400 and "\n" not in error and "Error" not in error, (query, error)
        assert error.startswith(("id must be", "limit must be")), error
    assert get(port, "/api/proposals?id=12345")[0] == 404
    assert get(port, "/api/proposals?limit=100000")[0] == 200  # served as the most rows there are


def test_loopback_needs_no_token_and_unknown_paths_are_404(run_daemon) -> None:
    daemon = run_daemon({})
    assert get(daemon.exporter.port, "/healthz")[0] == 200
    status, body = get(daemon.exporter.port, "/nope")
    assert status == 404 and b"/api/latest" in body


def test_gpu_held_while_idle_is_a_finding(run_daemon) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, "60", f"pp-gpu-{uuid.uuid4().hex[:6]}"])
    try:
        fake = FakeNVML(gpus=[{"name": "NVIDIA H100 80GB HBM3", "readings": [
            {"t": 0.0, "utilization_pct": 0, "memory_used_bytes": 3 * 2**30,
             "processes": [{"pid": proc.pid, "memory_bytes": 2 * 2**30}]}]}])
        daemon = run_daemon({"watch": [f"pid:{proc.pid}"], "findings": {"window": "1s"}}, nvml=fake.module)
        port = daemon.exporter.port
        findings = wait_for(lambda: [f for f in json.loads(get(port, "/api/findings")[1])["findings"]
                                     if f["kind"] == "gpu_idle"])
        assert findings[0]["entity"] == f"pid:{proc.pid}"
        assert findings[0]["details"]["gpu_memory_bytes"] == 2 * 2**30
        families = {f.name: f for f in text_string_to_metric_families(get(port, "/metrics")[1].decode())}
        held = families["perfpilot_watch_gpu_memory_bytes"].samples[0]
        assert held.labels == {"watch": f"pid:{proc.pid}"} and held.value == 2 * 2**30
        daemon.store.flush()
        stored = daemon.store.findings()
        assert any(f["kind"] == "gpu_idle" and f["active"] for f in stored)
    finally:
        proc.kill()
        proc.wait()


def test_a_watched_process_that_restarts_is_followed(run_daemon) -> None:
    tag = f"pp-svc-{uuid.uuid4().hex[:8]}"
    first = subprocess.Popen([sys.executable, "-c", SLEEPER, "60", tag])
    second = None
    try:
        daemon = run_daemon({"watch": [f"cmdline:{tag}"]})
        port = daemon.exporter.port

        def latest() -> dict:
            return json.loads(get(port, "/api/latest")[1])["watches"][f"cmdline:{tag}"]

        wait_for(lambda: latest()["process.count"] == 1)
        first.kill()
        first.wait()
        wait_for(lambda: latest()["process.count"] == 0)
        second = subprocess.Popen([sys.executable, "-c", SLEEPER, "60", tag])
        state = wait_for(lambda: (s := latest())["process.count"] == 1 and s)
        assert state["processes"][0]["pid"] == second.pid
        assert state["process.restarts"] == 1
        families = {f.name: f for f in text_string_to_metric_families(get(port, "/metrics")[1].decode())}
        restarts = families["perfpilot_watch_restarts"].samples
        assert [s.value for s in restarts if s.name == "perfpilot_watch_restarts_total"] == [1.0]
        daemon.store.flush()
        events = daemon.store.conn.execute("SELECT kind, message FROM events").fetchall()
        assert ("exit", f"pid {first.pid} exited") in events
        assert any(kind == "restart" and str(second.pid) in message for kind, message in events)
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_a_full_disk_is_logged_once_and_healthz_says_degraded(tmp_path: Path) -> None:
    # A real write limit on the daemon process (RLIMIT_FSIZE: writes past it fail with EFBIG,
    # as on a full disk), lifted later from outside; no fake store.
    port = free_port()
    config = tmp_path / "d.toml"
    config.write_text(f'[daemon]\nlisten = "127.0.0.1:{port}"\ndb = "{tmp_path / "pp.db"}"\ninterval = "0.05s"\n'
                      'flush_interval = "0.1s"\n[daemon.snapshots]\nenabled = false\n')
    limit = 160 * 1024
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "perfpilot", "daemon", "--config", str(config)], stdout=out,
                                stderr=out, preexec_fn=lambda: resource.setrlimit(
                                    resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)))
    try:
        def status() -> dict:
            try:
                return json.loads(get(port, "/healthz")[1])
            except OSError:
                return {}

        wait_for(lambda: proc.poll() is not None or status().get("status") == "degraded", timeout=60)
        health = status()
        assert health["status"] == "degraded", log.read_text()
        assert health["degraded"][0].startswith("store: writes failing since") and health["store"]["dropped"] > 0
        time.sleep(0.5)  # more failing flushes: still one log line
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        wait_for(lambda: status().get("status") == "ok", timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = log.read_text().splitlines()
    failed = [line for line in lines if "cannot write to" in line]
    assert len(failed) == 1 and "dropping rows until writes succeed again" in failed[0], lines
    assert len([line for line in lines if "work again" in line]) == 1, lines
