"""``perfpilot daemon hotspots --from URL ...``: one hot-spot table and one flame graph
for a fleet of daemons, straight from their JSON APIs (no aggregating server)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

EXIT_PARTIAL = 3  # some daemons merged, some could not be read (each named on stderr)


@click.command("hotspots")
@click.option("--from", "sources", multiple=True, required=True, metavar="URL[@TOKEN_FILE]",
              help="A daemon to merge, e.g. http://web1:10464 (repeat for each). Its own bearer token may follow "
                   "an '@': URL@/etc/perfpilot/web1.token, or URL@env:NAME to read it from a variable.")
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="Token for every --from without its own '@' (default: $PERFPILOT_DAEMON_TOKEN if set).")
@click.option("--watch", default=None, metavar="SELECTOR", help="Only this watch, e.g. name:gunicorn.")
@click.option("--top", type=click.IntRange(1, 500), default=20, show_default=True, help="Rows in the table.")
@click.option("--timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True,
              help="Seconds to wait for each daemon.")
@click.option("--html", type=click.Path(path_type=Path), default=None,
              help="Write an HTML page with the merged flame graph (labelled by host and process) and the table.")
@click.option("--speedscope", type=click.Path(path_type=Path), default=None,
              help="Write the merged stacks in speedscope's format.")
@click.option("--collapsed", type=click.Path(path_type=Path), default=None,
              help="Write the merged stacks as collapsed lines (flamegraph.pl / inferno input).")
@click.option("--json", "as_json", is_flag=True, help="Print the merge as JSON instead of a table.")
def hotspots(sources: tuple[str, ...], token_file: Path | None, watch: str | None, top: int, timeout: float,
             html: Path | None, speedscope: Path | None, collapsed: Path | None, as_json: bool) -> None:
    """Merge the rolling hot spots of several daemons into one ranked table and one
    flame graph, labelled by host.

    \b
      perfpilot daemon hotspots --from http://web1:10464 --from http://web2:10464 --token-file fleet.token
      perfpilot daemon hotspots --from http://web1:10464@web1.token --from http://gpu1:10464@env:GPU1_TOKEN \\
          --html fleet.html --speedscope fleet.speedscope.json

    A daemon that cannot be read (refused token, unreachable) gets one line on stderr
    naming it, and the others are merged all the same. Exit codes: 0 every daemon
    merged; 3 some merged, some not; 125 none could be read (or bad arguments).
    """
    from perfpilot.agent.daemon import fleet
    from perfpilot.errors import PerfpilotError

    default = fleet.default_token(token_file)
    parsed = [fleet.parse_source(text, default) for text in sources]
    daemons, errors = fleet.fetch_all(parsed, watch=watch, timeout=timeout)
    for error in errors:
        click.echo(f"perfpilot: error: {error}", err=True)
    if not daemons:
        raise PerfpilotError(f"none of the {len(parsed)} daemons could be read", hint="see the lines above")
    merged = fleet.merge(daemons)
    rows = fleet.ranked(merged, top=top)
    if as_json:
        click.echo(json.dumps(_as_json(merged, rows, errors), indent=1))
    else:
        _print(merged, rows)
    if html or speedscope or collapsed:
        _write(fleet.to_profile(merged, rows), html=html, speedscope=speedscope, collapsed=collapsed)
    if errors:
        sys.exit(EXIT_PARTIAL)


def _as_json(merged: Any, rows: list[dict[str, Any]], errors: list[Exception]) -> dict[str, Any]:
    return {
        "samples": merged.samples,
        "daemons": [{"label": d.source.label, "url": d.source.url, "samples": d.samples, "rate_hz": d.rate_hz,
                     "processes": [{k: p[k] for k in ("pid", "name", "watches", "samples")} for p in d.processes]}
                    for d in merged.daemons],
        "errors": [str(e) for e in errors],
        "hotspots": [{k: v for k, v in row.items() if k != "lines"} for row in rows],
    }


def _print(merged: Any, rows: list[dict[str, Any]]) -> None:
    console = Console()
    for d in merged.daemons:
        console.print(f"{escape(d.source.label)}: {d.samples} samples from {len(d.processes)} processes"
                      + (f" ({d.rate_hz:g} Hz)" if d.rate_hz else ""), highlight=False)
    console.print(f"[bold]merged: {merged.samples} samples from {len(merged.daemons)} daemons[/]", highlight=False)
    if not rows:
        console.print("no stacks yet: the daemons have taken no py-spy snapshot of a Python process")
        return
    from perfpilot.profilers.renderers.terminal import hotspot_table

    extras = [("samples", lambda r: str(r["samples"])),
              ("hosts (self samples)", lambda r: ", ".join(f"{h} {n}" for h, n in
                                                           sorted(r["hosts"].items(), key=lambda kv: -kv[1])))]
    table = hotspot_table(rows, width=console.width, extras=extras,
                          title="hot spots across the fleet (self = samples where it ran)")
    console.print(table)


def _write(profile: Any, *, html: Path | None, speedscope: Path | None, collapsed: Path | None) -> None:
    from perfpilot.cli.profile import write_renderings
    from perfpilot.errors import PerfpilotError
    from perfpilot.profilers.renderers import fleet_html

    written = write_renderings(profile, speedscope=speedscope, collapsed=collapsed)
    if html is not None:
        try:
            fleet_html.write(profile, html)
        except OSError as exc:
            raise PerfpilotError(f"cannot write {html}: {exc.strerror or exc}",
                                 hint="check the directory exists") from None
        written.insert(0, str(html))
    Console(stderr=True).print(f"[dim]wrote {', '.join(written)}[/]")
