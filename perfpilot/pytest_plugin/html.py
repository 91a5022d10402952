"""HTML report of a pytest run measured by perfpilot (``--perfpilot-html``).

Drawn from the JSON document of :mod:`perfpilot.pytest_plugin.report`; one self-contained page
(Chart.js inlined by :func:`perfpilot.profilers.renderers.htmlpage.page`): the slowest
tests, budget use, the comparison with the baseline (ratio and its CI per finding), the
rounds of each measured distribution, the proposals of ``--perfpilot-suggest`` (escaped:
they come from an LLM), and a table of every test.
"""

from __future__ import annotations

import html
import statistics
from typing import Any

from perfpilot.profilers.renderers.htmlpage import json_for_script, page

output_file_extension = "html"
MAX_BARS = 30
SIZE = {"peak_rss", "gpu_memory", "io", "io_read", "io_write"}
COLORS = {"regression": "#cf222e", "noise": "#d4a72c", "improved": "#1a7f37", "unchanged": "#8c959f",
          "insufficient": "#d0d7de", "over": "#cf222e", "near": "#d4a72c", "ok": "#1a7f37",
          "over-estimate": "#9a6700", "unmeasured": "#d0d7de"}


def _figure(test: dict[str, Any], metric: str) -> float | None:
    values = test.get("rounds", {}).get(metric)
    if not values:
        return None
    return max(values) if metric in SIZE else statistics.median(values)


def _fmt(metric: str, value: float | None) -> str:
    from perfpilot.pytest_plugin.budgets import format_quantity

    return "-" if value is None else format_quantity(metric, value)


def _chart(canvas: str, config: dict[str, Any], height: int = 220) -> str:
    return (f'<div class="chart" style="height:{height}px"><canvas id="{canvas}"></canvas></div>'
            f"<script>new Chart(document.getElementById('{canvas}'), {json_for_script(config)});</script>")


def _slowest(tests: list[dict[str, Any]]) -> str:
    measured = [t for t in tests if _figure(t, "wall") is not None]
    top = sorted(measured, key=lambda t: _figure(t, "wall") or 0.0, reverse=True)[:MAX_BARS]
    if not top:
        return "<p class=muted>No test was measured.</p>"
    config = {
        "type": "bar",
        "data": {"labels": [t["nodeid"] for t in top], "datasets": [
            {"label": "wall (ms, median)", "data": [round((_figure(t, "wall") or 0) * 1e3, 3) for t in top],
             "backgroundColor": "#0969da"},
            {"label": "cpu incl. children (ms, median)", "data": [round((_figure(t, "cpu") or 0) * 1e3, 3) for t in top],
             "backgroundColor": "#8250df"},
            {"label": "waiting for a CPU (ms, median run-queue wait)",
             "data": [round((_figure(t, "cpu_wait") or 0) * 1e3, 3) for t in top], "backgroundColor": "#d4a72c"}]},
        "options": {"indexAxis": "y", "maintainAspectRatio": False, "animation": False,
                    "scales": {"y": {"ticks": {"autoSkip": False, "font": {"size": 10}}}}},
    }
    return _chart("slowest", config, height=max(160, 22 * len(top) + 60))


def _budgets(tests: list[dict[str, Any]]) -> str:
    rows = [(t["nodeid"], b) for t in tests for b in t.get("budget_results", []) if b.get("share") is not None]
    if not rows:
        return "<p class=muted>No test has a perf_budget marker.</p>"
    rows.sort(key=lambda r: -r[1]["share"])
    rows = rows[:MAX_BARS]
    config = {
        "type": "bar",
        "data": {"labels": [f"{n} {b['metric']}" for n, b in rows], "datasets": [
            {"label": "share of budget (%)", "data": [round(b["share"] * 100, 1) for _, b in rows],
             "backgroundColor": [COLORS.get(b["status"], "#8c959f") for _, b in rows]}]},
        "options": {"indexAxis": "y", "maintainAspectRatio": False, "animation": False,
                    "plugins": {"legend": {"display": False}},
                    "scales": {"x": {"suggestedMax": 100, "title": {"display": True, "text": "% of budget"}},
                               "y": {"ticks": {"autoSkip": False, "font": {"size": 10}}}}},
    }
    return _chart("budgets", config, height=max(140, 22 * len(rows) + 60))


def _comparison(doc: dict[str, Any]) -> str:
    baseline = doc.get("baseline")
    if not baseline:
        return "<p class=muted>No comparison (run with --perfpilot-compare after --perfpilot-save).</p>"
    meta = baseline.get("meta") or {}
    head = (f"<p>Baseline {html.escape(str(meta.get('date')))}, commit {html.escape(str(meta.get('commit') or 'no git'))[:10]}"
            f", Python {html.escape(str(meta.get('python')))}, {meta.get('rounds')} rounds. "
            "Bars span the confidence interval of the ratio of medians (current / baseline); "
            "only <span class=bad>red</span> ones are significant regressions; a wall regression explained by "
            "time spent waiting for a CPU (a busier machine) is shown as noise.</p>")
    for warning in baseline.get("warnings", []):
        head += f"<p class=estimate>warning: {html.escape(warning)}</p>"
    findings = [f for f in doc.get("findings", []) if f.get("verdict")]
    findings.sort(key=lambda f: -(f["verdict"].get("ratio") or 0))
    findings = findings[:MAX_BARS]
    if not findings:
        return head + "<p class=muted>No test could be compared.</p>"

    def span(v: dict[str, Any]) -> list[float]:
        low = v.get("ci_low") if v.get("ci_low") is not None else v.get("ratio")
        high = v.get("ci_high") if v.get("ci_high") is not None else v.get("ratio")
        return [round(low or 0, 4), round(high or 0, 4)]

    labels = [f"{f['nodeid']}{' [' + f['subject'] + ']' if f.get('subject') else ''} {f['metric']} "
              f"{f['verdict'].get('ratio') or 0:.2f}x ({f['kind']})" for f in findings]
    config = {
        "type": "bar",
        "data": {"labels": labels, "datasets": [
            {"label": "CI of the ratio of medians (current / baseline)", "data": [span(f["verdict"]) for f in findings],
             "backgroundColor": [COLORS.get(f["kind"], "#8c959f") for f in findings]}]},
        "options": {"indexAxis": "y", "maintainAspectRatio": False, "animation": False,
                    "scales": {"x": {"title": {"display": True, "text": "current / baseline"}},
                               "y": {"ticks": {"autoSkip": False, "font": {"size": 10}}}}},
    }
    return head + _chart("comparison", config, height=max(140, 24 * len(findings) + 60))


def _distributions(tests: list[dict[str, Any]]) -> str:
    points = []
    labels = []
    for test in tests:
        for name, dist in test.get("measure", {}).items():
            label = f"{test['nodeid']} [{name}]"
            labels.append(label)
            points.extend({"x": round(v * 1e6, 4), "y": label} for v in dist.get("wall", []))
    if not points:
        return "<p class=muted>No perfpilot_measure distributions.</p>"
    labels = labels[:MAX_BARS]
    config = {
        "type": "scatter",
        "data": {"datasets": [{"label": "µs per call, one point per round",
                               "data": [p for p in points if p["y"] in labels], "backgroundColor": "#0969da"}]},
        "options": {"maintainAspectRatio": False, "animation": False,
                    "scales": {"y": {"type": "category", "labels": labels, "ticks": {"font": {"size": 10}}},
                               "x": {"title": {"display": True, "text": "µs per call"}}}},
    }
    return _chart("distributions", config, height=max(140, 26 * len(labels) + 60))


def _table(tests: list[dict[str, Any]]) -> str:
    head = ("<tr><th>test</th><th>outcome</th><th>rounds</th><th class=num>wall</th><th class=num>cpu</th>"
            "<th class=num title='runnable, waiting for a CPU (schedstat run_delay)'>cpu wait</th>"
            "<th class=num>peak rss</th><th class=num>io</th><th class=num>energy</th><th>budget</th><th>baseline</th></tr>")
    rows = []
    for t in sorted(tests, key=lambda t: -(_figure(t, "wall") or 0.0)):
        energy = _fmt("energy", _figure(t, "energy"))
        if t.get("energy_source") == "estimate" and energy != "-":
            energy = f"<span class=estimate title='{html.escape(t.get('energy_note', ''))}'>{energy} (est.)</span>"
        budget = "; ".join(f"{b['metric']} {b['status']}" for b in t.get("budget_results", []))
        # a wall regression excused by a busier machine says so where the reader looks
        kinds = [f"{f['metric']}: {f['kind']}" + (f" ({f['reason'].split(';')[0]})" if "busy_machine" in
                                                  (f.get("verdict") or {}) else "") for f in t.get("findings", [])]
        css = "bad" if t.get("outcome") == "failed" else ""
        rows.append(
            f"<tr><td><code>{html.escape(t['nodeid'])}</code></td><td class='{css}'>{html.escape(t.get('outcome', ''))}</td>"
            f"<td class=num>{len(t.get('rounds', {}).get('wall', []))}</td>"
            f"<td class=num>{_fmt('wall', _figure(t, 'wall'))}</td><td class=num>{_fmt('cpu', _figure(t, 'cpu'))}</td>"
            f"<td class=num>{_fmt('wall', _figure(t, 'cpu_wait'))}</td>"
            f"<td class=num>{_fmt('peak_rss', _figure(t, 'peak_rss'))}</td><td class=num>{_fmt('io', _figure(t, 'io'))}</td>"
            f"<td class=num>{energy}</td><td>{html.escape(budget)}</td><td>{html.escape('; '.join(kinds))}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _suggestions(doc: dict[str, Any]) -> str:
    """``--perfpilot-suggest``'s proposals. Everything in them came from an LLM: escaped, never trusted."""
    section = doc.get("suggestions")
    if not section:
        return ""
    e = html.escape
    parts = [f"<h2>Proposals for the worst regressions</h2><p class=muted>from {e(str(section.get('backend')))} · "
             "not applied: review before use</p>"]
    if section.get("error") or section.get("note"):
        parts.append(f"<p>{e(str(section.get('error') or section.get('note')))}</p>")
    for entry in section.get("requests", []):
        parts.append(f"<h3><code>{e(str(entry.get('nodeid')))}</code> {e(str(entry.get('subject') or ''))}</h3>"
                     f"<p>{e(str(entry.get('finding')))}<br><span class=muted>hot spots: "
                     f"{e(str(entry.get('hotspots_note') or 'none'))}</span></p>")
        if entry.get("status") != "ok":
            parts.append(f"<p class=bad>{e(str(entry.get('status')))}: {e(str(entry.get('error')))}</p>")
        for proposal in entry.get("proposals", []):
            body = proposal.get("diff") or "; ".join(f"{k} = {proposal[k]!r}" for k in ("file", "key", "name", "knob",
                                                                                       "value") if k in proposal)
            parts.append(f"<p><b>[{e(str(proposal.get('kind')))}] {e(str(proposal.get('title') or ''))}</b><br>"
                         f"{e(str(proposal.get('rationale') or ''))}</p><pre>{e(str(body))}</pre>")
    return "".join(parts)


def render(doc: dict[str, Any]) -> str:
    meta = doc.get("meta", {})
    tests = doc.get("tests", [])
    summary = doc.get("summary", {})
    measuring = meta.get("measuring", {})
    facts = (f"machine {html.escape(str(meta.get('machine_id')))} · {html.escape(str(meta.get('cpu_model')))} · "
             f"Python {html.escape(str(meta.get('python')))} · commit {html.escape(str(meta.get('commit') or 'no git'))[:10]}"
             f" · {html.escape(str(meta.get('date')))} · {meta.get('rounds')} round(s) per test")
    notes = "".join(f"<p class=estimate>{html.escape(n)}</p>" for n in meta.get("notes", []))
    how = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in measuring.items())
    body = (
        "<h1>perfpilot: test suite performance</h1>"
        f"<p class=muted>{facts}</p>{notes}"
        f"<p>{summary.get('measured', 0)} tests measured · {summary.get('budget_failures', 0)} over budget · "
        f"{summary.get('regressions', 0)} significant regressions · {summary.get('noise', 0)} within noise · "
        f"{summary.get('improved', 0)} improved</p>"
        f"<ul class=muted>{how}</ul>"
        + (f"<p>Baseline saved: <code>{html.escape(doc['saved_baseline'])}</code></p>" if doc.get("saved_baseline") else "")
        + "<h2>Slowest tests</h2>" + _slowest(tests)
        + "<h2>Budgets</h2>" + _budgets(tests)
        + "<h2>Compared with the baseline</h2>" + _comparison(doc)
        + _suggestions(doc)
        + "<h2>perfpilot_measure distributions</h2>" + _distributions(tests)
        + "<h2>All tests</h2>" + _table(tests)
    )
    return page("perfpilot pytest report", body, assets=("chart",))
