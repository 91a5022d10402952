"""Terminal rendering of a Profile with rich."""

from __future__ import annotations

from typing import Any

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


def _energy_text(spot: dict[str, Any], key: str) -> Text:
    if key not in spot:
        return Text("-", style="dim")
    text = f"{spot[key]:.3g} J"
    if spot.get("energy_estimated"):
        return Text(f"~{text} est.", style="yellow")
    return Text(text)


def _where(spot: dict[str, Any], limit: int = 26) -> str:
    """``file:line``, shortened from the left: the end of a path says the most."""
    where = f"{spot.get('short_file') or spot.get('file')}:{spot.get('line')}"
    return where if len(where) <= limit else "…" + where[-(limit - 1):]


def hotspots_table(profile: Profile, top: int = 10, width: int | None = None) -> Table:
    """Top hot spots: function, hottest line with its code, self/total %, energy.

    ``width`` is the console's: the code column takes what the others leave, and is
    dropped before anything else. Left to rich, an over-wide table of unwrappable
    columns is shrunk evenly, which can squeeze out the percentage columns entirely.
    """
    has_energy = any("energy_j" in h for h in profile.hotspots)
    stacks = profile.stacks or {}
    spots = profile.hotspots[:top]
    rows: list[list[Any]] = []
    for spot in spots:
        row: list[Any] = [f"{spot.get('self_pct', 0):.1f}", f"{spot.get('total_pct', 0):.1f}",
                          str(spot.get("function")), _where(spot), spot.get("code", "")]
        if has_energy:
            row.append(_energy_text(spot, "energy_j"))
        rows.append(row)

    def fit(index: int, header: str, cap: int) -> int:
        return min(cap, max([len(header)] + [len(str(r[index])) for r in rows]))

    function_w = fit(2, "function", 28)
    line_w = fit(3, "line", 26)
    energy_w = fit(5, "energy", 24) if has_energy else 0
    # Each column is padded by one space either side.
    fixed = 6 + 7 + function_w + line_w + (energy_w + 2 if has_energy else 0) + 2 * 4
    code_w = min(60, fit(4, "code", 60), (width or 10_000) - fixed - 2)
    if width is not None and code_w < 12:
        # Still too narrow: the function name gives way before the numbers do.
        function_w = max(12, function_w - (12 - code_w))
        code_w = (width or 10_000) - (fixed - fit(2, "function", 28) + function_w) - 2
    show_code = code_w >= 8
    table = Table(title=f"hot spots ({stacks.get('samples', 0)} samples at {stacks.get('rate_hz', '?')} Hz)",
                  title_justify="left", box=None, padding=(0, 1))
    table.add_column("self %", justify="right", style="bold", no_wrap=True, min_width=6)
    table.add_column("total %", justify="right", no_wrap=True, min_width=7)
    table.add_column("function", style="cyan", no_wrap=True, max_width=function_w, overflow="ellipsis")
    table.add_column("line", no_wrap=True, overflow="ellipsis", max_width=line_w)
    if show_code:
        table.add_column("code", style="dim", overflow="ellipsis", no_wrap=True, max_width=code_w)
    if has_energy:
        table.add_column("energy", justify="right", no_wrap=True, min_width=energy_w)
    for row in rows:
        table.add_row(*(row if show_code else row[:4] + row[5:]))
    info = profile.annotations.get("energy_attribution") or {}
    if has_energy and info.get("estimate"):
        table.caption = "energy: estimate, not a measurement (see the HTML report for how it is attributed)"
        table.caption_justify = "left"
    return table


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
