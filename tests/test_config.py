from __future__ import annotations

import pytest

from perfpilot.config import Settings, load_settings, parse_duration, parse_percent
from perfpilot.errors import ConfigError


def test_precedence_file_then_env_then_flags(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.perfpilot]\ninterval = "250ms"\nrate = 50\nobjective = "cpu"\n')
    s = load_settings(cwd=tmp_path, environ={})
    assert (s.interval, s.rate, s.objective) == (0.25, 50, "cpu")
    s = load_settings(cwd=tmp_path, environ={"PERFPILOT_RATE": "20", "PERFPILOT_INTERVAL": "1s"})
    assert (s.interval, s.rate) == (1.0, 20)
    s = load_settings(cwd=tmp_path, environ={"PERFPILOT_RATE": "20"}, overrides={"rate": 7, "interval": None})
    assert (s.interval, s.rate) == (0.25, 7)


def test_perfpilot_toml_is_found_upwards(tmp_path):
    (tmp_path / "perfpilot.toml").write_text('run = "python app.py"\n[knobs]\namp = { env = "AMP", values = ["0", "1"] }\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    s = load_settings(cwd=sub, environ={})
    assert s.run == "python app.py"
    assert s.knobs["amp"]["values"] == ["0", "1"]


def test_unknown_key_names_the_key(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.perfpilot]\nintervall = "1s"\n')
    with pytest.raises(ConfigError, match="unknown key 'intervall'"):
        load_settings(cwd=tmp_path, environ={})


def test_broken_toml_is_one_clear_error(tmp_path):
    (tmp_path / "perfpilot.toml").write_text("run = [unterminated\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cwd=tmp_path, environ={})


@pytest.mark.parametrize("bad", ["0", "-1s", "fast", "1 parsec", True])
def test_invalid_interval(bad):
    with pytest.raises(ConfigError):
        parse_duration(bad, name="interval")


def test_durations_and_percents():
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("2m") == 120
    assert parse_duration(0.5) == 0.5
    assert parse_percent("2%") == pytest.approx(0.02)
    assert parse_percent(0.05) == pytest.approx(0.05)
    assert parse_percent(5) == pytest.approx(0.05)


def test_wrong_types_are_errors(tmp_path):
    (tmp_path / "perfpilot.toml").write_text('rate = "many"\n')
    with pytest.raises(ConfigError, match="rate: expected a number"):
        load_settings(cwd=tmp_path, environ={})
    (tmp_path / "perfpilot.toml").write_text('knobs = 3\n')
    with pytest.raises(ConfigError, match="knobs: expected a table"):
        load_settings(cwd=tmp_path, environ={})


def test_settings_keys_cover_dataclass():
    assert "source" not in Settings.keys()
    assert {"run", "test", "objective", "knobs", "interval"} <= set(Settings.keys())
