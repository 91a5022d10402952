"""Terminal rendering of a Profile with rich."""

from __future__ import annotations

import io
from typing import Any, Callable, Mapping, Sequence

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from perfpilot.profilers.profile import Profile


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.3f} s"
    return f"{s / 60:.1f} min"


def why_killed(target: dict[str, Any]) -> str:
    """A kill perfpilot made itself must not read like an OOM kill or a crash."""
    if target.get("timed_out"):
        return " (perfpilot stopped it: --timeout reached)"
    if target.get("interrupted"):
        return " (perfpilot stopped it: interrupted)"
    return ""


def summary_table(profile: Profile) -> Table:
    s = profile.summary
    table = Table(title="perfpilot summary", show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()

    def row(label: str, value: Any) -> None:
        table.add_row(label, value if isinstance(value, Text) else str(value))

    target = profile.target
    command = " ".join(target.get("command") or []) or f"pid {target.get('pid')}"
    row("target", command)
    code = target.get("exit_code")
    if target.get("attached"):
        row("mode", "attached to running process")
    elif target.get("signal"):
        row("exit", Text(f"killed by signal {target['signal']}{why_killed(target)}", style="red"))
    elif code is not None:
        row("exit", Text(str(code), style="green" if code == 0 else "red"))
    row("wall", human_seconds(s.get("wall_s")))
    if "cpu_user_s" in s:
        row("cpu", f"{human_seconds(s['cpu_user_s'])} user + {human_seconds(s.get('cpu_system_s', 0.0))} system"
            + (f"  ({s['cpu_utilization_mean_pct']:.0f}% mean utilisation)" if "cpu_utilization_mean_pct" in s else ""))
    if "peak_rss_bytes" in s:
        row("peak rss", human_bytes(s["peak_rss_bytes"]))
    if "io_read_bytes" in s or "io_write_bytes" in s:
        # Storage bytes alone read "0 B read" for a file served from the page cache;
        # the bytes through read/write calls say what the program actually moved.
        row("io storage", f"{human_bytes(s.get('io_read_bytes'))} read, {human_bytes(s.get('io_write_bytes'))} written")
    if "io_read_chars" in s or "io_write_chars" in s:
        row("io calls", f"{human_bytes(s.get('io_read_chars'))} read, {human_bytes(s.get('io_write_chars'))} written"
            "  (incl. page cache, pipes)")
    if "gpu_utilization_mean_pct" in s:
        row("gpu", f"{s['gpu_utilization_mean_pct']:.0f}% mean utilisation, peak memory {human_bytes(s.get('gpu_memory_peak_bytes'))}")
    for domain, entry in sorted(s.get("energy", {}).items()):
        label = f"energy {domain}"
        text = f"{entry['joules']:.2f} J  [{entry.get('source', '?')}]"
        style = "yellow" if entry.get("source") == "estimate" else ""
        row(label, Text(text + ("  (estimate, not a measurement)" if entry.get("source") == "estimate" else ""), style=style))
    note = (profile.annotations.get("stacks") or {}).get("coverage_note")
    if note:
        row("stacks", Text(note, style="yellow"))
    return table


def collectors_table(profile: Profile) -> Table:
    table = Table(title="collectors", title_justify="left", box=None, padding=(0, 2))
    table.add_column("name", style="bold")
    table.add_column("status")
    table.add_column("note")
    for name, info in profile.collectors.items():
        if info.get("errors"):
            status = Text("errors" + (" (disabled)" if info.get("disabled") else ""), style="red")
            note = "; ".join(info["errors"][:2])
        elif info.get("available"):
            status, note = Text("ok", style="green"), info.get("reason", "")
        else:
            status, note = Text("unavailable", style="dim"), info.get("reason", "")
        table.add_row(name, status, note)
    stacks = profile.annotations.get("stacks")
    note = profile.annotations.get("stacks_note")
    if stacks or note:
        if (stacks or {}).get("status") == "ok":
            detail = f"py-spy {stacks.get('rate_hz')} Hz, {profile.stacks.get('samples', 0)} samples"
            if "coverage_pct" in stacks:
                detail += f", {stacks['coverage_pct']}% of the run"
            table.add_row("stacks", Text("ok", style="green"), detail + (f"; {note}" if note else ""))
        else:
            table.add_row("stacks", Text("unavailable", style="yellow"), note or "")
    return table


def _energy_text(spot: Mapping[str, Any], key: str = "energy_j") -> Text:
    if key not in spot:
        return Text("-", style="dim")
    text = f"{spot[key]:.3g} J"
    if spot.get("energy_estimated"):
        return Text(f"~{text} est.", style="yellow")
    return Text(text)


def where(spot: Mapping[str, Any]) -> str:
    """``file:line``, whole: the path relative to the project (or the package part)."""
    line = spot.get("line")
    path = spot.get("short_file") or spot.get("file") or "?"
    return f"{path}:{line}" if line is not None else str(path)


# Column widths as rich lays them out here: one space of padding either side.
_PCT_W = {"self": 6, "total": 7}
_MIN_CODE_W = 12


Extra = tuple[str, Callable[[Mapping[str, Any]], str]]  # (header, cell text) of a caller's own column


def _layout(spots: Sequence[Mapping[str, Any]], width: int, has_energy: bool,
            extras: Sequence[Extra] = ()) -> tuple[list[str], int]:
    """Which columns fit in ``width``: (columns, code width). The function and its
    file:line are never cut; code shrinks then goes, then the caller's extra columns
    (last first), then energy, then total %; last, file:line moves under the
    function (``stacked``)."""
    widths = {"self": 6, "total": 7,
              "function": max([8] + [len(str(s.get("function"))) for s in spots]),
              "where": max([4] + [len(where(s)) for s in spots]),
              "energy": max([6] + [len(_energy_text(s).plain) for s in spots]) if has_energy else 0}
    for i, (header, cell) in enumerate(extras):
        widths[f"extra{i}"] = max([len(header)] + [len(cell(s)) for s in spots])
    code_w = max([4] + [len(str(s.get("code") or "")) for s in spots])
    base = ["self", "total", "function", "where"]
    energy = ["energy"] if has_energy else []
    extra = [f"extra{i}" for i in range(len(extras))]
    candidates = [base + extra + ["code"] + energy]
    candidates += [base + extra[:n] + energy for n in range(len(extra), -1, -1)]
    candidates += [base, ["self", "function", "where"]]
    for columns in candidates:
        used = sum(2 + widths[c] for c in columns if c != "code")
        if "code" not in columns:
            if used <= width:
                return columns, 0
            continue
        room = min(code_w, 60, width - used - 2)
        if room >= _MIN_CODE_W:
            return columns, room
    # Stacked: self and total % then the function, file:line (and energy) on the next line.
    # total % stays while the function fits beside it, and the line either fits too or
    # would fold even without it.
    room = width - (8 + 9 + 2)
    line_w = 2 + widths["where"] + (2 + widths["energy"] if has_energy else 0)
    keep_total = widths["function"] <= room and (line_w <= room or line_w > room + 9)
    return (["self", "total", "stacked"] if keep_total else ["self", "stacked"]), 0


def hotspot_table(spots: Sequence[Mapping[str, Any]], *, width: int | None = None, title: str | None = None,
                  caption: str | None = None, top: int | None = None, extras: Sequence[Extra] = ()) -> Table:
    """The one hot-spot table (profile report, pytest, daemon): ``spots`` are hot-spot
    dicts (``function``, ``file``/``short_file``, ``line``, ``self_pct``, optional
    ``total_pct``, ``code``, ``energy_j``); ``extras`` are a caller's own columns
    (e.g. samples, hosts). At any ``width`` the function's full name and its file:line
    are printed whole; lower-value columns give way first."""
    spots = list(spots[:top] if top else spots)
    has_energy = any("energy_j" in s for s in spots)
    columns, code_w = _layout(spots, width or 10_000, has_energy, extras)
    if not any("total_pct" in s for s in spots):
        columns = [c for c in columns if c != "total"]
    table = Table(title=title, title_justify="left", box=None, padding=(0, 1), caption=caption,
                  caption_justify="left")
    heads: dict[str, tuple[str, dict[str, Any]]] = {
        "self": ("self %", dict(justify="right", style="bold", min_width=6)),
        "total": ("total %", dict(justify="right", min_width=7)),
        "function": ("function", dict(style="cyan")),
        "where": ("line", {}),
        "stacked": ("function  (file:line)", dict(overflow="fold")),
        "code": ("code", dict(style="dim", overflow="ellipsis", max_width=code_w)),
        "energy": ("energy", dict(justify="right")),
        **{f"extra{i}": (header, {}) for i, (header, _) in enumerate(extras)},
    }
    for column in columns:
        header, options = heads[column]
        options.setdefault("overflow", "fold")  # never an ellipsis in a name or a path
        table.add_column(header, no_wrap=column != "stacked", **options)
    for spot in spots:
        table.add_row(*(_cell(spot, column, extras) for column in columns))
    return table


def _cell(spot: Mapping[str, Any], column: str, extras: Sequence[Extra] = ()) -> Any:
    if column.startswith("extra"):
        return Text(extras[int(column[5:])][1](spot))
    if column == "self":
        return f"{spot.get('self_pct', 0):.1f}"
    if column == "total":
        return f"{spot.get('total_pct', 0):.1f}"
    if column == "function":
        return Text(str(spot.get("function")))
    if column == "where":
        return Text(where(spot))
    if column == "code":
        return Text(str(spot.get("code") or ""))
    if column == "energy":
        return _energy_text(spot)
    text = Text(str(spot.get("function")), style="cyan")
    text.append("\n  " + where(spot), style="")
    if "energy_j" in spot:
        text.append("  ")
        text.append_text(_energy_text(spot))
    return text


def hotspot_text(spots: Sequence[Mapping[str, Any]], width: int = 80, **kwargs: Any) -> str:
    """The table as plain text at ``width`` columns (for pytest's terminal summary, logs)."""
    console = Console(width=width, file=io.StringIO(), color_system=None, highlight=False)
    console.print(hotspot_table(spots, width=width, **kwargs))
    return console.file.getvalue()  # type: ignore[attr-defined]


def hotspots_table(profile: Profile, top: int = 10, width: int | None = None) -> Table:
    """The profile's top hot spots (see :func:`hotspot_table`)."""
    stacks = profile.stacks or {}
    info = profile.annotations.get("energy_attribution") or {}
    has_energy = any("energy_j" in h for h in profile.hotspots[:top])
    caption = ("energy: estimate, not a measurement (see the HTML report for how it is attributed)"
               if has_energy and info.get("estimate") else None)
    return hotspot_table(profile.hotspots, width=width, top=top, caption=caption,
                         title=f"hot spots ({stacks.get('samples', 0)} samples at {stacks.get('rate_hz', '?')} Hz)")


def imports_table(profile: Profile, top: int = 10) -> Table | None:
    info = profile.annotations.get("imports")
    if not info or not info.get("slowest"):
        return None
    table = Table(title=f"slowest imports ({info.get('count', 0)} modules, {human_seconds(info.get('total_us', 0) / 1e6)})",
                  title_justify="left", box=None, padding=(0, 1))
    table.add_column("cumulative", justify="right", style="bold")
    table.add_column("self", justify="right")
    table.add_column("module", style="cyan")
    table.add_column("imported by", style="dim")
    for entry in info["slowest"][:top]:
        table.add_row(human_seconds(entry["cumulative_us"] / 1e6), human_seconds(entry["self_us"] / 1e6),
                      entry["module"], entry.get("parent") or "")
    return table


def render(profile: Profile, console: Console | None = None, *, show_collectors: bool = True, top: int = 10) -> None:
    console = console or Console(stderr=True)
    parts: list[Any] = [summary_table(profile)]
    if profile.hotspots:
        parts.append(Text(""))
        parts.append(hotspots_table(profile, top, width=console.width))
    from perfpilot.profilers.renderers.ranks_table import ranks_view  # it formats with this module's helpers

    ranks = ranks_view(profile)
    if ranks is not None:
        parts += [Text(""), ranks]
    imports = imports_table(profile, top)
    if imports is not None:
        parts.append(Text(""))
        parts.append(imports)
    elif (profile.annotations.get("imports") or {}).get("note"):
        parts.append(Text(f"imports: {profile.annotations['imports']['note']}", style="yellow"))
    if show_collectors and (profile.collectors or profile.annotations.get("stacks_note")):
        parts.append(Text(""))
        parts.append(collectors_table(profile))
    console.print(Group(*parts))
