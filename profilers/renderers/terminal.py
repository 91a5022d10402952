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
        row("exit", Text(f"killed by signal {target['signal']}", style="red"))
    elif code is not None:
        row("exit", Text(str(code), style="green" if code == 0 else "red"))
    row("wall", human_seconds(s.get("wall_s")))
    if "cpu_user_s" in s:
        row("cpu", f"{human_seconds(s['cpu_user_s'])} user + {human_seconds(s.get('cpu_system_s', 0.0))} system"
            + (f"  ({s['cpu_utilization_mean_pct']:.0f}% mean utilisation)" if "cpu_utilization_mean_pct" in s else ""))
    if "peak_rss_bytes" in s:
        row("peak rss", human_bytes(s["peak_rss_bytes"]))
    if "io_read_bytes" in s or "io_write_bytes" in s:
        row("io", f"{human_bytes(s.get('io_read_bytes'))} read, {human_bytes(s.get('io_write_bytes'))} written")
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
    return table


def render(profile: Profile, console: Console | None = None, *, show_collectors: bool = True) -> None:
    console = console or Console(stderr=True)
    parts: list[Any] = [summary_table(profile)]
    if show_collectors and profile.collectors:
        parts.append(collectors_table(profile))
    console.print(Group(*parts))
