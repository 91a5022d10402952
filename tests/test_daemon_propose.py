"""`--propose`: a finding's hot spots go to the optimiser's proposer; the proposal is stored,
never applied; one per finding kind and process per hour; backend failures recorded;
no secrets sent.

In-process tests drive :class:`Advisor` with the optimiser's real ``llm`` proposer and the
scripted backend against a real running process and a real store; the end-to-end tests
run `perfpilot daemon --propose` as a process watching a real busy Python program, with
the mock backend (`--backend mock --mock-replies`, as `optimize` takes it) and with the
openai backend pointed at a port where nothing listens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from perfpilot.agent.backends.errors import BackendError
from perfpilot.agent.daemon.advisor import FAILED_RETRY_S, Advisor, mask_argv
from perfpilot.agent.daemon.config import daemon_config
from perfpilot.agent.daemon.sampler import WatchState
from perfpilot.agent.daemon.service import Daemon
from perfpilot.agent.daemon.store import Store
from perfpilot.agent.daemon.watch import Watcher
from perfpilot.agent.proposers.llm_proposer import LLMProposer
from perfpilot.config import Settings
from perfpilot.errors import ConfigError
from perfpilot.testing import ScriptedBackend

BUSY = '''import sys, time

API_KEY = "sk-live-0123456789abcdefghij"  # a secret right next to the hot code


def crunch(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def main():
    end = time.time() + float(sys.argv[1])
    while time.time() < end:
        crunch(200_000)


if __name__ == "__main__":
    main()
'''
SECRETS = ("sk-live-0123456789abcdefghij", "argv-secret-value-42", "hunter2hunter2", "env-secret-value-77",
           "daemon-token-xyz123")
REPLY = json.dumps({"proposals": [{
    "kind": "patch", "title": "Closed form for crunch", "rationale": "crunch is 90% of the samples",
    "diff": "--- a/busy.py\n+++ b/busy.py\n@@ -6,5 +6,2 @@\n def crunch(n):\n-    total = 0\n"
            "-    for i in range(n):\n-        total += i * i % 7\n-    return total\n"
            "+    return sum(i * i % 7 for i in range(n))\n"}]})


@pytest.fixture
def busy(tmp_path: Path):
    """A real CPU-bound Python program, with secrets in its source, argv, env and a .env."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "busy.py").write_text(BUSY)
    (project / ".env").write_text("DB_PASSWORD=hunter2hunter2\n")
    proc = subprocess.Popen([sys.executable, str(project / "busy.py"), "120", "--token", SECRETS[1]],
                            cwd=project, env={**os.environ, "MY_SECRET": SECRETS[3]})
    time.sleep(0.3)
    yield proc, project
    proc.kill()
    proc.wait()


def _hotspots(project: Path) -> list[dict[str, Any]]:
    return [{"function": "crunch", "file": str(project / "busy.py"), "short_file": "busy.py", "line": 9,
             "self_pct": 91.0, "total_pct": 95.0, "samples": 91},
            {"function": "main", "file": str(project / "busy.py"), "short_file": "busy.py", "line": 16,
             "self_pct": 1.0, "total_pct": 100.0, "samples": 1}]


def _finding(kind: str, entity: str, now: float) -> dict[str, Any]:
    return {"kind": kind, "entity": entity, "severity": "warning", "message": f"{entity}: {kind} for 60s",
            "details": {"window_s": 60.0, "share": 1.0, "mean": 98.0}, "first_seen": now, "last_seen": now,
            "active": True, "proposal": None}


class Setup:
    def __init__(self, tmp_path: Path, proc: subprocess.Popen, project: Path, backend: ScriptedBackend, *,
                 spots: bool = True, wait_s: float = 0.0, every: float = 3600.0) -> None:
        self.watch = f"pid:{proc.pid}"
        self.watcher = Watcher([self.watch])
        self.watcher.refresh()
        self.store = Store(tmp_path / "d.db").open()
        self.backend = backend
        self.spots = {proc.pid: ([self.watch], _hotspots(project))} if spots else {}
        self.advisor = self.make(every=every, wait_s=wait_s)
        state = WatchState(self.watch, processes=1, cpu_pct=98.0, rss_bytes=30 * 2**20, threads=1)
        state.rows = [(proc.pid, "python", 98.0, 30 * 2**20, 1)]
        self.watches = {self.watch: state}

    def make(self, *, every: float = 3600.0, wait_s: float = 0.0) -> Advisor:
        return Advisor(LLMProposer(Settings(), self.backend), backend="llm via scripted", store=self.store,
                       every=every, wait_s=wait_s, window=60.0, hotspots=lambda: self.spots,
                       process=self.watcher.info, secrets=[SECRETS[4]])

    def raise_finding(self, kind: str, now: float, entity: str | None = None,
                      advisor: Advisor | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        advisor = advisor or self.advisor
        finding = _finding(kind, entity or self.watch, now)
        advisor.note([finding])
        advisor.tick(now, self.watches)
        return finding, advisor.run_pending()


def test_a_findings_hot_spots_become_a_stored_proposal_without_secrets(tmp_path: Path, busy) -> None:
    proc, project = busy
    setup = Setup(tmp_path, proc, project, ScriptedBackend([REPLY]))
    finding, records = setup.raise_finding("cpu_saturation", time.time())
    assert [r["status"] for r in records] == ["ok"]
    stored = setup.store.proposals(with_request=True)
    assert len(stored) == 1 and stored[0]["id"] == records[0]["id"] == finding["proposal"]["id"]
    row = stored[0]
    assert row["pid"] == proc.pid and row["kind"] == "cpu_saturation" and row["entity"] == setup.watch
    assert row["proposals"][0]["title"] == "Closed form for crunch" and "@@" in row["proposals"][0]["diff"]
    assert row["applied"] is False
    assert (project / "busy.py").read_text() == BUSY  # stored, never applied
    sent = "\n".join(m["content"] for m in setup.backend.history[0])
    assert sent == "\n".join(m["content"] for m in row["request"])  # what was sent is on record
    assert "crunch" in sent and "total += i * i % 7" in sent  # hot spot with its source
    assert "cpu_saturation" in sent and "--token ***" in sent
    for secret in SECRETS:
        assert secret not in sent, secret
    assert ".env" not in sent


def test_one_proposal_per_finding_kind_and_process_per_hour(tmp_path: Path, busy) -> None:
    proc, project = busy
    setup = Setup(tmp_path, proc, project, ScriptedBackend([REPLY] * 4))
    now = time.time()
    first, records = setup.raise_finding("cpu_saturation", now)
    assert len(records) == 1
    # The host's CPU saturation is the same kind, and its busiest process is the same one.
    host, again = setup.raise_finding("cpu_saturation", now + 60, entity="host")
    assert again == [] and setup.advisor.stats.rate_limited == 1
    assert host["proposal"] == {"id": first["proposal"]["id"], "status": "rate-limited", "titles": []}
    _other, records = setup.raise_finding("memory_growth", now + 60)  # another kind: its own proposal
    assert len(records) == 1
    # A restarted daemon remembers (the store holds the history).
    restarted = setup.make()
    restarted.load_history()
    assert setup.raise_finding("cpu_saturation", time.time() + 120, advisor=restarted)[1] == []
    assert setup.raise_finding("cpu_saturation", now + 3601)[1] != []  # an hour later: allowed
    assert len(setup.backend.history) == 3
    assert len(setup.store.proposals()) == 3


def test_the_rate_limit_is_configurable(tmp_path: Path, busy) -> None:
    proc, project = busy
    setup = Setup(tmp_path, proc, project, ScriptedBackend([REPLY] * 2), every=30.0)
    now = time.time()
    assert len(setup.raise_finding("cpu_saturation", now)[1]) == 1
    assert setup.raise_finding("cpu_saturation", now + 10)[1] == []
    assert len(setup.raise_finding("cpu_saturation", now + 31)[1]) == 1


def test_backend_failures_are_recorded_and_later_requests_still_served(tmp_path: Path, busy) -> None:
    proc, project = busy
    backend = ScriptedBackend([BackendError("server error HTTP 500 from http://127.0.0.1:1/v1"),
                               RuntimeError("plugin bug"), "I would rather not.", REPLY])
    setup = Setup(tmp_path, proc, project, backend)
    now = time.time()
    statuses = [setup.raise_finding(kind, now)[1][0] for kind in ("cpu_saturation", "memory_growth", "io_wait",
                                                                    "restarts")]
    assert [r["status"] for r in statuses] == ["failed", "failed", "invalid", "ok"]
    assert "HTTP 500" in statuses[0]["error"] and "RuntimeError: plugin bug" in statuses[1]["error"]
    assert "JSON" in statuses[2]["error"]
    stored = {r["kind"]: r for r in setup.store.proposals()}
    assert stored["cpu_saturation"]["status"] == "failed" and stored["restarts"]["status"] == "ok"
    assert (setup.advisor.stats.failed, setup.advisor.stats.invalid, setup.advisor.stats.ok) == (2, 1, 1)
    # A failure may be retried sooner than a success (after FAILED_RETRY_S, not an hour).
    backend.enqueue(REPLY)
    assert setup.raise_finding("cpu_saturation", now + FAILED_RETRY_S / 2)[1] == []
    assert setup.raise_finding("cpu_saturation", now + FAILED_RETRY_S + 1)[1][0]["status"] == "ok"


def test_waits_for_hot_spots_then_proposes_from_telemetry(tmp_path: Path, busy) -> None:
    proc, project = busy
    setup = Setup(tmp_path, proc, project, ScriptedBackend([REPLY]), spots=False, wait_s=30.0)
    now = time.time()
    finding = _finding("cpu_saturation", setup.watch, now)
    setup.advisor.note([finding])
    setup.advisor.tick(now + 5, setup.watches)
    assert setup.advisor.run_pending() == [] and setup.advisor.waiting  # the next snapshot may bring them
    setup.advisor.tick(now + 31, setup.watches)
    records = setup.advisor.run_pending()
    assert len(records) == 1 and records[0]["pid"] == proc.pid
    sent = setup.backend.history[0][1]["content"]
    assert "no hot spots" in sent and "cpu_utilization_mean_pct: 98" in sent


def test_resolved_findings_and_cpu_steal_get_no_proposal(tmp_path: Path, busy) -> None:
    proc, project = busy
    setup = Setup(tmp_path, proc, project, ScriptedBackend([REPLY]), spots=False, wait_s=30.0)
    now = time.time()
    steal = _finding("cpu_steal", "host", now)
    waiting = _finding("cpu_saturation", setup.watch, now)
    setup.advisor.note([steal, waiting])
    assert list(setup.advisor.waiting) == [("cpu_saturation", setup.watch)]
    setup.advisor.note([{**waiting, "active": False, "last_seen": now + 3}])
    setup.advisor.tick(now + 60, setup.watches)
    assert setup.advisor.run_pending() == [] and setup.backend.history == []


def test_command_lines_lose_secret_values() -> None:
    argv = ["gunicorn", "--api-key", "abc123abc123", "--password=pw-value-1", "--workers", "4",
            "DATABASE_URL=postgres://u:p@h/db", "token=tok-value-99", "--bind", "0.0.0.0:80"]
    masked = " ".join(mask_argv(argv))
    for secret in ("abc123abc123", "pw-value-1", "tok-value-99"):
        assert secret not in masked
    assert "--workers 4" in masked and "--bind 0.0.0.0:80" in masked and "--api-key ***" in masked


def test_propose_without_a_backend_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs an LLM backend"):
        Daemon(daemon_config({"propose": True, "db": str(tmp_path / "d.db"), "listen": "127.0.0.1:0"}))
    exe = Path(sys.executable).parent / "perfpilot"
    result = subprocess.run([str(exe), "daemon", "--propose", "--db", str(tmp_path / "d.db")],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PERFPILOT_BACKEND": ""})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--backend" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "d.db").exists()  # refused before anything started


# ----------------------------------------------------------------------------- end to end


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        body = response.read()
    return body if path == "/metrics" else json.loads(body)


def _wait(predicate: Any, timeout: float, proc: subprocess.Popen, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"condition not met in time; daemon log: {log.read_text()[-2000:]}")


def _daemon(tmp_path: Path, pid: int, extra_args: list[str], top: str = "") -> tuple[subprocess.Popen, int, Path]:
    port = _free_port()
    config = tmp_path / "daemon.toml"
    config.write_text(f"""{top}
[daemon]
watch = ["pid:{pid}"]
interval = "0.5s"
flush_interval = "0.5s"
listen = "127.0.0.1:{port}"
db = "{tmp_path / 'd.db'}"
[daemon.findings]
window = "3s"
cpu_saturation_pct = 20
[daemon.snapshots]
every = "1s"
duration = "1s"
rate = 100
""")
    log = tmp_path / "daemon.log"
    exe = Path(sys.executable).parent / "perfpilot"
    proc = subprocess.Popen([str(exe), "daemon", "--config", str(config), "--propose", *extra_args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=tmp_path,
                            env={**os.environ, "PERFPILOT_DAEMON_TOKEN": ""})
    return proc, port, log


def _stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@pytest.mark.slow
def test_daemon_propose_end_to_end_with_the_mock_backend(tmp_path: Path, busy) -> None:
    proc, project = busy
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps([json.loads(REPLY), "not json at all"]))
    daemon, port, log = _daemon(tmp_path, proc.pid, ["--backend", "mock", "--mock-replies", str(replies)])
    try:
        listing = _wait(lambda: [p for p in _get(port, "/api/proposals")["proposals"]
                                 if p["status"] == "ok" and p["pid"] == proc.pid], 90, daemon, log)
        entry = listing[0]
        assert entry["kind"] == "cpu_saturation" and entry["applied"] is False
        assert entry["proposals"][0]["title"] == "Closed form for crunch"
        full = _get(port, f"/api/proposals?id={entry['id']}")["proposal"]
        sent = "\n".join(m["content"] for m in full["request"])
        assert "crunch" in sent and "total += i * i % 7" in sent  # the real py-spy hot spot, with source
        for secret in SECRETS[:4]:
            assert secret not in sent, secret
        metrics = _get(port, "/metrics").decode()
        assert any(line.startswith("perfpilot_proposals_total ") and float(line.split()[1]) >= 1
                   for line in metrics.splitlines())
        health = _get(port, "/healthz")
        assert health["status"] == "ok" and health["proposals"]["enabled"] is True
    finally:
        code = _stop(daemon)
    assert code == 0
    assert (project / "busy.py").read_text() == BUSY  # never applied
    exe = Path(sys.executable).parent / "perfpilot"
    listed = json.loads(subprocess.run([str(exe), "daemon", "proposals", "--db", str(tmp_path / "d.db"), "--json"],
                                       capture_output=True, text=True, check=True, timeout=60).stdout)
    assert any(p["id"] == entry["id"] and p["status"] == "ok" for p in listed)
    shown = subprocess.run([str(exe), "daemon", "proposals", "--db", str(tmp_path / "d.db"), "--id",
                            str(entry["id"])], capture_output=True, text=True, check=True, timeout=60).stdout
    assert "Closed form for crunch" in shown and "never applied" in shown
    findings = json.loads(subprocess.run([str(exe), "daemon", "findings", "--db", str(tmp_path / "d.db"), "--json"],
                                         capture_output=True, text=True, check=True, timeout=60).stdout)
    assert any((f.get("proposal") or {}).get("id") == entry["id"] for f in findings)
    missing = subprocess.run([str(exe), "daemon", "proposals", "--db", str(tmp_path / "d.db"), "--id", "999"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_an_unreachable_backend_is_recorded_and_the_daemon_goes_on(tmp_path: Path, busy) -> None:
    proc, _project = busy
    dead = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    daemon, port, log = _daemon(tmp_path, proc.pid, ["--backend", "openai", "--base-url", dead, "--model", "m"],
                                top='llm_retries = 0\nllm_timeout = "5s"')
    try:
        failed = _wait(lambda: [p for p in _get(port, "/api/proposals")["proposals"] if p["status"] == "failed"],
                       90, daemon, log)
        assert "cannot reach" in failed[0]["error"] and dead.rsplit("/", 1)[0] in failed[0]["error"]
        ticks = _get(port, "/healthz")["ticks"]
        _wait(lambda: _get(port, "/healthz")["ticks"] > ticks + 2, 20, daemon, log)  # still sampling
        assert _get(port, "/healthz")["status"] == "ok"
    finally:
        assert _stop(daemon) == 0
