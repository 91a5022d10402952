"""The user-facing surface of perfpilot's commands: every ``perfpilot`` command and subcommand with its
options, every ``pytest --perfpilot*`` option, and the two entry points, as one JSON-able dict.

``tests/data/cli_surface.json`` holds the surface as released; ``tests/test_cli_surface.py`` compares the
live one with it, so a refactor cannot drop, rename or retype a flag by accident. After a deliberate change:

    .venv/bin/python tests/cli_surface.py --update
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import click

SNAPSHOT = Path(__file__).resolve().parent / "data" / "cli_surface.json"


def _param(param: click.Parameter) -> dict[str, Any]:
    out: dict[str, Any] = {
        "names": sorted(param.opts) + sorted(param.secondary_opts),
        "kind": "argument" if isinstance(param, click.Argument) else "option",
        "type": param.type.name,
        "nargs": param.nargs,
        "multiple": bool(param.multiple),
        "required": bool(param.required),
    }
    if isinstance(param, click.Option):
        out["flag"] = bool(param.is_flag)
        if isinstance(param.type, click.Choice):
            out["choices"] = list(param.type.choices)
        default = param.default
        if type(default).__name__ == "Sentinel":  # click >= 8.2's "no default given"
            default = None
        out["default"] = default if default is None or isinstance(default, (bool, int, float, str)) else repr(default)
    return out


def _walk(command: click.Command, path: str, ctx: click.Context, out: dict[str, Any]) -> None:
    out[path] = sorted((_param(p) for p in command.params), key=lambda p: p["names"])
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{path} {name}: listed but not loadable"
            _walk(sub, f"{path} {name}", click.Context(sub, info_name=name, parent=ctx), out)


def cli_surface() -> dict[str, Any]:
    (script,) = [ep for ep in metadata.entry_points(group="console_scripts") if ep.name == "perfpilot"]
    from perfpilot.cli import cli

    commands: dict[str, Any] = {}
    _walk(cli, "perfpilot", click.Context(cli, info_name="perfpilot"), commands)
    return {"console_script": script.value, "commands": commands}


def pytest_surface() -> dict[str, Any]:
    from _pytest.config.argparsing import Parser

    (plugin,) = [ep for ep in metadata.entry_points(group="pytest11") if ep.name == "perfpilot"]
    parser = Parser(_ispytest=True)
    plugin.load().pytest_addoption(parser)
    options = []
    for group in parser._groups:
        for option in group.options:
            attrs = option.attrs()
            options.append({
                "names": option.names(),
                "group": group.name,
                "dest": attrs.get("dest"),
                "action": attrs.get("action", "store"),
                "type": getattr(attrs.get("type"), "__name__", attrs.get("type")),
                "default": attrs.get("default"),
                "metavar": attrs.get("metavar"),
            })
    return {"pytest11": plugin.value, "options": sorted(options, key=lambda o: o["names"])}


def surface() -> dict[str, Any]:
    """The shape written to the snapshot: console_script, pytest11, commands, pytest_options."""
    cli, plugin = cli_surface(), pytest_surface()
    return {"console_script": cli["console_script"], "pytest11": plugin["pytest11"], "commands": cli["commands"],
            "pytest_options": plugin["options"]}


def dumps(data: dict[str, Any]) -> str:
    """JSON with one line per option, so a deliberate change reads as a one-line diff."""
    lines = ["{"]
    lines.append(f' "console_script": {json.dumps(data["console_script"])},')
    lines.append(f' "pytest11": {json.dumps(data["pytest11"])},')
    lines.append(' "commands": {')
    commands = data["commands"]
    for i, (path, params) in enumerate(sorted(commands.items())):
        rows = ",\n".join(f"   {json.dumps(p, sort_keys=True)}" for p in params)
        lines.append(f'  {json.dumps(path)}: [\n{rows}\n  ]' + ("," if i < len(commands) - 1 else ""))
    lines.append(" },")
    rows = ",\n".join(f"  {json.dumps(o, sort_keys=True)}" for o in data["pytest_options"])
    lines.append(f' "pytest_options": [\n{rows}\n ]')
    lines.append("}")
    return "\n".join(lines) + "\n"


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """The same facts keyed by where they live, for a readable difference."""
    out: dict[str, Any] = {"console_script": data["console_script"], "pytest11": data["pytest11"]}
    for path, params in data["commands"].items():
        out[path] = "(command)"
        for p in params:
            out[f"{path} {'/'.join(p['names'])}"] = p
    for o in data["pytest_options"]:
        out[f"pytest {'/'.join(o['names'])}"] = o
    return out


if __name__ == "__main__":
    text = dumps(surface())
    if sys.argv[1:] == ["--update"]:
        SNAPSHOT.write_text(text)
        print(f"wrote {SNAPSHOT}")
    else:
        sys.stdout.write(text)
