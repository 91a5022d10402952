"""The HTML report of a Profile: one self-contained file that opens offline.

Sections: summary; time series (CPU, memory, GPU utilisation and memory, power) drawn
with Chart.js; a flame graph of the sampled stacks (d3-flame-graph); hot spots with
their hottest lines and energy; slowest imports; collectors and notes.

The section builders (:func:`timeseries_block`, :func:`bar_block`,
:func:`flamegraph_block`, :func:`table`, :func:`hotspots_block`, ...) each return an
HTML fragment with its own inline script, so compare/optimise/pytest reports can put
them on a :func:`perfpilot.profilers.renderers.htmlpage.page` of their own. A page
that uses them needs the ``chart`` and/or ``flamegraph`` assets.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from perfpilot.profilers import hotspots as hs
from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers.htmlpage import json_for_script, page
from perfpilot.profilers.renderers.terminal import why_killed, human_bytes, human_seconds

output_file_extension = "html"
MAX_POINTS = 1500  # per series: enough for the eye, keeps a long run's file small
FLAME_MIN_FRACTION = 0.0005  # frames under 0.05% of samples are left out of the graph
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]

EXTRA_CSS = """
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:8px 24px;max-width:1400px}
.chart-block h3{font-size:14px;margin:8px 0 2px} .note{font-size:13px;color:#57606a;max-width:1000px}
.flame{max-width:1400px;overflow:hidden} td.code{font-family:ui-monospace,Menlo,monospace;font-size:12px;color:#24292f}
details summary{cursor:pointer} .pill{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;background:#eef}
.pill.estimate{background:#fff8c5} .pill.bad{background:#ffebe9} .pill.good{background:#dafbe1}
"""

_SAFE_ID = re.compile(r"[^A-Za-z0-9_-]")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def safe_id(text: str) -> str:
    return _SAFE_ID.sub("-", text)


# ------------------------------------------------------------------ generic blocks


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Iterable[int] = (),
          raw: Iterable[int] = (), css_class: str = "") -> str:
    """An HTML table; cells are escaped except columns listed in ``raw`` (pre-built HTML)."""
    numeric, raw = set(numeric), set(raw)
    num = ' class="num"'
    head = "".join(f"<th{num if i in numeric else ''}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            content = str(cell) if i in raw else esc(cell)
            cells.append(f"<td{num if i in numeric else ''}>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def downsample(times: Sequence[float], values: Sequence[float | None], limit: int = MAX_POINTS) -> list[dict[str, float]]:
    """``[{x, y}]`` for Chart.js; long series are bucket-averaged to ``limit`` points."""
    points = [(float(t), float(v)) for t, v in zip(times, values) if v is not None]
    if len(points) <= limit:
        return [{"x": round(t, 4), "y": v} for t, v in points]
    size = len(points) / limit
    out = []
    for i in range(limit):
        bucket = points[int(i * size):max(int((i + 1) * size), int(i * size) + 1)]
        out.append({"x": round(sum(p[0] for p in bucket) / len(bucket), 4), "y": sum(p[1] for p in bucket) / len(bucket)})
    return out


def timeseries_block(chart_id: str, title: str, times: Sequence[float],
                     datasets: Sequence[tuple[str, Sequence[float | None]]], *, unit: str = "",
                     scale: float = 1.0, note: str = "", y_min: float | None = 0, y_max: float | None = None,
                     x_max: float | None = None, legend: bool | None = None) -> str:
    """A titled Chart.js line chart of one or more series over a shared time base (s);
    "" when no series has two points (a chart of one point carries no information).

    ``x_max`` pins the time axis to ``[0, x_max]`` so charts of one run line up (a
    series sampled once a second would otherwise get an axis of its own few points).
    """
    data = []
    for i, (label, values) in enumerate(datasets):
        scaled = [None if v is None else round(v * scale, 6) for v in values]
        points = downsample(times, scaled)
        if len(points) < 2:
            continue  # one point is not a series: the caller says what is missing
        # A sparse series (e.g. updated once a second) would vanish without markers.
        data.append({"label": label, "data": points, "borderColor": COLORS[i % len(COLORS)],
                     "backgroundColor": COLORS[i % len(COLORS)] + "33", "borderWidth": 1.5,
                     "pointRadius": 2 if len(points) < 30 else 0,
                     "fill": len(datasets) == 1, "tension": 0})
        if "estimate" in label:
            data[-1]["borderDash"] = [6, 3]  # an estimate is drawn unlike a measurement
    if not data:
        return ""
    y_scale: dict[str, Any] = {"title": {"display": bool(unit), "text": unit}}
    if y_min is not None:
        y_scale["min"] = y_min
    if y_max is not None:
        y_scale["max"] = y_max
    x_scale: dict[str, Any] = {"type": "linear", "title": {"display": True, "text": "seconds"}}
    if x_max is not None and x_max > 0:
        x_scale.update({"min": 0, "max": round(x_max, 3)})
    config = {
        "type": "line",
        "data": {"datasets": data},
        "options": {
            "animation": False, "responsive": True, "maintainAspectRatio": False, "parsing": True,
            "interaction": {"mode": "nearest", "intersect": False, "axis": "x"},
            "scales": {"x": x_scale, "y": y_scale},
            "plugins": {"legend": {"display": len(data) > 1 if legend is None else legend}},
        },
    }
    cid = safe_id(chart_id)
    note_html = f'<div class="note">{esc(note)}</div>' if note else ""
    return (f'<div class="chart-block"><h3>{esc(title)}</h3>{note_html}<div class="chart"><canvas id="{cid}" '
            f'role="img" aria-label="{esc(title)}"></canvas></div>'
            f"<script>new Chart(document.getElementById({json_for_script(cid)}), {json_for_script(config)});</script></div>")


def bar_block(chart_id: str, title: str, labels: Sequence[str], values: Sequence[float], *, unit: str = "",
              horizontal: bool = True, note: str = "") -> str:
    """A titled Chart.js bar chart (horizontal by default: long labels read well)."""
    height = max(160, 22 * len(labels) + 60) if horizontal else 240
    config = {
        "type": "bar",
        "data": {"labels": list(labels), "datasets": [{"label": unit or title, "data": list(values),
                                                       "backgroundColor": COLORS[0] + "aa"}]},
        "options": {"animation": False, "responsive": True, "maintainAspectRatio": False,
                    "indexAxis": "y" if horizontal else "x", "plugins": {"legend": {"display": False}},
                    "scales": {("x" if horizontal else "y"): {"title": {"display": bool(unit), "text": unit}}}},
    }
    cid = safe_id(chart_id)
    note_html = f'<div class="note">{esc(note)}</div>' if note else ""
    return (f'<div class="chart-block"><h3>{esc(title)}</h3>{note_html}'
            f'<div class="chart" style="height:{height}px"><canvas id="{cid}" role="img" aria-label="{esc(title)}">'
            f"</canvas></div><script>new Chart(document.getElementById({json_for_script(cid)}), "
            f"{json_for_script(config)});</script></div>")


def frame_label(part: str, cwd: str | None = None) -> str:
    proc = hs.process_of(part)
    if proc is not None:
        return f"process {proc[0]}: {proc[1][:80]}"
    frame = hs.parse_frame(part)
    where = hs.short_path(frame.file, cwd) if frame.file else ""
    if frame.line is not None:
        where = f"{where}:{frame.line}"
    return f"{frame.name} ({where})" if where else frame.name


def flame_tree(collapsed: Mapping[str, int], *, cwd: str | None = None,
               min_fraction: float = FLAME_MIN_FRACTION) -> dict[str, Any]:
    """Collapsed stacks -> the ``{name, value, children}`` tree d3-flame-graph draws."""
    total = sum(collapsed.values())
    root: dict[str, Any] = {"name": "all", "value": total, "children": []}
    index: dict[int, dict[str, dict[str, Any]]] = {}
    for stack, count in collapsed.items():
        node = root
        for part in stack.split(";"):
            kids = index.setdefault(id(node), {})
            child = kids.get(part)
            if child is None:
                child = {"name": frame_label(part, cwd), "value": 0, "children": []}
                kids[part] = child
                node["children"].append(child)
            child["value"] += count
            node = child
    threshold = total * min_fraction

    def prune(node: dict[str, Any]) -> None:
        node["children"] = [c for c in node["children"] if c["value"] >= threshold]
        node["children"].sort(key=lambda c: c["name"])
        for c in node["children"]:
            prune(c)

    prune(root)
    return root


def flamegraph_block(element_id: str, collapsed: Mapping[str, int], *, cwd: str | None = None,
                     title: str = "Flame graph") -> str:
    """A d3-flame-graph of collapsed stacks (click a frame to zoom; hover for samples)."""
    tree = flame_tree(collapsed, cwd=cwd)
    eid = safe_id(element_id)
    script = (
        "(function(){var el=document.getElementById(%s);var data=%s;var total=data.value||1;"
        "var chart=flamegraph().width(Math.max(600,el.clientWidth||1000)).cellHeight(18).transitionDuration(0)"
        ".minFrameSize(2).sort(true).title('').label(function(d){return d.data.name+' \\u2014 '+d.value+"
        "' samples ('+(100*d.value/total).toFixed(1)+'%%)';});"
        "d3.select(el).datum(data).call(chart);})();"
    ) % (json_for_script(eid), json_for_script(tree))
    return (f'<div class="flame-block"><h3>{esc(title)}</h3><div class="note">Width is the share of samples; '
            f'click a frame to zoom in, click the bottom bar to zoom out.</div>'
            f'<div id="{eid}" class="flame"></div><script>{script}</script></div>')


# ------------------------------------------------------------------ profile sections


def _gpu_indices(metrics: Iterable[str]) -> list[str]:
    found = sorted({m.split(".", 1)[0] for m in metrics if re.match(r"^gpu\d+\.", m)},
                   key=lambda g: int(g[3:]))
    return found


def _power_series(metrics: Iterable[str]) -> list[str]:
    names = [m for m in metrics if m.endswith("_w") and (m.startswith("power.") or re.match(r"^gpu\d+\.power_w$", m))]
    return sorted(names)


def rates(times: Sequence[float], cumulative: Sequence[float | None]) -> list[float | None]:
    """Per-second rates from a cumulative counter series (``None`` where there is no
    earlier reading; a counter that went down, e.g. a process left the tree, gives 0)."""
    out: list[float | None] = []
    last: tuple[float, float] | None = None
    for t, v in zip(times, cumulative):
        if v is None:
            out.append(None)
            continue
        if last is None or t <= last[0]:
            out.append(None)
        else:
            out.append(max(0.0, (float(v) - last[1]) / (t - last[0])))
        last = (float(t), float(v))
    return out


def _unavailable(profile: Profile, name: str) -> str:
    info = profile.collectors.get(name)
    if info is None:
        return f"the {name} collector did not run"
    reason = info.get("reason") or "; ".join(info.get("errors", [])[:1]) or "no samples"
    return f"{name} collector unavailable: {reason}"


def byte_unit(*series: Sequence[float | None], per: str = "") -> tuple[str, float]:
    """(unit, scale) so the largest value reads in KiB, MiB or GiB (never 1.262e+07)."""
    peak = max([abs(float(v)) for values in series for v in values if v is not None] + [0.0])
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if peak >= size:
            return unit + per, 1 / size
    return "B" + per, 1.0


def power_label(name: str, sources: Mapping[str, str]) -> str:
    """``cpu (rapl)``, ``gpu0 (nvml_energy)``, ``cpu (estimate)``: the legend says what
    each line is, and above all when it is an estimate."""
    match = re.match(r"^(?:power\.)?(?P<domain>[a-z]+\d*?)(?P<est>_estimate)?(?:\.power)?_w$", name)
    domain = match.group("domain") if match else name
    source = "estimate" if (match and match.group("est")) else sources.get(domain, "")
    return f"{domain} ({source})" if source else domain


def _one_point(name: str, values: Sequence[Any]) -> bool:
    return sum(v is not None for v in values) == 1


def timeseries_section(profile: Profile) -> str:
    times = profile.series.get("t", [])
    values: dict[str, list[Any]] = profile.series.get("values", {})
    blocks: list[str] = []
    missing: list[str] = []
    span = max([float(profile.duration_s or 0.0)] + [float(t) for t in times[-1:]])

    def present(name: str) -> bool:
        return sum(v is not None for v in values.get(name, [])) >= 2

    def one_reading(label: str, names: Iterable[str]) -> bool:
        if any(_one_point(n, values.get(n, [])) for n in names):
            missing.append(f"{label}: one reading only in a {human_seconds(span)} run, not drawn")
            return True
        return False

    if present("cpu.utilization_pct"):
        blocks.append(timeseries_block("ts-cpu", "CPU utilisation (process tree)", times,
                                       [("cpu %", values["cpu.utilization_pct"])], unit="% of one core", x_max=span))
    elif not one_reading("CPU", ["cpu.utilization_pct"]):
        missing.append(f"CPU: {_unavailable(profile, 'cpu')}")
    if present("memory.rss_bytes"):
        unit, scale = byte_unit(values["memory.rss_bytes"])
        blocks.append(timeseries_block("ts-mem", "Memory (RSS of the process tree)", times,
                                       [(f"RSS {unit}", values["memory.rss_bytes"])], unit=unit, scale=scale, x_max=span))
    elif not one_reading("memory", ["memory.rss_bytes"]):
        missing.append(f"memory: {_unavailable(profile, 'memory')}")
    gpus = _gpu_indices(values)
    util = [(g, values[f"{g}.utilization_pct"]) for g in gpus if present(f"{g}.utilization_pct")]
    mem = [(g, values[f"{g}.memory_used_bytes"]) for g in gpus if present(f"{g}.memory_used_bytes")]
    if util:
        blocks.append(timeseries_block("ts-gpu-util", "GPU utilisation", times, util, unit="%", y_max=100, x_max=span))
    if mem:
        unit, scale = byte_unit(*(series for _, series in mem))
        blocks.append(timeseries_block("ts-gpu-mem", "GPU memory used", times, mem, unit=unit, scale=scale, x_max=span))
    if not util and not mem:
        missing.append(f"GPU: {_unavailable(profile, 'gpu')}")
    blocks.append(_power_block(profile, times, values, span, present, one_reading, missing))
    # The io collector records cumulative counters; the chart shows their rate.
    io = [(label, rates(times, values[n])) for label, n in (("read", "io.read_bytes"), ("written", "io.write_bytes"))
          if present(n)]
    if io and any(v for _, series in io for v in series):
        unit, scale = byte_unit(*(series for _, series in io), per="/s")
        blocks.append(timeseries_block("ts-io", "Storage I/O (process tree)", times, io, unit=unit,
                                       scale=scale, x_max=span,
                                       note="bytes the tree read from / wrote to storage (page-cache hits excluded)"))
    blocks = [b for b in blocks if b]
    note = ""
    if missing:
        note = '<div class="note">Not shown: ' + esc("; ".join(missing)) + "</div>"
    if not blocks:
        return f"<h2>Time series</h2><p class='muted'>No time series were recorded.</p>{note}"
    return f"<h2>Time series</h2>{note}<div class=\"grid\">{''.join(blocks)}</div>"


def _power_block(profile: Profile, times: Sequence[float], values: Mapping[str, list[Any]], span: float,
                 present: Any, one_reading: Any, missing: list[str]) -> str:
    """Power per domain, each line labelled with its source; an estimate is dashed and
    its legend says "estimate" (the power collector emits the estimate per tick under
    the name a measurement would have; the summary's ``energy`` says it is one)."""
    names = _power_series(values)
    drawn = [n for n in names if present(n)]
    if not drawn:
        if not one_reading("power", names):
            missing.append(f"power: {_unavailable(profile, 'power')}")
        return ""
    sources = {d: str(e.get("source", "")) for d, e in (profile.summary.get("energy") or {}).items()}
    labelled = [(power_label(n, sources), values[n]) for n in drawn]
    estimate = any("estimate" in label for label, _ in labelled)
    note = "estimate: computed from the CPU time used, not measured (dashed)" if estimate else ""
    return timeseries_block("ts-power", "Power", times, labelled, unit="W", note=note, x_max=span, legend=True)


def summary_section(profile: Profile) -> str:
    s = profile.summary
    target = profile.target
    rows: list[tuple[str, str]] = []
    command = " ".join(target.get("command") or []) or f"pid {target.get('pid')}"
    rows.append(("target", command))
    if target.get("attached"):
        rows.append(("mode", f"attached to pid {target.get('pid')}"))
    elif target.get("signal"):
        rows.append(("exit", f"killed by signal {target['signal']}{why_killed(target)}"))
    elif target.get("exit_code") is not None:
        rows.append(("exit code", str(target["exit_code"])))
    rows.append(("started", profile.started_at))
    rows.append(("wall", human_seconds(s.get("wall_s", profile.duration_s))))
    if "cpu_user_s" in s:
        rows.append(("cpu", f"{human_seconds(s['cpu_user_s'])} user + {human_seconds(s.get('cpu_system_s', 0))} system"))
    if "cpu_utilization_mean_pct" in s:
        rows.append(("cpu utilisation (mean)", f"{s['cpu_utilization_mean_pct']:.0f}%"))
    if "peak_rss_bytes" in s:
        rows.append(("peak RSS", human_bytes(s["peak_rss_bytes"])))
    if "io_read_bytes" in s or "io_write_bytes" in s:
        rows.append(("I/O (storage)", f"{human_bytes(s.get('io_read_bytes'))} read, "
                                      f"{human_bytes(s.get('io_write_bytes'))} written"))
    if "io_read_chars" in s or "io_write_chars" in s:
        rows.append(("I/O (read/write calls)", f"{human_bytes(s.get('io_read_chars'))} read, "
                     f"{human_bytes(s.get('io_write_chars'))} written (incl. page cache, pipes, sockets)"))
    if "gpu_utilization_mean_pct" in s:
        rows.append(("GPU utilisation (mean)", f"{s['gpu_utilization_mean_pct']:.0f}%"))
    if "gpu_memory_peak_bytes" in s:
        rows.append(("GPU memory peak", human_bytes(s["gpu_memory_peak_bytes"])))
    if "import_time_s" in s:
        rows.append(("imports (start-up)", human_seconds(s["import_time_s"])))
    status = profile.annotations.get("stacks") or {}
    if status.get("status") == "ok" and "coverage_pct" in status:
        rows.append(("stacks", f"{(profile.stacks or {}).get('samples', 0)} samples, {status['coverage_pct']:.0f}% of "
                               f"the run" + (f": {status['coverage_note']}" if status.get("coverage_note") else "")))
    body = [(esc(k), esc(v)) for k, v in rows]
    for domain, entry in sorted((s.get("energy") or {}).items()):
        source = entry.get("source", "?")
        tag = ('<span class="pill estimate">estimate, not a measurement</span>' if source == "estimate"
               else f'<span class="pill good">{esc(source)}</span>')
        body.append((esc(f"energy {domain}"), f"{float(entry['joules']):.2f} J {tag}"))
    host = profile.host
    host_line = ", ".join(str(x) for x in (host.get("cpu_model"), f"{host.get('cores_logical')} logical cores",
                                            human_bytes(host.get("memory_bytes")), host.get("os"),
                                            f"Python {host.get('python')}") if x)
    body.append(("host", esc(host_line)))
    return "<h2>Summary</h2>" + table(["", ""], body, raw=(0, 1))


def energy_note(profile: Profile) -> str:
    info = profile.annotations.get("energy_attribution")
    if not info:
        return ""
    parts = [f"<p class='note'><b>How energy is attributed:</b> {esc(info.get('method', ''))}.</p>"]
    if info.get("note"):
        parts.append(f"<p class='note'>{esc(info['note'])}</p>")
    domains = info.get("domains") or {}
    if domains:
        rows = [(d, f"{e['joules']:.2f}", e.get("source", "?"), f"{e['attributed_j']:.2f}", f"{e['unattributed_j']:.2f}",
                 e.get("shape", "")) for d, e in sorted(domains.items())]
        parts.append(table(["domain", "joules", "source", "attributed J", "unattributed J", "shaped by"], rows,
                           numeric=(1, 3, 4)))
    for caveat in info.get("caveats", []):
        parts.append(f"<p class='note estimate'>{esc(caveat)}</p>")
    return "".join(parts)


def _energy_cell(spot: Mapping[str, Any], key: str) -> str:
    if key not in spot:
        return "<span class='muted'>–</span>"
    value = float(spot[key])
    text = f"{value:.3g} J" if value else "0 J"
    if spot.get("energy_estimated"):
        return f"<span class='estimate' title='estimate, not a measurement'>~{esc(text)} (est.)</span>"
    return esc(text)


def hotspots_block(hotspots: Sequence[Mapping[str, Any]], *, top: int = 25, with_energy: bool = True) -> str:
    """The hot-spot table, each row with a <details> of its hottest lines."""
    if not hotspots:
        return "<p class='muted'>No hot spots.</p>"
    has_energy = with_energy and any("energy_j" in h for h in hotspots)
    headers = ["#", "function", "where", "hottest line", "self %", "total %", "samples"]
    if has_energy:
        headers += ["energy (self)", "energy (total)"]
    rows = []
    for i, h in enumerate(hotspots[:top], 1):
        where = f"{h.get('short_file') or h.get('file')}:{h.get('line')}"
        lines = h.get("lines") or []
        code = esc(h.get("code", ""))
        if len(lines) > 1:
            detail_rows = "".join(
                f"<tr><td class='num'>{ln['line']}</td><td class='code'>{esc(ln.get('code', ''))}</td>"
                f"<td class='num'>{ln['self_pct']:.1f}%</td><td class='num'>{ln['total_pct']:.1f}%</td></tr>"
                for ln in lines)
            code = (f"<details><summary><code>{code}</code></summary><table><tr><th>line</th><th>code</th>"
                    f"<th>self</th><th>total</th></tr>{detail_rows}</table></details>")
        else:
            code = f"<code>{code}</code>"
        row = [str(i), esc(h.get("function")), esc(where), code, f"{h.get('self_pct', 0):.1f}",
               f"{h.get('total_pct', 0):.1f}", str(h.get("samples", 0))]
        if has_energy:
            row += [_energy_cell(h, "energy_j"), _energy_cell(h, "energy_total_j")]
        rows.append(row)
    return table(headers, rows, numeric=(0, 4, 5, 6, 7, 8), raw=range(len(headers)), css_class="hotspots")


def stacks_section(profile: Profile) -> str:
    stacks = profile.stacks or {}
    collapsed = stacks.get("collapsed") or {}
    note = profile.annotations.get("stacks_note")
    status = profile.annotations.get("stacks") or {}
    parts = ["<h2>Where the time goes</h2>"]
    if note:
        parts.append(f"<p class='note bad'>{esc(note)}</p>")
    if status.get("coverage_note"):
        parts.append(f"<p class='note estimate'><b>Partial stacks:</b> {esc(status['coverage_note'])}.</p>")
    if collapsed:
        coverage = f", {status['coverage_pct']}% of the run covered" if "coverage_pct" in status else ""
        parts.append(f"<p class='note'>{stacks.get('samples', 0)} samples at {stacks.get('rate_hz')} Hz with py-spy"
                     f"{esc(coverage)}. Percentages are of all samples (every busy thread of every process).</p>")
        parts.append(flamegraph_block("flamegraph", collapsed, cwd=profile.target.get("cwd")))
    else:
        # Never an empty graph drawn as if it were data.
        parts.append("<p class='note'>No flame graph: py-spy took no sample of this run"
                     + (" (see above)." if note else ".") + " The totals above are exact.</p>")
    parts.append("<h3>Hot spots</h3>")
    parts.append(hotspots_block(profile.hotspots))
    parts.append(energy_note(profile))
    return "".join(parts)


def imports_section(profile: Profile, top: int = 15) -> str:
    info = profile.annotations.get("imports")
    if not info:
        return ""
    parts = ["<h2>Slowest imports (start-up)</h2>"]
    if info.get("note"):
        parts.append(f"<p class='note'>{esc(info['note'])}</p>")
    slowest = info.get("slowest") or []
    if slowest:
        parts.append(f"<p class='note'>{info.get('count', 0)} modules, {human_seconds(info.get('total_us', 0) / 1e6)} "
                     f"in imports ({esc(info.get('how', '-X importtime'))}).</p>")
        top_rows = slowest[:top]
        parts.append(bar_block("imports-chart", "Cumulative import time", [r["module"] for r in top_rows],
                               [round(r["cumulative_us"] / 1000, 3) for r in top_rows], unit="ms"))
        parts.append(table(["module", "cumulative", "self", "imported by"],
                           [(r["module"], human_seconds(r["cumulative_us"] / 1e6), human_seconds(r["self_us"] / 1e6),
                             r.get("parent") or "(top level)") for r in top_rows], numeric=(1, 2)))
    return "".join(parts)


def collectors_section(profile: Profile) -> str:
    rows = []
    for name, info in profile.collectors.items():
        if info.get("errors"):
            status = "<span class='pill bad'>errors" + (" (disabled)" if info.get("disabled") else "") + "</span>"
            note = "; ".join(info["errors"][:3])
        elif info.get("available"):
            status, note = "<span class='pill good'>ok</span>", info.get("reason", "")
        else:
            status, note = "<span class='pill'>unavailable</span>", info.get("reason", "")
        rows.append((esc(name), status, esc(note)))
    stacks = profile.annotations.get("stacks")
    if stacks or profile.annotations.get("stacks_note"):
        ok = (stacks or {}).get("status") == "ok"
        rows.append(("stacks (py-spy)", "<span class='pill good'>ok</span>" if ok else "<span class='pill'>unavailable</span>",
                     esc(profile.annotations.get("stacks_note", "") if not ok else
                         f"{stacks.get('rate_hz')} Hz, {stacks.get('windows')} windows")))
    parts = ["<h2>Collectors and notes</h2>"]
    parts.append(table(["collector", "status", "note"], rows, raw=(0, 1, 2)) if rows else "<p class='muted'>none</p>")
    notes = {k: v for k, v in profile.annotations.items()
             if k not in {"stacks", "stacks_note", "imports", "energy_attribution"}}
    for key, value in notes.items():
        parts.append(f"<p class='note'><b>{esc(key)}</b>: {esc(value)}</p>")
    return "".join(parts)


def render(profile: Profile) -> str:
    command = " ".join(profile.target.get("command") or []) or f"pid {profile.target.get('pid')}"
    header = (f"<h1>perfpilot profile</h1><div class='muted'><code>{esc(command)}</code> &middot; "
              f"{esc(profile.started_at)} &middot; {esc(human_seconds(profile.duration_s))}</div>")
    body = "".join([header, summary_section(profile), timeseries_section(profile), stacks_section(profile),
                    imports_section(profile), collectors_section(profile)])
    return page(f"perfpilot: {command[:80]}", body, assets=("chart", "flamegraph"), extra_css=EXTRA_CSS)


def write(profile: Profile, path: str | Path) -> None:
    Path(path).write_text(render(profile), encoding="utf-8")
