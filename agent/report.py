"""The optimiser's report: ``optimize-report.json``, ``optimize-report.html`` and
``perfpilot.patch`` (the combined diff of every accepted change).

By default they go to ``.perfpilot/`` in the project, a folder that carries its own
``.gitignore`` (as ``.pytest_cache`` does), so ``git status`` shows nothing new after a
run without ``--apply``. Every file is written whole or not at all (a temporary file in
the same folder, then a rename): a full disk never leaves a truncated report, and a
failure after an accepted change still leaves the patch and a report that says what
stopped the run.

The HTML page is self-contained (Chart.js inlined by
:func:`perfpilot.profilers.renderers.htmlpage.page`): the cumulative ratio with its CI,
one before/after chart per accepted step (median bars plus every run), and every
proposal with its verdict, reason and diff.
"""

from __future__ import annotations

import html
import json
import math
import os
import shlex
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from perfpilot.agent.figures import ci_label, human_value
from perfpilot.agent.loop import Result
from perfpilot.agent.outcomes import Outcome
from perfpilot.agent.secrets import Masker
from perfpilot.errors import PerfpilotError

SCHEMA_VERSION = 1
JSON_NAME = "optimize-report.json"
HTML_NAME = "optimize-report.html"
PATCH_NAME = "perfpilot.patch"
DEFAULT_DIR = ".perfpilot"
GITIGNORE = "# Created by perfpilot automatically: reports and patches, not project files.\n*\n"


class ReportWriteError(PerfpilotError):
    """A report file could not be written (full disk, unwritable folder)."""


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def build(result: Result) -> dict[str, Any]:
    s = result.settings
    baseline = result.baseline
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "project": str(result.project),
        "started_at": datetime.fromtimestamp(result.started_at, timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(result.duration_s, 3),
        "settings": {"run": s.run, "test": s.test, "objective": s.objective, "guards": s.guards, "budget": s.budget,
                     "time_budget": s.time_budget, "max_failures": s.max_failures, "runs": s.runs,
                     "min_runs": s.min_runs, "threshold": s.threshold, "confidence": s.confidence,
                     "output_check": s.output_check, "test_repeats": s.test_repeats, "backend": s.backend,
                     "model": s.model},
        "output_check": result.output_check,
        "final_tests": result.final_tests,
        "proposer": result.proposer,
        "objective": result.objective,
        "guards": result.guards,
        "stop_reason": result.stop_reason,
        "interrupted": result.interrupted,
        "error": result.error,
        "baseline": None,
        "proposals": [o.to_dict() for o in result.outcomes],
        "accepted": [o.index for o in result.accepted],
        "counts": _counts(result.outcomes),
        "verification_runs": result.verification_runs,
        "cumulative": result.cumulative,
        "final": _final(result),
        "patch": PATCH_NAME if result.patch.strip() else None,
        "notes": result.notes,
    }
    if baseline is not None:
        data["baseline"] = {
            "values": baseline.values,
            "metrics": baseline.metrics,
            "tests_s": baseline.tests_s,
            "tests": baseline.tests,
            "summary": baseline.profile.summary,
            "hotspots": [{**{k: h.get(k) for k in ("function", "line", "self_pct", "total_pct")},
                          "file": _project_path(str(h.get("file", "")), result.workspace_dirs)}
                         for h in baseline.profile.hotspots[:10]],
        }
    return _finite(data)


def _project_path(file: str, workspace_dirs: list[str]) -> str:
    """A workspace path as the project-relative path it stands for."""
    for root in workspace_dirs:
        if root and file.startswith(root.rstrip("/") + "/"):
            return file[len(root.rstrip("/")) + 1:]
    return file


def _final(result: Result) -> dict[str, Any]:
    """How to run the optimised version: ``env`` holds env proposals only, ``run_env`` every
    variable to set (env knobs included), ``command`` the whole shell line."""
    from perfpilot.agent.knobs import knob_args, knob_env, parse_knobs

    state = result.final_state
    try:
        knobs = parse_knobs(result.settings.knobs)
        args, env = knob_args(knobs, state.knobs), {**knob_env(knobs, state.knobs), **state.env}
    except Exception:  # noqa: BLE001 - a report never fails over a display detail
        args, env = [], dict(state.env)
    run = shlex.join([*shlex.split(result.settings.run or ""), *args])
    command = " ".join([*(f"{k}={shlex.quote(str(v))}" for k, v in env.items()), run])
    return {"env": state.env, "knobs": state.knobs, "run": run, "run_env": env, "command": command}


def _counts(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.reason] = counts.get(outcome.reason, 0) + 1
    return counts


def prepare_dir(output_dir: Path, *, own: bool) -> None:
    """Create the output folder; perfpilot's own (``.perfpilot``) gets a ``.gitignore``."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        ignore = output_dir / ".gitignore"
        if own and not ignore.exists():
            atomic_write(ignore, GITIGNORE)
    except OSError as exc:
        raise ReportWriteError(f"cannot write to {output_dir}: {exc.strerror or exc}",
                               hint="pass --output-dir with a writable folder") from None


def atomic_write(path: Path, text: str) -> None:
    """``path`` gets ``text`` whole, or keeps what it had (temp file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write(result: Result, output_dir: Path, *, own: bool = False) -> dict[str, Path]:
    """Write the patch, JSON and HTML (in that order: the patch is what was won); returns what was written."""
    prepare_dir(output_dir, own=own)
    written: dict[str, Path] = {}
    patch = output_dir / PATCH_NAME
    try:
        if result.patch.strip():
            atomic_write(patch, result.patch)
            written["patch"] = patch
        elif patch.exists():
            patch.unlink()  # a stale patch from an earlier run would be a lie
        # Test output, diffs and commands can carry secrets: both report files are masked by value.
        # perfpilot.patch is not: it is the user's own code, to be applied to their tree.
        masker = result.masker or Masker.for_project(result.project)
        data = masker.mask_obj(build(result))
        data["secrets_masked"] = masker.count
        atomic_write(output_dir / JSON_NAME, json.dumps(data, indent=1, allow_nan=False) + "\n")
        written["json"] = output_dir / JSON_NAME
        atomic_write(output_dir / HTML_NAME, render_html(data))
        written["html"] = output_dir / HTML_NAME
    except OSError as exc:
        done = ", ".join(str(p) for p in written.values()) or "nothing"
        raise ReportWriteError(f"could not write the report in {output_dir}: {exc.strerror or exc} "
                               f"(written: {done})", hint="free space or pass --output-dir") from None
    return {k: written[k] for k in ("json", "html", "patch") if k in written}


# ------------------------------------------------------------------- HTML

_CSS = """
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}
.accepted,.winner{background:#1a7f37} .rejected{background:#9a6700} .refused,.malformed{background:#cf222e}
.proposal{border:1px solid #e3e6ea;border-radius:6px;padding:8px 12px;margin:10px 0}
.big{font-size:28px;font-weight:600}
"""


def _fmt_ratio(verdict: dict[str, Any] | None) -> str:
    if not verdict or verdict.get("ratio") is None:
        return "-"
    low, high = verdict.get("ci_low"), verdict.get("ci_high")
    ci = f" ({ci_label(verdict)} {low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    return f"{verdict['ratio']:.3f}×{ci}"


def _verdict_table(verdicts: dict[str, Any]) -> str:
    if not verdicts:
        return ""
    rows = ["<table><tr><th>metric</th><th>verdict</th><th class=num>baseline</th><th class=num>candidate</th>"
            "<th class=num>ratio</th><th>CI</th><th class=num>p</th><th class=num>runs</th></tr>"]
    for metric, v in verdicts.items():
        ci = (f"{ci_label(v)} {v['ci_low']:.3f}–{v['ci_high']:.3f}"
              if v.get("ci_low") is not None and v.get("ci_high") is not None else "-")
        rows.append(f"<tr><td>{html.escape(metric)}</td><td>{html.escape(str(v.get('verdict')))}</td>"
                    f"<td class=num>{human_value(metric, v.get('median_a'))}</td>"
                    f"<td class=num>{human_value(metric, v.get('median_b'))}</td>"
                    f"<td class=num>{v.get('ratio') or 0:.3f}</td><td>{ci}</td>"
                    f"<td class=num>{v.get('p_value') if v.get('p_value') is None else format(v['p_value'], '.2g')}</td>"
                    f"<td class=num>{v.get('runs_a')}+{v.get('runs_b')}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _chart(chart_id: str, labels: list[str], medians: list[float], runs: list[list[float]], unit: str) -> str:
    spec = {
        "type": "bar",
        "data": {"labels": labels, "datasets": [
            {"type": "bar", "label": f"median {unit}", "data": medians, "backgroundColor": ["#8c959f", "#1a7f37"]},
            {"type": "scatter", "label": "runs", "data": [{"x": labels[i], "y": y} for i, side in enumerate(runs)
                                                            for y in side],
             "backgroundColor": "#1d232a", "pointRadius": 3},
        ]},
        "options": {"responsive": True, "maintainAspectRatio": False, "animation": False,
                    "scales": {"y": {"beginAtZero": True, "title": {"display": True, "text": unit}}}},
    }
    from perfpilot.profilers.renderers.htmlpage import json_for_script

    return (f'<div class="chart" style="height:220px;max-width:480px"><canvas id="{chart_id}"></canvas></div>'
            f"<script>new Chart(document.getElementById('{chart_id}'), {json_for_script(spec)});</script>")


def _baseline_html(data: dict[str, Any]) -> str:
    """The baseline's runs, tests and hot spots, the output check, and the final re-test."""
    esc, objective, parts = html.escape, data["objective"], []
    baseline = data.get("baseline")
    if baseline:
        parts.append(f"<h2>Baseline</h2><p>{esc(objective)} over {len(baseline['values'])} runs: "
                     + ", ".join(human_value(objective, x) for x in baseline["values"]) + "</p>")
        if baseline.get("tests"):
            parts.append(f"<p>Tests passed {len(baseline['tests'])} times, PYTHONHASHSEED "
                         + ", ".join(str(t["seed"]) for t in baseline["tests"]) + "</p>")
        if baseline["hotspots"]:
            rows = "".join(f"<tr><td>{esc(str(h['function']))}</td><td>{esc(str(h['file']))}:{h['line']}</td>"
                           f"<td class=num>{h['self_pct']}</td><td class=num>{h['total_pct']}</td></tr>"
                           for h in baseline["hotspots"])
            parts.append("<table><tr><th>function</th><th>where</th><th class=num>self %</th>"
                         f"<th class=num>total %</th></tr>{rows}</table>")
    if data.get("output_check"):
        parts.append(f"<p>Output check: {esc(data['output_check'])}</p>")
    if data.get("final_tests"):
        ok = all(t["passed"] for t in data["final_tests"])
        parts.append(f"<p>Accepted changes re-tested together with fresh seeds: {'passed' if ok else 'FAILED'} "
                     f"(PYTHONHASHSEED {', '.join(str(t['seed']) for t in data['final_tests'])})</p>")
    return "".join(parts)


def _proposal_html(p: dict[str, Any]) -> str:
    """One proposal: status, reason, rationale, detail, its test runs (seeds), verdicts, diff."""
    esc = html.escape
    block = [f"<div class=proposal><b>#{p['index']} {esc(p['title'])}</b> "
             f"<span class='badge {esc(p['status'])}'>{esc(p['status'])}</span> {esc(p['reason'])}"
             f" <span class=muted>({p['duration_s']:.1f} s)</span>"]
    proposal = p.get("proposal") or {}
    if proposal.get("rationale"):
        block.append(f"<p class=muted>{esc(proposal['rationale'])}</p>")
    if p["detail"]:
        block.append(f"<pre>{esc(p['detail'])}</pre>")
    if p.get("tests"):
        block.append("<p class=muted>tests: " + ", ".join(
            f"PYTHONHASHSEED={t['seed']} {'passed' if t['passed'] else 'FAILED'} ({t['seconds']:.1f} s)"
            for t in p["tests"]) + "</p>")
    block.append(_verdict_table(p["verdicts"]))
    if p["diff"]:
        block.append(f"<details><summary>diff</summary><pre>{esc(p['diff'])}</pre></details>")
    if p.get("raw_reply"):
        block.append(f"<details><summary>raw reply</summary><pre>{esc(p['raw_reply'])}</pre></details>")
    block.append("</div>")
    return "".join(block)


def render_html(data: dict[str, Any]) -> str:
    from perfpilot.profilers.renderers.htmlpage import page

    objective = data["objective"]
    esc = html.escape
    parts = [f"<h1>perfpilot optimize</h1><p class=muted>{esc(data['project'])} — {esc(data['started_at'])}, "
             f"{data['duration_s']:.1f} s, proposer {esc(data['proposer'] or '-')}, stopped: "
             f"{esc(data['stop_reason'] or '-')}</p>"]
    if data.get("interrupted"):
        parts.append("<p class=bad><b>Interrupted:</b> this is a partial report.</p>")
    if data.get("error"):
        parts.append(f"<p class=bad>Error: {esc(data['error'])}</p>")
    cumulative = data.get("cumulative")
    parts.append("<h2>Result</h2>")
    if cumulative:
        v = cumulative["verdict"]
        parts.append(f"<p><span class=big>{_fmt_ratio(v)}</span><br><span class=muted>{esc(objective)} of the "
                     f"optimised version relative to the original (lower is better); "
                     f"{v.get('runs_a')}+{v.get('runs_b')} runs"
                     f"{'' if cumulative.get('measured') else ', from the single accepted step'}</span></p>")
        parts.append(_chart("cumulative", ["original", "optimised"], [v["median_a"], v["median_b"]],
                            [cumulative.get("values_a", []), cumulative.get("values_b", [])], objective))
        final = data.get("final") or {}
        if final.get("run_env") or final.get("knobs"):
            parts.append(f"<p><b>To keep the gain, run:</b> <code>{esc(final.get('command', ''))}</code>"
                         + (" (with perfpilot.patch applied)" if data.get("patch") else "") + "</p>")
    else:
        parts.append("<p>No change was proven better; the project is unchanged.</p>")
    counts = ", ".join(f"{n} {esc(k)}" for k, n in data["counts"].items()) or "none"
    parts.append(f"<p>{len(data['proposals'])} proposals: {counts}. Verification used {data['verification_runs']} "
                 f"measured runs. Patch: {esc(data['patch'] or 'none')}. "
                 f"Secret values masked in prompts and this report: {data.get('secrets_masked', 0)}.</p>")
    parts.append(_baseline_html(data))
    accepted = [p for p in data["proposals"] if p["status"] == "accepted"]
    if accepted:
        parts.append("<h2>Accepted steps</h2>")
        for p in accepted:
            v = p["verdicts"].get(objective, {})
            parts.append(f"<h3>#{p['index']} {esc(p['title'])}: {_fmt_ratio(v)}</h3>")
            parts.append(_chart(f"step{p['index']}", ["before", "after"], [v.get("median_a", 0), v.get("median_b", 0)],
                                [p["values_a"], p["values_b"]], objective))
    parts.append("<h2>Every proposal</h2>")
    parts.extend(_proposal_html(p) for p in data["proposals"])
    if data["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in data["notes"]) + "</ul>")
    return page("perfpilot optimize", "\n".join(parts), extra_css=_CSS)
