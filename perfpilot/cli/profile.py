"""``perfpilot profile``: run a command (or attach to a PID) and record a Profile."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from perfpilot.cli.options import collector_options, settings_from
from perfpilot.errors import EXIT_PERFPILOT_FAILURE, PerfpilotError
from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers import terminal
from perfpilot.profilers.session import ProfileInterrupted, RunOptions, profile_command, profile_pid

DEFAULT_OUTPUT = "perfpilot-profile.json"
EXPORT_FAILED = EXIT_PERFPILOT_FAILURE  # a clean run whose --html/--speedscope/--collapsed was not written


class LiveLine:
    """A one-line live status on stderr (only when stderr is a terminal)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = Live(Text(""), console=console, refresh_per_second=4, transient=True)
        self.last = 0.0

    def __enter__(self) -> "LiveLine":
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def update(self, elapsed: float, values: Mapping[str, float]) -> None:
        now = time.monotonic()
        if now - self.last < 0.25:
            return
        self.last = now
        parts = [f"[bold cyan]perfpilot[/] {elapsed:6.1f}s"]
        if "cpu.utilization_pct" in values:
            parts.append(f"cpu {values['cpu.utilization_pct']:5.0f}%")
        if "memory.rss_bytes" in values:
            parts.append(f"rss {terminal.human_bytes(values['memory.rss_bytes'])}")
        if "cpu.processes" in values:
            parts.append(f"procs {values['cpu.processes']:.0f}")
        gpu = [v for k, v in values.items() if k.startswith("gpu") and k.endswith("utilization_pct")]
        if gpu:
            parts.append(f"gpu {max(gpu):.0f}%")
        self.live.update(Text.from_markup("  ".join(parts)))


def write_renderings(profile: Profile, *, html: Path | None = None, speedscope: Path | None = None,
                     collapsed: Path | None = None) -> list[str]:
    """Write the requested renderings; a missing stacks export raises NoStacksError."""
    written: list[str] = []
    if html is not None:
        from perfpilot.profilers.renderers import html as html_renderer

        _write_file(html_renderer.write, profile, html)
        written.append(str(html))
    if speedscope is not None:
        from perfpilot.profilers.renderers import speedscope as speedscope_renderer

        _write_file(speedscope_renderer.write, profile, speedscope)
        written.append(str(speedscope))
    if collapsed is not None:
        from perfpilot.profilers.renderers import collapsed as collapsed_renderer

        _write_file(collapsed_renderer.write, profile, collapsed)
        written.append(str(collapsed))
    return written


def _write_file(writer: Any, profile: Profile, path: Path) -> None:
    try:
        writer(profile, path)
    except OSError as exc:
        raise PerfpilotError(f"cannot write {path}: {exc.strerror or exc}", hint="check the directory exists") from None


def check_output_dirs(*paths: Path | None) -> None:
    """Refuse before the target runs, not after: a long run whose Profile cannot be
    written is lost."""
    for path in paths:
        if path is None:
            continue
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise PerfpilotError(f"cannot write {path}: directory {parent} does not exist",
                                 hint="create it first or choose another path")
        if path.is_dir():
            raise PerfpilotError(f"cannot write {path}: it is a directory", hint="give a file name")
        _check_writable(path, parent)


def _check_writable(path: Path, parent: Path) -> None:
    """Create (and remove) a file beside ``path``: permission bits say nothing for root, and
    a read-only mount or a full quota only shows when something is written."""
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".perfpilot-write-check-"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise PerfpilotError(f"cannot write {path}: {exc.strerror or exc}",
                             hint="choose a folder you can write to (checked before the target runs)") from None


def write_outputs(profile: Profile, output: Path, html: Path | None, speedscope: Path | None,
                  collapsed: Path | None, console: Console) -> bool:
    """Write the Profile and the exports asked for; False when an export failed."""
    from perfpilot.profilers.renderers.collapsed import NoStacksError

    _write_file(lambda p, path: p.save(path), profile, output)
    written = [str(output)]
    ok = True
    # The target already ran: every other file is still written, then the exit code says so.
    for kind, path in (("html", html), ("speedscope", speedscope), ("collapsed", collapsed)):
        if path is None:
            continue
        try:
            written += write_renderings(profile, **{kind: path})
        except NoStacksError as exc:
            console.print(f"[yellow]perfpilot: {path} not written: {exc}[/]")
        except PerfpilotError as exc:
            console.print(f"[red]perfpilot: error: {exc}[/]", soft_wrap=True)  # one line, never wrapped
            ok = False
        except Exception as exc:  # noqa: BLE001 - a renderer's bug must not lose the Profile already written
            console.print(f"[red]perfpilot: error: {path} not written: {type(exc).__name__}: {exc}[/]", soft_wrap=True)
            ok = False
    console.print(f"[dim]wrote {', '.join(written)}[/]")
    return ok


def _check_target_flags(pid: int | None, command: tuple[str, ...], duration: str | None, imports: bool,
                        count_instructions: bool) -> None:
    """A usage error for flags that do not go with the target given (a COMMAND or --pid)."""
    if pid is not None and command:
        raise click.UsageError("give either a COMMAND or --pid, not both")
    if pid is None and not command:
        raise click.UsageError("nothing to profile: give a command after --, or --pid")
    if duration is not None and pid is None:
        raise click.UsageError("--duration only applies with --pid")
    if imports and pid is not None:
        raise click.UsageError("--imports needs a command to launch (import times are printed at start-up)")
    if count_instructions and pid is not None:
        raise click.UsageError("--instructions needs a command to launch (a counting run starts it afresh)")


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-o", "--output", type=click.Path(path_type=Path), default=DEFAULT_OUTPUT, show_default=True,
              help="Where to write the Profile JSON.")
@click.option("--pid", type=int, default=None, help="Attach to a running process (and its descendants).")
@click.option("--duration", default=None, metavar="DURATION", help="With --pid: how long to observe (default: until it exits).")
@collector_options
@click.option("--timeout", default=None, metavar="DURATION", help="Kill the target after this long.")
@click.option("--stacks/--no-stacks", default=None, help="Sample Python stacks with py-spy (default on).")
@click.option("--rate", type=int, default=None, help="Stack sampling rate in Hz (default 100).")
@click.option("--subprocesses/--no-subprocesses", default=None, help="Sample stacks of child processes too (default on).")
@click.option("--native", is_flag=True, default=None, help="Include native (C/C++) frames in stacks.")
@click.option("--imports", is_flag=True, default=False,
              help="Python targets: report the slowest imports (runs with -X importtime).")
@click.option("--instructions", "count_instructions", is_flag=True, default=False,
              help="Also count user-space instructions of the whole process tree, in a second, separate run "
                   "(hardware counters, or valgrind: ~50x slower). Adds summary keys instructions, instructions_source.")
@click.option("--html", type=click.Path(path_type=Path), default=None, help="Also write a self-contained HTML report.")
@click.option("--speedscope", type=click.Path(path_type=Path), default=None, help="Also write a speedscope JSON file.")
@click.option("--collapsed", type=click.Path(path_type=Path), default=None, help="Also write collapsed stacks (flamegraph.pl).")
@click.option("--live/--no-live", default=None,
              help="A live status line on stderr. Default: on only when the target's output does not go to "
                   "the same terminal (its lines would be spliced into the status line).")
@click.option("-q", "--quiet", is_flag=True, help="No live line and no summary.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def profile(output: Path, pid: int | None, duration: str | None, config_file: Path | None, interval: str | None,
            plugins: str | None, disable: str | None, timeout: str | None, stacks: bool | None, rate: int | None,
            subprocesses: bool | None, native: bool | None, imports: bool, count_instructions: bool, html: Path | None,
            speedscope: Path | None, collapsed: Path | None, live: bool | None, quiet: bool,
            command: tuple[str, ...]) -> None:
    """Run COMMAND under every available collector and write a Profile.

    \b
      perfpilot profile -o run.json -- python app.py --arg
      perfpilot profile --pid 1234 --duration 30s -o run.json

    The target's output passes through untouched and its exit code becomes
    perfpilot's. Ctrl-C stops the target and still writes the Profile.
    """
    from perfpilot.units import parse_duration

    console = Console(stderr=True)
    _check_target_flags(pid, command, duration, imports, count_instructions)
    settings = settings_from(config_file, interval=interval, plugins=plugins, disable=disable, timeout=timeout,
                             stacks=stacks, rate=rate, subprocesses=subprocesses, native=native)
    if settings.rate <= 0:
        raise click.BadParameter(f"must be a positive number of Hz, got {settings.rate}", param_hint="--rate")
    if live is None:
        live = not sys.stdout.isatty()
    line = LiveLine(console) if (console.is_terminal and live and not quiet) else None
    from perfpilot.registry import build_plugin_manager

    options = RunOptions(on_tick=line.update if line else None, claim_unseen_orphans=True,
                         plugin_set=build_plugin_manager())
    argv = list(command)
    seconds = parse_duration(duration, name="--duration") if duration is not None else None
    if count_instructions:
        from perfpilot.profilers import instructions

        instructions.choose_source()  # unavailable: say so before the timed run, not after
    check_output_dirs(output, html, speedscope, collapsed)
    capture = None
    if imports:
        from perfpilot.profilers import imports as import_times

        capture = import_times.prepare(argv, options)
        argv, options = capture.argv, capture.options

    interrupted = False
    result: Profile | None = None
    try:
        if line:
            line.__enter__()
        try:
            if pid is not None:
                result = profile_pid(pid, seconds, settings, options)
            else:
                result = profile_command(argv, settings, options)
        finally:
            if line:
                line.__exit__(None, None, None)
    except ProfileInterrupted as exc:
        result = exc.profile
        interrupted = True
    finally:
        if capture is not None:
            capture.finish(result)
    assert result is not None
    if count_instructions and not interrupted:
        if not quiet:
            console.print(f"[dim]perfpilot: counting instructions in a separate run ({instructions.choose_source()})[/]")
        line_ = instructions.count_into(result, list(command), cwd=options.cwd)
        if not quiet:
            console.print(line_)
    exports_ok = write_outputs(result, output, html, speedscope, collapsed, console)
    if not quiet:
        terminal.render(result, console)
    elif result.annotations.get("stacks_note"):
        console.print(f"[yellow]stacks: {result.annotations['stacks_note']}[/]")
    if interrupted:
        console.print("[yellow]interrupted: target stopped, profile written[/]")
        sys.exit(130)
    code = result.target.get("exit_code")
    # The target's exit code wins; a clean run whose requested export failed still fails.
    sys.exit(code or (0 if exports_ok else EXPORT_FAILED))
