"""The HTML page of ``perfpilot daemon hotspots --from ... --html``: the daemons merged,
their merged flame graph (``host`` and ``pid`` frames at the root, so it is labelled by
host and process) and the fleet's hot spots with each host's samples.

Built from :mod:`perfpilot.profilers.renderers.html`'s blocks on a
:func:`~perfpilot.profilers.renderers.htmlpage.page` of its own: a fleet has no single
target, run time or time series, so the profile report's sections do not fit it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers.html import EXTRA_CSS, esc, flamegraph_block, hotspots_block, table
from perfpilot.profilers.renderers.htmlpage import page

output_file_extension = "html"


def _daemons(fleet: dict[str, Any], total: int) -> str:
    rows = [(label, info.get("url", ""), info.get("processes", 0), info.get("samples", 0),
             f"{100.0 * info.get('samples', 0) / total:.1f}" if total else "-")
            for label, info in fleet.items()]
    rows.append(("all", "", sum(r[2] for r in rows), total, "100.0" if total else "-"))
    return table(["daemon", "URL", "processes", "samples", "share %"], rows, numeric=(2, 3, 4))


def _hosts(hotspots: list[dict[str, Any]], top: int) -> str:
    rows = [(h["function"], f"{h.get('short_file') or h.get('file')}:{h.get('line')}", h.get("samples", 0),
             ", ".join(f"{host} {n}" for host, n in sorted(h.get("hosts", {}).items(), key=lambda kv: -kv[1])))
            for h in hotspots[:top]]
    return table(["function", "where", "self samples", "by host"], rows, numeric=(2,))


def render(profile: Profile, top: int = 25) -> str:
    fleet = profile.annotations.get("fleet") or {}
    stacks = profile.stacks or {}
    total = int(stacks.get("samples") or 0)
    rate = f" at {stacks['rate_hz']:g} Hz" if stacks.get("rate_hz") else ""
    body = "".join([
        f"<h1>perfpilot fleet hot spots</h1><div class='muted'>{len(fleet)} daemons, {total} samples{esc(rate)} "
        "from their rolling py-spy snapshots</div>",
        "<h2>Daemons</h2>", _daemons(fleet, total),
        "<h2>Where the time goes</h2>",
        flamegraph_block("flamegraph", stacks.get("collapsed") or {}, title="Flame graph (host, process, stack)"),
        "<h3>Hot spots across the fleet</h3>", hotspots_block(profile.hotspots, top=top, with_energy=False),
        "<h3>Which hosts they ran on</h3>", _hosts(profile.hotspots, top),
    ])
    return page("perfpilot fleet hot spots", body, assets=("flamegraph",), extra_css=EXTRA_CSS)


def write(profile: Profile, path: str | Path) -> None:
    Path(path).write_text(render(profile), encoding="utf-8")
