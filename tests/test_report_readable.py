"""Reports a reader can use: hot spots whole at 80 columns, charts only where there is a
series, human units, and no flame graph drawn from nothing."""

from __future__ import annotations

import json

from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers import html as html_renderer
from perfpilot.profilers.renderers.terminal import hotspot_text

LONG = "StatementSplitter._change_splitlevel_for_nested_blocks"  # 54 characters
SPOTS = [
    {"function": LONG, "short_file": "sqlparse/engine/statement_splitter.py", "line": 104, "self_pct": 41.5,
     "total_pct": 63.0, "code": "if ttype is T.Keyword and value.upper() in ('BEGIN', 'CASE', 'DECLARE'):",
     "energy_j": 1.25, "energy_estimated": True, "samples": 170},
    {"function": "Lexer.get_tokens", "short_file": "sqlparse/lexer.py", "line": 99, "self_pct": 20.0,
     "total_pct": 30.0, "code": "m = rexmatch(text, pos)", "energy_j": 0.5, "samples": 80},
]


def test_hot_spots_at_80_columns_keep_function_and_line_whole() -> None:
    text = hotspot_text(SPOTS, width=80, title="hot spots")
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert LONG in text and "sqlparse/engine/statement_splitter.py:104" in text
    assert "Lexer.get_tokens" in text and "sqlparse/lexer.py:99" in text
    assert "self %" in text and "41.5" in text and "…" not in text
    wide = hotspot_text(SPOTS, width=200)
    assert "code" in wide and "energy" in wide and "total %" in wide  # nothing dropped when there is room


def test_a_name_wider_than_the_terminal_folds_instead_of_being_cut() -> None:
    name = "Very" + "Long" * 20 + ".method"
    text = hotspot_text([{**SPOTS[1], "function": name}], width=60)
    assert "".join(line.strip() for line in text.splitlines()).count(name) == 1, text


def _profile(series: dict, duration: float = 1.0, **extra) -> Profile:
    times = [round(0.1 * i, 1) for i in range(len(next(iter(series.values()))))]
    return Profile(started_at="2026-01-01T00:00:00+00:00", duration_s=duration,
                   summary={"wall_s": duration, "energy": {"cpu": {"joules": 3.0, "source": "estimate"}}},
                   series={"t": times, "values": series}, **extra)


def test_a_series_with_one_point_is_not_drawn() -> None:
    profile = _profile({"cpu.utilization_pct": [50.0] * 10, "power.cpu_estimate_w": [None] * 9 + [6.0]})
    page = html_renderer.render(profile)
    assert 'id="ts-cpu"' in page and 'id="ts-power"' not in page
    assert "power: one reading only" in page


def test_chart_units_are_human() -> None:
    profile = _profile({"memory.rss_bytes": [1.262e7 + i * 1e5 for i in range(10)]})
    page = html_renderer.render(profile)
    config = page.split("document.getElementById(\"ts-mem\"), ", 1)[1].split(");</script>", 1)[0]
    chart = json.loads(config)
    assert chart["options"]["scales"]["y"]["title"]["text"] == "MiB"
    assert 12.0 < chart["data"]["datasets"][0]["data"][0]["y"] < 12.1
    assert "e+07" not in page


def test_no_samples_means_no_flame_graph_and_says_why() -> None:
    profile = _profile({"cpu.utilization_pct": [50.0, 60.0, 55.0]}, duration=0.2)
    profile.annotations["stacks"] = {"status": "unavailable", "coverage_pct": 0.0}
    profile.annotations["stacks_note"] = "the target exited after 0.20 s, before py-spy could take a sample"
    page = html_renderer.render(profile)
    assert 'id="flamegraph"' not in page and "No flame graph" in page
    assert "before py-spy could take a sample" in page


def test_pytest_suggest_and_daemon_use_the_same_table() -> None:
    from perfpilot.pytest_plugin.suggest import terminal_lines

    section = {"backend": "mock", "requests": [{"nodeid": "t.py::test_a", "finding": "cpu 2.00x", "status": "ok",
                                                "hotspots_note": "py-spy", "proposals": [],
                                                "hotspots": [{k: SPOTS[0][k] for k in ("function", "line", "self_pct",
                                                                                       "total_pct")}
                                                             | {"file": "/proj/sqlparse/engine/statement_splitter.py"}]}]}
    lines = [text for text, _ in terminal_lines(section)]
    table = lines[[i for i, line in enumerate(lines) if "hot spots:" in line][0] + 1:]
    assert any(LONG in line for line in table) and all(len(line) <= 80 for line in table), lines
    assert any("statement_splitter.py:104" in line for line in table), lines
