"""A self-contained HTML page for a :class:`~perfpilot.profilers.measure.Comparison`:
the verdict table, then per metric the distributions of A and B (every run as a point,
medians as bars) and the runs in the order they ran (drift shows up there)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from perfpilot.profilers.measure import Comparison
from perfpilot.profilers.metrics import metric_kind
from perfpilot.profilers.renderers.htmlpage import json_for_script, page
from perfpilot.profilers.stats import DETERMINISTIC_RULE, Verdict

output_file_extension = "html"

EXTRA_CSS = """
.verdict-faster,.verdict-smaller{color:#1a7f37;font-weight:600} .verdict-slower,.verdict-larger{color:#cf222e;font-weight:600}
.verdict-inconclusive{color:#9a6700} .verdict-no-change{color:#6a737d}
.pair{display:flex;gap:24px;flex-wrap:wrap} .pair .chart{flex:1 1 420px;min-width:320px}
ul.notes{font-size:13px;margin:6px 0 0 0;padding-left:18px}
"""

SCRIPT = """
const DATA = %s;
const COLORS = {A: 'rgba(87,96,106,0.75)', B: 'rgba(9,105,218,0.8)'};
function jitter(k) { return (((k * 0.6180339887) %% 1) - 0.5) * 0.5; }
DATA.metrics.forEach(function (m, i) {
  const scale = function (v) { return v === null ? null : v / m.scale; };
  const a = m.a.map(scale), b = m.b.map(scale);
  const points = function (vals, y) { return vals.map(function (v, k) { return {x: v, y: y + jitter(k)}; }); };
  const bar = function (v, y) { return [{x: v, y: y - 0.4}, {x: v, y: y + 0.4}]; };
  new Chart(document.getElementById('dist-' + i), {
    type: 'scatter',
    data: {datasets: [
      {label: 'A', data: points(a, 1), backgroundColor: COLORS.A, pointRadius: 4},
      {label: 'B', data: points(b, 0), backgroundColor: COLORS.B, pointRadius: 4},
      {label: 'median A', data: bar(scale(m.median_a), 1), type: 'line', showLine: true, pointRadius: 0,
       borderColor: COLORS.A, borderWidth: 3},
      {label: 'median B', data: bar(scale(m.median_b), 0), type: 'line', showLine: true, pointRadius: 0,
       borderColor: COLORS.B, borderWidth: 3}
    ]},
    options: {animation: false, maintainAspectRatio: false,
      plugins: {title: {display: true, text: m.name + ': every run (dots) and the medians (bars)'},
                legend: {labels: {boxWidth: 12, filter: function (item) { return item.text.indexOf('median') < 0; }}}},
      scales: {y: {min: -0.7, max: 1.7, ticks: {stepSize: 1, callback: function (v) { return v === 1 ? 'A' : (v === 0 ? 'B' : ''); }}},
               x: {title: {display: true, text: m.unit}}}}
  });
  const n = Math.max(a.length, b.length);
  new Chart(document.getElementById('order-' + i), {
    type: 'line',
    data: {labels: Array.from({length: n}, function (_, k) { return k + 1; }),
      datasets: [
        {label: 'A', data: a, borderColor: COLORS.A, backgroundColor: COLORS.A, tension: 0},
        {label: 'B', data: b, borderColor: COLORS.B, backgroundColor: COLORS.B, tension: 0}
      ]},
    options: {animation: false, maintainAspectRatio: false,
      plugins: {title: {display: true, text: m.name + ': runs in the order they ran (A and B interleaved)'}},
      scales: {x: {title: {display: true, text: 'run'}}, y: {title: {display: true, text: m.unit}}}}
  });
});
"""


def _unit(metric: str, v: Verdict) -> tuple[float, str]:
    kind = metric_kind(metric)
    if kind == "time":
        return 1.0, "seconds"
    if kind == "size":
        return 1024.0 * 1024.0, "MiB"
    if metric == "energy" or metric.startswith("energy."):
        return 1.0, "joules" + (" (estimate)" if v.source == "estimate" else "")
    return 1.0, metric


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}"


def _verdict_row(v: Verdict, primary: bool) -> str:
    scale, unit = _unit(v.metric, v)
    css = "verdict-" + v.verdict.replace(" ", "-")
    klass = css + (" estimate" if v.source == "estimate" else "")
    return (
        "<tr>"
        f"<td>{'<b>' if primary else ''}{html.escape(v.metric)}{'</b>' if primary else ''}"
        f"{html.escape(v.source_suffix)}</td>"
        f"<td class=num>{_fmt(v.median_a / scale)} {html.escape(unit)}</td>"
        f"<td class=num>{_fmt(v.median_b / scale)} {html.escape(unit)}</td>"
        f"<td class=num>{v.ratio:.3f} [{v.ci_low:.3f}, {v.ci_high:.3f}]</td>"
        f"<td class=num>{v.p_value:.3g}</td>"
        f"<td class=num>{v.runs_a} / {v.runs_b}</td>"
        f"<td class=num>±{v.noise_a:.1%} / ±{v.noise_b:.1%}</td>"
        f"<td class=num>{v.threshold:.1%}</td>"
        f"<td class='{klass}'>{html.escape(v.label)}</td>"
        "</tr>"
    )


def _interval_text(comparison: Comparison) -> tuple[str, str]:
    """(table header, sentence) naming the level each interval was really computed at."""
    names = sorted({v.interval_name for v in comparison.verdicts.values()})
    header = f"B/A [{names[0]}]" if len(names) == 1 else "B/A [interval]"
    primary = comparison.verdicts.get(comparison.primary)
    if primary is None:
        return header, ""
    if primary.rule == DETERMINISTIC_RULE:
        sentence = (f"{comparison.primary} is near-deterministic: its interval is a noise bound from the runs' "
                    "spread, not a CI")
    else:
        sentence = f"Ratios are median(B)/median(A) with a {primary.interval_name} (percentile bootstrap)"
    others = [f"{name}: {v.interval_name}" for name, v in comparison.verdicts.items()
              if v.interval_name != primary.interval_name]
    return header, sentence + (f" ({'; '.join(others)})" if others else "")


def render(comparison: Comparison) -> str:
    verdicts = comparison.verdicts
    labels = comparison.labels
    header, interval = _interval_text(comparison)
    rows = "".join(_verdict_row(v, name == comparison.primary) for name, v in verdicts.items())
    notes = [*comparison.notes]
    for name, v in verdicts.items():
        notes.extend(f"{name}: {note}" for note in v.notes)
    how = comparison.plan.describe() if comparison.plan is not None else "one look at saved runs"
    why = " for futility (B cannot be better by the threshold)" if comparison.stop_reason == "futility" else ""
    stopped = (f"stopped early{why} after {comparison.runs} runs per side" if comparison.stopped_early
               else f"{comparison.runs} runs per side")
    data: dict[str, Any] = {"labels": list(labels), "metrics": []}
    charts = []
    for i, (name, v) in enumerate(verdicts.items()):
        scale, unit = _unit(name, v)
        data["metrics"].append({"name": name, "a": v.samples_a, "b": v.samples_b, "median_a": v.median_a,
                                "median_b": v.median_b, "scale": scale, "unit": unit})
        charts.append(
            f"<h2>{html.escape(name)} <span class='muted'>({html.escape(v.label)}, B/A {v.ratio:.3f})</span></h2>"
            f"<div class=pair><div class=chart><canvas id='dist-{i}'></canvas></div>"
            f"<div class=chart><canvas id='order-{i}'></canvas></div></div>"
        )
    body = (
        f"<h1>perfpilot compare</h1>"
        f"<p><b>A</b>: <code>{html.escape(labels[0])}</code><br><b>B</b>: <code>{html.escape(labels[1])}</code></p>"
        f"<p class=muted>{html.escape(stopped)}; {html.escape(how)}. {html.escape(interval)}; "
        "p is Mann-Whitney U, two-sided. Lower is better.</p>"
        f"<table><tr><th>metric</th><th>median A</th><th>median B</th><th>{html.escape(header)}</th><th>p</th><th>runs</th>"
        f"<th>noise A / B</th><th>threshold</th><th>verdict</th></tr>{rows}</table>"
        + (f"<ul class=notes>{''.join(f'<li>{html.escape(n)}</li>' for n in notes)}</ul>" if notes else "")
        + "".join(charts)
        + f"<script>{SCRIPT % json_for_script(data)}</script>"
    )
    return page(f"perfpilot compare: {labels[0]} vs {labels[1]}", body, assets=("chart",), extra_css=EXTRA_CSS)


def write(comparison: Comparison, path: str | Path) -> None:
    Path(path).write_text(render(comparison), encoding="utf-8")
