"""Daemon settings: the [daemon] table, flags, and bad input as one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfpilot.agent.daemon.config import DEFAULT_PORT, daemon_config, parse_size
from perfpilot.errors import ConfigError


def test_defaults_are_loopback_and_a_free_port() -> None:
    config = daemon_config({})
    assert config.host == "127.0.0.1"
    assert config.port == DEFAULT_PORT
    # ports the issue reserves for peers, and OpenTelemetry's Prometheus exporter
    assert DEFAULT_PORT not in {9100, 9256, 9400, 19999, 4040, 7071, 9464, 9090}
    assert config.interval == 1.0 and config.flush_interval == 5.0


def test_table_and_flags() -> None:
    config = daemon_config(
        {"watch": ["name:gunicorn"], "interval": "500ms", "max_db_bytes": "64MiB", "raw_retention": "2h", "rollup_retention": "30d",
         "snapshots": {"every": "30s", "duration": "3s", "rate": 20}, "findings": {"cpu_saturation_pct": "80%"}},
        {"watch": ("pid:1",), "interval": "2s", "snapshots": False},
    )
    assert config.watch == ["pid:1"]  # flags win over the file
    assert config.interval == 2.0
    assert config.max_db_bytes == 64 * 2**20
    assert config.raw_retention == 7200 and config.rollup_retention == 30 * 86400
    assert config.snapshots.every == 30 and config.snapshots.duration == 3 and not config.snapshots.enabled
    assert config.findings.cpu_saturation_pct == pytest.approx(80.0)


@pytest.mark.parametrize("table, message", [
    ({"intervall": "1s"}, "unknown key 'intervall'"),
    ({"snapshots": {"evry": 1}}, "daemon.snapshots: unknown key 'evry'"),
    ({"interval": "soon"}, "expected a duration"),
    ({"max_db_bytes": "lots"}, "expected a size"),
    ({"max_db_bytes": "1KiB"}, "at least 64KiB"),
    ({"listen": "localhost"}, "expected HOST:PORT"),
    ({"listen": "0.0.0.0:10464"}, "a token is required"),
    ({"watch": [1, 2]}, "expected a list of selectors"),
])
def test_bad_settings_name_the_problem(table: dict, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFPILOT_DAEMON_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        daemon_config(table)


def test_off_loopback_with_a_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-s3cret-s3cret\n")
    token.chmod(0o600)
    config = daemon_config({"listen": "0.0.0.0:10464", "token_file": str(token)})
    assert config.resolved_token() == "s3cret-s3cret-s3cret"
    token.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        config.resolved_token()


def test_sizes() -> None:
    assert parse_size("1.5KB", name="x") == 1500
    assert parse_size("2GiB", name="x") == 2 * 2**30
    assert parse_size(4096, name="x") == 4096
    with pytest.raises(ConfigError):
        parse_size("-3MB", name="x")


def test_cli_bad_selector_is_one_line(perfpilot_cli, tmp_path: Path) -> None:
    result = perfpilot_cli("daemon", "--watch", "process:foo", "--db", str(tmp_path / "pp.db"), cwd=tmp_path)
    assert result.returncode == 125
    assert result.stderr.strip().count("\n") == 0
    assert "bad watch selector 'process:foo'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, message", [
    ({"interval": "0s"}, "--interval: must be greater than zero"),
    ({"max_db_bytes": "12parsecs"}, "--max-db-size: unknown size unit 'parsecs'"),
])
def test_bad_flags_name_the_flag(flags: dict, message: str) -> None:
    # used to read "command line.interval" / "command line.max_db_bytes": no such option
    with pytest.raises(ConfigError) as err:
        daemon_config({}, flags)
    assert str(err.value).startswith(message), str(err.value)


def test_cli_db_under_a_file_says_the_folder_is_the_problem(perfpilot_cli, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = perfpilot_cli("daemon", "--db", str(tmp_path / "afile" / "pp.db"), "--listen", "127.0.0.1:0",
                           cwd=tmp_path)
    assert result.returncode == 125 and "Traceback" not in result.stderr
    # was "cannot create .../afile: File exists (create it, ...)"
    assert f"cannot create the database's folder {tmp_path / 'afile'}" in result.stderr
    assert "create it" not in result.stderr


def test_cli_config_file_daemon_table(perfpilot_cli, tmp_path: Path) -> None:
    config = tmp_path / "perfpilot.toml"
    config.write_text('[daemon]\nwatch = ["top:1"]\nlisten = "0.0.0.0:1"\n')
    result = perfpilot_cli("daemon", "--config", str(config), cwd=tmp_path,
                           env={"PERFPILOT_DAEMON_TOKEN": ""})
    assert result.returncode == 125
    assert "a token is required" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("content, message", [
    (b"garbage" * 1000, "is corrupt or not a perfpilot database"),
])
def test_cli_corrupt_database(perfpilot_cli, tmp_path: Path, content: bytes, message: str) -> None:
    db = tmp_path / "pp.db"
    db.write_bytes(content)
    for args in (("daemon", "--db", str(db), "--listen", "127.0.0.1:0"), ("daemon", "status", "--db", str(db)),
                 ("daemon", "query", "--db", str(db), "--metric", "cpu.utilization_pct")):
        result = perfpilot_cli(*args, cwd=tmp_path)
        assert result.returncode == 125, (args, result.stderr)
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith("perfpilot: error:")]
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def test_join_listen_is_what_split_listen_reads_back() -> None:
    from perfpilot.agent.daemon.config import join_listen, split_listen

    assert join_listen("::1", 10464) == "[::1]:10464" and join_listen("127.0.0.1", 9) == "127.0.0.1:9"
    for host, port in (("127.0.0.1", 10464), ("::1", 0), ("0.0.0.0", 65535)):
        assert split_listen(join_listen(host, port)) == (host, port)
