"""The Prometheus rules shipped in examples/prometheus/, checked by the real promtool.

``promtool test rules`` runs the unit tests in examples/prometheus/tests/: each alert fires
on series shaped like a daemon's /metrics and stays quiet on normal ones, and each
recording rule gives the expected fleet figures (through a daemon restart's counter reset).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason=f"no promtool at {PROMTOOL}")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=RULES)


def test_promtool_check_rules_passes_on_the_shipped_rules() -> None:
    result = promtool("check", "rules", "perfpilot-alerts.yml", "perfpilot-recording.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


def test_promtool_unit_tests_fire_each_alert_and_record_the_fleet_view() -> None:
    tests = sorted(str(p.relative_to(RULES)) for p in (RULES / "tests").glob("*.test.yml"))
    assert len(tests) == 2
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_test_a_severity_and_says_what_to_do() -> None:
    groups = yaml.safe_load((RULES / "perfpilot-alerts.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"]]
    tested = yaml.safe_load((RULES / "tests" / "perfpilot-alerts.test.yml").read_text())["tests"]
    firing = {case["alertname"] for test in tested for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert {a["alert"] for a in alerts} == firing  # every alert is seen firing at least once
    findings = {a["labels"].get("finding") for a in alerts} - {None}
    from perfpilot.agent.daemon.findings import KINDS

    assert findings == set(KINDS)  # one alert (or more) for every finding kind the daemon raises
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"] and len(alert["annotations"]["description"]) > 80


def test_the_example_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"


@pytest.mark.skipif(not Path(AMTOOL).exists(), reason=f"no amtool at {AMTOOL} (Debian: prometheus-alertmanager)")
def test_the_example_alertmanager_config_routes_on_the_alerts_severity() -> None:
    def amtool(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=RULES)

    check = amtool("check-config", "alertmanager.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    severities = {rule["labels"]["severity"] for group in yaml.safe_load((RULES / "perfpilot-alerts.yml").read_text())
                  ["groups"] for rule in group["rules"]}
    expected = {"critical": "on-call", "warning": "team-chat", "info": "null"}
    assert severities == set(expected)
    for severity, receiver in expected.items():
        routed = amtool("config", "routes", "test", "--config.file=alertmanager.yml", f"severity={severity}",
                        "alertname=PerfpilotRestarts", "instance=web1:10464")
        assert routed.stdout.strip() == receiver, (severity, routed.stdout, routed.stderr)
