"""``perfpilot plugins``: every plugin and collector, available or not, and why."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from perfpilot.config import load_settings
from perfpilot.registry import build_plugin_manager


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def plugins(as_json: bool) -> None:
    """List plugins and collectors, available or not, and why."""
    settings = load_settings()
    plugin_set = build_plugin_manager()
    rows = []
    for name, entry in plugin_set.collectors().items():
        try:
            ok, reason = entry.factory(settings).available()
        except Exception as exc:  # noqa: BLE001 - report, never crash the listing
            ok, reason = False, f"available() raised {type(exc).__name__}: {exc}"
        rows.append({"kind": "collector", "name": name, "plugin": entry.plugin, "available": bool(ok), "reason": reason})
    for kind, found in (("backend", plugin_set.backends()), ("proposer", plugin_set.proposers())):
        for name, entry in found.items():
            rows.append({"kind": kind, "name": name, "plugin": entry.plugin, "available": True, "reason": ""})
    from perfpilot.profilers import instructions

    for source, ok, reason in instructions.sources():  # not collectors: a counting run is a run of its own
        rows.append({"kind": "instructions", "name": source, "plugin": "perfpilot", "available": ok, "reason": reason})
    for name, error in plugin_set.load_errors.items():
        rows.append({"kind": "plugin", "name": name, "plugin": name, "available": False, "reason": error})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    table = Table(box=None, padding=(0, 2))
    for column in ("kind", "name", "plugin", "status", "reason"):
        table.add_column(column, style="bold" if column == "name" else None)
    for row in rows:
        status = Text("available", style="green") if row["available"] else Text("unavailable", style="yellow")
        table.add_row(row["kind"], row["name"], row["plugin"], status, row["reason"])
    Console().print(table)
