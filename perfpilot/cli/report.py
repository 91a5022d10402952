"""``perfpilot report``: render a saved Profile (terminal, HTML, speedscope, collapsed)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers import terminal


@click.command()
@click.argument("profile_path", metavar="PROFILE.json", type=click.Path(path_type=Path))
@click.option("--html", type=click.Path(path_type=Path), default=None, help="Write a self-contained HTML report.")
@click.option("--speedscope", type=click.Path(path_type=Path), default=None,
              help="Write the stacks in speedscope's format (open at speedscope.app).")
@click.option("--collapsed", type=click.Path(path_type=Path), default=None,
              help="Write collapsed stacks (flamegraph.pl / inferno input).")
@click.option("--top", type=click.IntRange(1, 500), default=15, show_default=True, help="Rows in the hot-spot and import tables.")
@click.option("-q", "--quiet", is_flag=True, help="Only write the files; no terminal report.")
def report(profile_path: Path, html: Path | None, speedscope: Path | None, collapsed: Path | None, top: int,
           quiet: bool) -> None:
    """Render a saved Profile: summary, hot spots, slowest imports and collector
    status in the terminal, and optionally HTML / speedscope / collapsed files.

    \b
      perfpilot report run.json
      perfpilot report run.json --html report.html --speedscope run.speedscope.json
    """
    from perfpilot.cli.profile import write_renderings

    profile = Profile.load(profile_path)
    console = Console()
    if not quiet:
        terminal.render(profile, console, top=top)
    written = write_renderings(profile, html=html, speedscope=speedscope, collapsed=collapsed)
    if written:
        Console(stderr=True).print(f"[dim]wrote {', '.join(written)}[/]")
