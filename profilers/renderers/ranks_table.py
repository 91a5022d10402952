"""The per-rank view of a distributed run (``annotations["ranks"]``, see
:mod:`perfpilot.profilers.ranks`) for the terminal: one row per rank, then the straggler
and the first rank to go, in words."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers.terminal import human_bytes


def _top(rank: dict[str, Any]) -> str:
    spots = rank.get("hotspots") or []
    if not spots:
        return "(no stacks)"
    spot = spots[0]
    return f"{spot['function']} ({spot['self_pct']:.0f}%)\n{spot['file']}:{spot['line']}"


def ranks_view(profile: Profile) -> Group | None:
    view = profile.annotations.get("ranks")
    if not view:
        return None
    table = Table(title="ranks", title_justify="left", box=None, padding=(0, 1))
    for name, justify in (("rank", "right"), ("pid", "right"), ("cpu", "right"), ("peak rss", "right"),
                          ("samples", "right"), ("collectives", "right"), ("hottest", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    straggler = (view.get("straggler") or {}).get("rank")
    for rank in view["ranks"]:
        style = "bold yellow" if rank["rank"] == straggler else None
        table.add_row(str(rank["rank"]), str(rank["pid"]), f"{rank['cpu_s']:.2f} s", human_bytes(rank["peak_rss_bytes"]),
                      str(rank["samples"]), f"{rank['collective_pct']:.0f}%", _top(rank), style=style)
    lines: list[Any] = [table]
    if view.get("straggler"):
        lines.append(Text(f"straggler: {view['straggler']['why']}", style="yellow"))
    if view.get("note"):
        lines.append(Text(view["note"], style="red"))
    return Group(*lines)
