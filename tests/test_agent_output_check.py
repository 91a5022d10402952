from __future__ import annotations

import pytest

from perfpilot.agent.output_check import parse_output_check
from perfpilot.errors import ConfigError
from perfpilot.profilers.profile import Profile


def run(stdout: str = "", **summary: float) -> Profile:
    profile = Profile(summary=dict(summary))
    profile.output = (stdout.encode(), b"")
    return profile


def test_exact():
    check = parse_output_check("exact")
    assert check.compare(run("a\nb\n"), run("a\nb\n")) is None
    assert "line 2" in check.compare(run("a\nb\n"), run("a\nc\n"))


def test_numeric_tolerance():
    check = parse_output_check("numeric:1e-3")
    assert check.compare(run("loss 0.50000 after 3 steps"), run("loss 0.50004 after 3 steps")) is None
    assert "differs" in check.compare(run("loss 0.5 after 3 steps"), run("loss 0.6 after 3 steps"))
    assert check.compare(run("loss 0.5 after 3 steps"), run("cost 0.5 after 3 steps")) is not None


def test_reported_metric_with_percent_tolerance():
    check = parse_output_check("reported.loss:2%")
    assert check.tolerance == pytest.approx(0.02)
    assert check.compare(run(**{"reported.loss": 1.0}), run(**{"reported.loss": 1.015})) is None
    assert "reported.loss is 1.05" in check.compare(run(**{"reported.loss": 1.0}), run(**{"reported.loss": 1.05}))
    assert "did not report" in check.compare(run(**{"reported.loss": 1.0}), run())


def test_none_and_bad_specs():
    assert parse_output_check(None).mode == "auto"  # the default: exact when the baseline's stdout is stable
    assert not parse_output_check("ignore").enabled and not parse_output_check("none").enabled
    with pytest.raises(ConfigError, match="unknown mode"):
        parse_output_check("fuzzy")
    with pytest.raises(ConfigError, match="bad tolerance"):
        parse_output_check("numeric:lots")
