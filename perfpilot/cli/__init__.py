"""The ``perfpilot`` command. One module per subcommand, imported only when used so
that start-up stays fast (``perfpilot profile`` must not pay for the optimiser)."""

from __future__ import annotations

import importlib
import sys
from typing import Any, NoReturn

import click

from perfpilot import __version__
from perfpilot.errors import EXIT_PERFPILOT_FAILURE, PerfpilotError

# name -> (module, attribute, one-line help shown by --help without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "profile": ("perfpilot.cli.profile", "profile", "Run a command (or attach to a PID) and record a Profile."),
    "report": ("perfpilot.cli.report", "report", "Render a saved Profile: terminal, HTML, speedscope, collapsed stacks."),
    "compare": ("perfpilot.cli.compare", "compare", "Compare two commands or two sets of Profiles with statistics."),
    "optimize": ("perfpilot.cli.optimize", "optimize", "Propose, test and verify changes; keep only what is proven better."),
    "daemon": ("perfpilot.cli.daemon", "daemon", "Continuous telemetry with Prometheus /metrics and a SQLite store."),
    "plugins": ("perfpilot.cli.plugins", "plugins", "List plugins and collectors, available or not, and why."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr, _help = entry
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                raise click.UsageError(f"`perfpilot {cmd_name}` is not available in this build") from None
            raise
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_m, _a, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="perfpilot")
def cli() -> None:
    """perfpilot: measure what a program really costs (CPU, GPU, memory, energy, I/O,
    and where the time goes), and keep only the changes proven better.

    Exit codes: the target's own code for `profile`; 125 when perfpilot fails, 126 when
    the command cannot be executed, 127 when it is not found, 128+N when the target is
    killed by signal N, 2 for usage errors.
    """


def fail(message: str, exit_code: int = EXIT_PERFPILOT_FAILURE) -> NoReturn:
    click.echo(f"perfpilot: error: {message}", err=True)
    sys.exit(exit_code)


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="perfpilot", standalone_mode=True)
    except PerfpilotError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        click.echo("perfpilot: interrupted", err=True)
        sys.exit(130)
