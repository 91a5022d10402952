"""A fleet on loopback: three real daemons, each watching its own real Python process,
one real Prometheus scraping all three with the shipped rules (a test copy with short
windows and ``for:``), the Grafana dashboard's queries, and ``daemon hotspots --from``.

One test for all of it: starting daemons and Prometheus is the slow part. Plus cheap
unit tests of the ``--from`` syntax and the merge.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from polling import wait_for
from perfpilot.agent.daemon import fleet
from perfpilot.errors import PerfpilotError

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "prometheus"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# The shipped windows scaled down so that a test sees in seconds what a fleet sees in minutes.
WINDOWS = {"10m": "10s", "5m": "5s", "1m": "2s", "1h": "30s"}

TARGET = """
import os, sys, time
NAME, GROW = sys.argv[1], sys.argv[2]  # GROW: a file whose appearance starts the growth, or "-"
held = []
exec(f'''def burn_{NAME}():
    end = time.perf_counter() + 0.015
    while time.perf_counter() < end:
        pass
''')
hot = globals()[f"burn_{NAME}"]
def leak():
    held.append(bytearray(b"x") * (600 << 10))  # written, so resident: about 6 MiB/s for 40 s
started = time.monotonic()
while time.monotonic() - started < 120:
    hot()
    if GROW != "-" and len(held) < 400 and os.path.exists(GROW):
        leak()
    time.sleep(0.085)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def perfpilot_exe() -> str:
    exe = shutil.which("perfpilot", path=str(Path(sys.executable).parent)) or shutil.which("perfpilot")
    assert exe, "perfpilot console script is not installed"
    return exe


def shorten(expr: str) -> str:
    return re.sub(r"\[(\d+[mh])\]", lambda m: f"[{WINDOWS[m.group(1)]}]", expr)


def rules_copy(tmp: Path) -> list[Path]:
    """The shipped rule files with short windows and ``for: 1s`` (thresholds unchanged)."""
    out = []
    for name in ("perfpilot-alerts.yml", "perfpilot-recording.yml"):
        doc = yaml.safe_load((RULES / name).read_text())
        for group in doc["groups"]:
            group["interval"] = "500ms"
            for rule in group["rules"]:
                rule["expr"] = shorten(rule["expr"])
                if "for" in rule:
                    rule["for"] = "1s"
        path = tmp / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append(path)
    return out


def start_fleet(tmp: Path, token_file: Path) -> tuple[list[subprocess.Popen], list[subprocess.Popen], list[str]]:
    script = tmp / "target.py"
    script.write_text(TARGET)
    grow = str(tmp / "grow")  # gamma leaks once Prometheus is scraping (see start_prometheus)
    targets = [subprocess.Popen([sys.executable, str(script), name, grow if name == "gamma" else "-"])
               for name in ("alpha", "beta", "gamma")]
    daemons, urls = [], []
    for i, target in enumerate(targets):
        port = free_port()
        config = tmp / f"d{i}.toml"
        config.write_text(f'[daemon]\nlisten = "127.0.0.1:{port}"\ndb = "{tmp / f"d{i}.db"}"\n'
                          f'watch = ["pid:{target.pid}"]\ninterval = "0.25s"\ntoken_file = "{token_file}"\n'
                          '[daemon.snapshots]\nevery = "1s"\nduration = "1"\nrate = 100\n')
        log = open(tmp / f"d{i}.log", "w")
        daemons.append(subprocess.Popen([perfpilot_exe(), "daemon", "--config", str(config)], stdout=log,
                                        stderr=log, cwd=tmp))
        urls.append(f"http://127.0.0.1:{port}")
    return targets, daemons, urls


def start_prometheus(tmp: Path, urls: list[str], token_file: Path) -> tuple[subprocess.Popen, str]:
    rules = rules_copy(tmp)
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "500ms", "evaluation_interval": "500ms", "scrape_timeout": "400ms"},
        "rule_files": [str(p) for p in rules],
        "scrape_configs": [{"job_name": "perfpilot", "authorization": {"credentials_file": str(token_file)},
                            "static_configs": [{"targets": [u.removeprefix("http://") for u in urls]}]}],
    }))
    log = open(tmp / "prometheus.log", "w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                            stdout=log, stderr=log, cwd=tmp)
    (tmp / "grow").touch()
    return proc, f"http://127.0.0.1:{port}"


def promql(prom: str, expr: str) -> list[dict[str, Any]] | None:
    status, body = get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status in (0, 200), (status, expr)  # 400: the expression does not parse
    return body["data"]["result"] if body else None


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def hotspots_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([perfpilot_exe(), "daemon", "hotspots", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.slow
@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason=f"no Prometheus server binary at {PROMETHEUS}")
def test_three_daemons_one_prometheus_rules_alert_dashboard_and_merged_hotspots(tmp_path: Path) -> None:
    token_file = tmp_path / "fleet.token"
    token_file.write_text("s3cret-fleet-token\n")
    token_file.chmod(0o600)  # the daemon refuses a token file others can read
    targets, daemons, urls = start_fleet(tmp_path, token_file)
    procs: list[subprocess.Popen] = [*targets, *daemons]
    try:
        wait_for(lambda: all(get(f"{u}/healthz", "s3cret-fleet-token")[0] == 200 for u in urls), timeout=60, step=0.2)
        prom, prom_url = start_prometheus(tmp_path, urls, token_file)
        procs.append(prom)
        labels = {u.removeprefix("http://"): f"pid:{t.pid}" for u, t in zip(urls, targets)}
        _check_recording_rules(prom_url, labels)
        _check_memory_alert_fires(prom_url, labels, grower=urls[2])
        _check_dashboard_queries(prom_url)
        _check_real_metrics_are_clean(urls[0])
        _check_merged_hotspots(urls, token_file)
    finally:
        stop(procs)


def _check_recording_rules(prom: str, labels: dict[str, str]) -> None:
    """Each recording rule: one series per daemon (per CPU mode for the mode rule)."""
    doc = yaml.safe_load((RULES / "perfpilot-recording.yml").read_text())
    records = [rule["record"] for group in doc["groups"] for rule in group["rules"]]
    assert len(records) >= 10

    def per_instance(record: str) -> bool:
        result = promql(prom, record) or []
        groups: dict[str, list[str]] = {}
        for series in result:
            metric = series["metric"]
            key = metric.get("instance") or next(i for i, w in labels.items() if w == metric.get("watch"))
            groups.setdefault(metric.get("mode", ""), []).append(key)
        return bool(groups) and all(sorted(keys) == sorted(labels) for keys in groups.values())

    for record in records:
        assert wait_for(lambda: per_instance(record), timeout=20, step=0.25), record
    watch_counts = {s["metric"]["watch"]: float(s["value"][1])
                    for s in promql(prom, "watch:perfpilot_watch_instances:count") or []}
    assert watch_counts == {w: 1.0 for w in labels.values()}


def _check_memory_alert_fires(prom: str, labels: dict[str, str], grower: str) -> None:
    def firing() -> list[dict[str, Any]]:
        status, body = get(f"{prom}/api/v1/alerts")
        alerts = body["data"]["alerts"] if body else []
        return [a for a in alerts if a["labels"]["alertname"] == "PerfpilotMemoryGrowth" and a["state"] == "firing"]

    alerts = wait_for(firing, timeout=30, step=0.25)
    instance = grower.removeprefix("http://")
    assert [(a["labels"]["instance"], a["labels"]["watch"]) for a in alerts] == [(instance, labels[instance])]
    alert = alerts[0]
    assert alert["labels"]["severity"] == "warning" and alert["labels"]["finding"] == "memory_growth"
    assert re.search(r"RSS grows [\d.]+[KMG]iB per hour", alert["annotations"]["summary"]), alert["annotations"]
    assert labels[instance] in alert["annotations"]["summary"]
    assert float(alert["value"]) >= 96 * 2**20  # the slope, bytes per hour


def _check_dashboard_queries(prom: str) -> None:
    dashboard = json.loads((RULES / "grafana-perfpilot.json").read_text())
    targets = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(targets) >= 15
    hostless = {"GPU utilization", "GPU memory held per watch"}  # no GPU on this machine
    for title, expr in targets:
        query = shorten(expr.replace("$instance", ".*"))
        result = wait_for(lambda: (r := promql(prom, query)) is not None and (r or title in hostless) and [r],
                          timeout=15, step=0.25)
        assert result[0] or title in hostless, (title, query)


def _check_real_metrics_are_clean(url: str) -> None:
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": "Bearer s3cret-fleet-token"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read()
    assert b"# TYPE perfpilot_daemon_io_read_chars_bytes_total counter" in text  # the daemon's own I/O
    assert b"# TYPE perfpilot_daemon_io_write_syscalls_total counter" in text
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if Path(promtool).exists():
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr


def _check_merged_hotspots(urls: list[str], token_file: Path) -> None:
    def all_sampled() -> bool:
        for url in urls:
            _status, body = get(f"{url}/api/hotspots", "s3cret-fleet-token")
            if not body or not any(p["samples"] for procs in body["hotspots"].values() for p in procs):
                return False
        return True

    wait_for(all_sampled, timeout=20, step=0.25)
    collapsed = token_file.parent / "fleet.txt"
    full = hotspots_cli("--token-file", str(token_file), *[a for u in urls for a in ("--from", u)],
                        "--json", "--collapsed", str(collapsed), "--html", str(collapsed.with_suffix(".html")))
    assert full.returncode == 0, full.stderr
    doc = json.loads(full.stdout)
    hosts = [u.removeprefix("http://") for u in urls]
    assert [d["label"] for d in doc["daemons"]] == hosts and doc["errors"] == []
    per_host = [d["samples"] for d in doc["daemons"]]
    assert all(per_host) and doc["samples"] == sum(per_host)
    assert all(d["samples"] == sum(p["samples"] for p in d["processes"]) for d in doc["daemons"])
    lines = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        lines[stack.split(";")[0]] += int(count)
    assert lines == {f"host {h}": n for h, n in zip(hosts, per_host)}  # the flame graph, labelled by host
    page = collapsed.with_suffix(".html").read_text()
    assert all(f"host {h}" in page and f"<td>{h}</td>" in page for h in hosts)
    for name, host in zip(("alpha", "beta", "gamma"), hosts):
        row = next(r for r in doc["hotspots"] if r["function"] == f"burn_{name}")
        assert list(row["hosts"]) == [host]  # each target's function, from its own daemon only

    # the third daemon without its token: one line naming it; the other two still merged
    partial = hotspots_cli("--from", f"{urls[0]}@{token_file}", "--from", f"{urls[1]}@{token_file}",
                           "--from", urls[2])
    assert partial.returncode == 3, partial.stderr
    errors = partial.stderr.strip().splitlines()
    assert len(errors) == 1 and hosts[2] in errors[0] and "401" in errors[0], partial.stderr
    assert "Traceback" not in partial.stderr
    shown = {h: n for h, n in re.findall(r"^(\S+): (\d+) samples", partial.stdout, re.M) if h != "merged"}
    merged = re.search(r"^merged: (\d+) samples from 2 daemons", partial.stdout, re.M)
    assert set(shown) == set(hosts[:2]) and merged, partial.stdout
    assert int(merged.group(1)) == sum(int(n) for n in shown.values())
    assert "burn_alpha" in partial.stdout and "burn_beta" in partial.stdout and "burn_gamma" not in partial.stdout


# ---------------------------------------------------------------- cheap unit tests


def test_from_syntax_takes_a_token_file_or_variable_per_daemon(tmp_path: Path) -> None:
    plain = fleet.parse_source("web1:10464", default_token="file:/etc/fleet.token")
    assert (plain.url, plain.label, plain.token_from) == ("http://web1:10464", "web1:10464", "file:/etc/fleet.token")
    own = fleet.parse_source("https://web2:10464/@/run/web2.token", default_token="file:/etc/fleet.token")
    assert (own.url, own.label, own.token_from) == ("https://web2:10464", "web2:10464", "file:/run/web2.token")
    env = fleet.parse_source("http://[::1]:10464@env:GPU_TOKEN")
    assert (env.url, env.label, env.token_from) == ("http://[::1]:10464", "[::1]:10464", "env:GPU_TOKEN")
    proxied = fleet.parse_source("https://proxy/perfpilot/web3/")
    assert (proxied.url, proxied.label) == ("https://proxy/perfpilot/web3", "proxy/perfpilot/web3")
    for bad in ("ftp://web1:10464", "http://:10464", "http://web1:10464@"):
        with pytest.raises(PerfpilotError):
            fleet.parse_source(bad)


def test_a_daemon_given_twice_is_asked_once() -> None:
    port = free_port()  # closed again: nothing listens there
    twice = [fleet.parse_source(f"127.0.0.1:{port}"), fleet.parse_source(f"http://127.0.0.1:{port}/")]
    daemons, errors = fleet.fetch_all(twice, timeout=2)
    assert daemons == [] and len(errors) == 1 and str(errors[0]).startswith(f"127.0.0.1:{port}: cannot connect")


def test_merge_counts_a_process_under_two_watches_once_and_labels_hosts() -> None:
    stacks = {"main (app.py:3);hot (app.py:9)": 30, "main (app.py:3)": 10}
    body_a = {"rate_hz": 100, "hotspots": {
        "name:app": [{"pid": 7, "name": "app", "samples": 40, "stacks": stacks}],
        "cmdline:app": [{"pid": 7, "name": "app", "samples": 40, "stacks": stacks}]}}
    body_b = {"rate_hz": 100, "hotspots": {"name:app": [{"pid": 7, "name": "app", "samples": 5,
                                                         "stacks": {"main (app.py:3);hot (app.py:9)": 5}}]}}
    a = fleet._parse(fleet.Source("http://a:1", "a:1"), body_a)
    b = fleet._parse(fleet.Source("http://b:1", "b:1"), body_b)
    assert a.samples == 40 and a.processes[0]["watches"] == ["name:app", "cmdline:app"]
    merged = fleet.merge([a, b])
    assert merged.samples == 45 == sum(merged.labelled.values())
    assert merged.labelled["host a:1;pid 7 app;main (app.py:3);hot (app.py:9)"] == 30
    rows = fleet.ranked(merged)
    assert rows[0]["function"] == "hot" and rows[0]["samples"] == 35 and rows[0]["hosts"] == {"a:1": 30, "b:1": 5}
    profile = fleet.to_profile(merged, rows)
    from perfpilot.profilers.renderers import collapsed, speedscope

    assert sum(int(line.rsplit(" ", 1)[1]) for line in collapsed.render(profile).splitlines()) == 45
    assert speedscope.build(profile)["profiles"][0]["endValue"] == pytest.approx(0.45)
    from perfpilot.profilers.renderers import fleet_html

    page = fleet_html.render(profile)
    assert "<td>a:1 30, b:1 5</td>" in page and "host a:1" in page and "pid 7 app" in page


def test_a_daemon_without_stacks_or_not_a_daemon_is_one_clear_error() -> None:
    source = fleet.Source("http://old:1", "old:1")
    with pytest.raises(fleet.SourceError, match="old:1: this daemon does not serve stacks"):
        fleet._parse(source, {"hotspots": {"name:x": [{"pid": 1, "samples": 3, "hotspots": []}]}})
    with pytest.raises(fleet.SourceError, match="not a perfpilot daemon"):
        fleet._parse(source, ["something", "else"])


def test_dashboard_is_valid_json_and_reads_only_recorded_or_exported_series() -> None:
    dashboard = json.loads((RULES / "grafana-perfpilot.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    recorded = {rule["record"] for group in yaml.safe_load((RULES / "perfpilot-recording.yml").read_text())["groups"]
                for rule in group["rules"]}
    used = set()
    for panel in panels:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", target["expr"]))
            assert all(name.startswith(("perfpilot_", "up", "ALERTS"))
                       for name in re.findall(r"(?<![:\w])([A-Za-z_]\w*)\{", target["expr"])), target["expr"]
    assert used <= recorded and len(used) >= 8  # the recording rules are what the fleet panels draw


def test_bad_from_or_no_daemon_reachable_is_one_line_and_exit_125() -> None:
    bad = hotspots_cli("--from", "ftp://web1:10464")
    assert bad.returncode == 125 and bad.stderr.count("\n") == 1 and "--from 'ftp://web1:10464'" in bad.stderr
    port = free_port()
    none = hotspots_cli("--from", f"127.0.0.1:{port}")
    lines = none.stderr.strip().splitlines()
    assert none.returncode == 125 and len(lines) == 2 and "Traceback" not in none.stderr, none.stderr
    assert lines[0].startswith(f"perfpilot: error: 127.0.0.1:{port}: cannot connect") and "none of the 1" in lines[1]
