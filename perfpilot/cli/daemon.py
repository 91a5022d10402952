"""``perfpilot daemon``: continuous telemetry, hot spots and findings for a server.

``perfpilot daemon`` alone runs the daemon in the foreground (systemd runs it so, see
examples/systemd/perfpilot.service). ``status``, ``query`` and ``findings`` read the
database the daemon writes (read-only, safe while it runs). ``hotspots --from URL ...``
(perfpilot/cli/daemon_hotspots.py) merges several running daemons' hot spots.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

import click
from rich.console import Console
from rich.table import Table

from perfpilot.config import load_settings

T = TypeVar("T")


def _settings_and_config(config_file: Path | None, overrides: dict[str, Any],
                         settings_overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    from perfpilot.agent.daemon.config import daemon_config

    settings = load_settings(config_file=config_file, overrides=settings_overrides)
    origin = f"{settings.source} [daemon]" if settings.source else "daemon"
    return settings, daemon_config(settings.daemon, overrides, origin=origin)


def _proposer(settings: Any, plugin_set: Any) -> tuple[Any, str]:
    """The optimiser's ``llm`` proposer with the configured backend (its construction
    errors -- unknown backend, no API key, no replies file -- are the user's to fix now,
    not at the first finding)."""
    from perfpilot.agent.daemon.config import PROPOSE_NEEDS_BACKEND
    from perfpilot.agent.proposers import choose_proposer
    from perfpilot.errors import ConfigError

    if not settings.backend:
        raise ConfigError(PROPOSE_NEEDS_BACKEND)
    if settings.mock_replies and not Path(settings.mock_replies).is_absolute() and settings.source:
        settings = settings.replace(mock_replies=str(Path(settings.source).parent / settings.mock_replies))
    proposer, description = choose_proposer(settings, plugin_set, "llm")
    return proposer, description


def _api_keys() -> list[str]:
    import os

    from perfpilot.agent.backends.openai_backend import KEY_VARIABLES

    return [os.environ[name] for name in KEY_VARIABLES if os.environ.get(name)]


def _collectors(settings: Any, plugin_set: Any) -> tuple[list[Any], list[str]]:
    """Collector instances for host telemetry, and why any are missing (shown as degraded)."""
    instances = []
    problems = [f"plugin {name} not loaded: {error}" for name, error in plugin_set.load_errors.items()]
    for name, entry in plugin_set.collectors(only=settings.plugins or None,
                                             disable=settings.disable_plugins).items():
        try:
            instances.append(entry.factory(settings))
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the daemon
            problems.append(f"collector {name} skipped: {type(exc).__name__}: {exc}")
    return instances, problems


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="Config file whose [daemon] table configures the daemon (e.g. /etc/perfpilot.toml).")
@click.option("--watch", "watch", multiple=True, metavar="SELECTOR",
              help="Process(es) to watch: name:NAME, cmdline:REGEX, pid:N or top:N. Repeatable.")
@click.option("--interval", default=None, metavar="DURATION", help="Sampling interval (default 1s).")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database (default /var/lib/perfpilot/perfpilot.db as root, else ~/.local/state/...).")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Where /metrics and the JSON API listen (default 127.0.0.1:10464).")
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="File holding the bearer token (required to listen off loopback).")
@click.option("--flush-interval", default=None, metavar="DURATION",
              help="Batched writes: at most this much data is lost on a crash (default 5s).")
@click.option("--max-db-size", "max_db_bytes", default=None, metavar="SIZE",
              help="Bound on the database's disk use, e.g. 512MiB (oldest data goes first).")
@click.option("--snapshots/--no-snapshots", default=None, help="Periodic py-spy snapshots (default on).")
@click.option("--propose/--no-propose", default=None,
              help="Send each finding's hot spots to the LLM proposer; proposals are stored, never applied.")
@click.option("--propose-every", default=None, metavar="DURATION",
              help="At most one proposal per finding kind and process this often (default 1h).")
@click.option("--backend", default=None, help="LLM backend for --propose: openai or mock.")
@click.option("--model", default=None, help="Model name for the backend (default gpt-4.1).")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
@click.option("--mock-replies", default=None, type=click.Path(path_type=Path),
              help="JSON list of replies for --backend mock.")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.pass_context
def daemon(ctx: click.Context, config_file: Path | None, watch: tuple[str, ...], interval: str | None,
           db: Path | None, listen: str | None, token_file: Path | None, flush_interval: str | None,
           max_db_bytes: str | None, snapshots: bool | None, propose: bool | None, propose_every: str | None,
           backend: str | None, model: str | None, base_url: str | None, mock_replies: Path | None,
           verbose: bool) -> None:
    """Run the telemetry daemon in the foreground (SIGTERM stops it cleanly).

    \b
      perfpilot daemon --config /etc/perfpilot.toml
      perfpilot daemon --watch name:gunicorn --watch pid:1234 --interval 1s --db /var/lib/perfpilot/pp.db
      perfpilot daemon status | query --since 1h --metric cpu.utilization_pct | findings | proposals

    Serves Prometheus /metrics, /healthz and a JSON API (/api/latest, /api/hotspots,
    /api/findings, /api/proposals) on 127.0.0.1:10464 unless --listen says otherwise.

    With --propose (and a backend: --backend openai|mock), each finding's hot spots go to
    the optimiser's LLM proposer; what it proposes is stored and listed by
    `perfpilot daemon proposals`, never applied.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file
    ctx.obj["db"] = db
    if ctx.invoked_subcommand is not None:
        return
    from perfpilot.agent.daemon.service import Daemon, configure_logging

    from perfpilot.registry import build_plugin_manager

    settings, config = _settings_and_config(config_file, {
        "watch": watch, "interval": interval, "db": db, "listen": listen, "token_file": token_file,
        "flush_interval": flush_interval, "max_db_bytes": max_db_bytes, "snapshots": snapshots,
        "propose": propose, "propose_every": propose_every,
    }, {"backend": backend, "model": model, "base_url": base_url,
        "mock_replies": str(mock_replies.resolve()) if mock_replies else None})
    configure_logging(verbose)
    plugin_set = build_plugin_manager()
    proposer, description = _proposer(settings, plugin_set) if config.propose else (None, "")
    instances, problems = _collectors(settings, plugin_set)
    service = Daemon(config, collectors=instances, problems=problems, proposer=proposer, backend=description,
                     budget_tokens=settings.context_tokens, secrets=_api_keys() if config.propose else [])
    sys.exit(service.run())


def _resolve(ctx: click.Context, config_file: Path | None, db: Path | None) -> Any:
    config_file = config_file or ctx.obj.get("config_file")
    db = db or ctx.obj.get("db")
    _settings, config = _settings_and_config(config_file, {"db": db})
    return config


def _since(text: str) -> float:
    from perfpilot.agent.daemon.config import parse_span

    return parse_span(text, name="--since")


def _read(config: Any, read: Callable[[Any], T]) -> T:
    """What ``read(store)`` returns from the daemon's database, opened read-only for it."""
    from perfpilot.agent.daemon.store import Store

    store = Store(config.db, readonly=True).open()
    try:
        return read(store)
    finally:
        store.close()


def _table(*columns: str, right: tuple[str, ...] = ()) -> Table:
    table = Table(box=None, padding=(0, 2))
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _fetch_health(config: Any, listen: str) -> dict[str, Any] | None:
    from perfpilot.agent.daemon.config import join_listen, split_listen

    host, port = split_listen(listen)
    host = "127.0.0.1" if host in {"0.0.0.0", "::"} else host  # a wildcard bind answers on loopback
    url = f"http://{join_listen(host, port)}/healthz"
    request = urllib.request.Request(url)
    try:
        token = config.resolved_token()
    except Exception:  # noqa: BLE001 - status still works without the token
        token = None
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=1.5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except (ValueError, OSError):
            return {"status": f"HTTP {exc.code}"}
    except (OSError, ValueError):
        return None


@daemon.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="Config file.")
@click.option("--db", type=click.Path(path_type=Path), default=None, help="The daemon's database.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def status(ctx: click.Context, config_file: Path | None, db: Path | None, as_json: bool) -> None:
    """Is the daemon running, what does its database hold."""
    config = _resolve(ctx, config_file, db)
    summary = _read(config, lambda store: store.summary())
    # the daemon that writes this database recorded where it listens; the config's address
    # is the fallback (a database from before that record, or a daemon moved since)
    tried = list(dict.fromkeys(a for a in (summary.get("listen"), config.listen) if a))
    health, listen = None, tried[0]
    for listen in tried:
        health = _fetch_health(config, listen)
        if health is not None:
            break
    if as_json:
        click.echo(json.dumps({"daemon": health, "listen": listen, "store": summary}, indent=1, default=str))
        return
    console = Console()
    if health is None:
        console.print(f"daemon: [yellow]not reachable[/] at {' or '.join(tried)}")
    else:
        console.print(f"daemon: [green]{health.get('status')}[/] at {listen}, pid {health.get('pid')}, up "
                      f"{health.get('uptime_s', 0):.0f}s, {health.get('ticks')} ticks, "
                      f"{health.get('tick_errors')} tick errors")
        for problem in (health.get("capabilities") or {}).get("missing", []):
            console.print(f"  degraded: {problem}")
    console.print(f"database: {summary['path']} ({summary['file_bytes'] / 2**20:.1f} MiB, {summary['series']} series)")
    console.print(f"  raw samples {_when(summary['raw_from'])} .. {_when(summary['raw_to'])}; "
                  f"minute means from {_when(summary['rollups_from'])}")
    console.print(f"  watched: {', '.join(e for e in summary['entities'] if e not in {'host', 'collectors'}) or '-'}")
    console.print(f"  active findings: {summary['active_findings']}")


@daemon.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="Config file.")
@click.option("--db", type=click.Path(path_type=Path), default=None, help="The daemon's database.")
@click.option("--since", default="1h", show_default=True, metavar="DURATION", help="How far back.")
@click.option("--metric", default=None, help="Metric name, e.g. cpu.utilization_pct (omit to list them).")
@click.option("--watch", "entity", default=None, metavar="SELECTOR",
              help="Only this watch (e.g. name:gunicorn), or host / collectors.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
def query(ctx: click.Context, config_file: Path | None, db: Path | None, since: str, metric: str | None,
          entity: str | None, as_json: bool) -> None:
    """Print stored values of a metric (raw samples, then 1-minute means for older data)."""
    config = _resolve(ctx, config_file, db)
    seconds = _since(since)
    if metric is None:
        names = _read(config, lambda store: store.metrics())
        for e, m in names:
            if entity is None or e == entity:
                click.echo(json.dumps({"entity": e, "metric": m}) if as_json else f"{e}\t{m}")
        return
    rows = _read(config, lambda store: store.query(metric, time.time() - seconds, entity=entity))
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo(f"no values of {metric} in the last {since}", err=True)
        return
    table = _table("time", "watch", "value", "kind", right=("value",))
    for row in rows[-2000:]:
        table.add_row(_when(row["ts"]), row["entity"], f"{row['value']:.6g}", row["kind"])
    Console().print(table)


@daemon.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="Config file.")
@click.option("--db", type=click.Path(path_type=Path), default=None, help="The daemon's database.")
@click.option("--since", default="7d", show_default=True, metavar="DURATION", help="How far back.")
@click.option("--active", is_flag=True, help="Only findings that still hold.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def findings(ctx: click.Context, config_file: Path | None, db: Path | None, since: str, active: bool,
             as_json: bool) -> None:
    """Findings: CPU saturation, memory growth, idle GPU, I/O wait, CPU steal, restarts."""
    config = _resolve(ctx, config_file, db)
    seconds = _since(since)
    rows = _read(config, lambda store: store.findings(since=time.time() - seconds, active_only=active))
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    if not rows:
        click.echo(f"no findings in the last {since}")
        return
    table = _table("kind", "watch", "state", "first seen", "last seen", "message", "proposal")
    for row in rows:
        proposal = row.get("proposal") or {}
        table.add_row(row["kind"], row["entity"], "active" if row["active"] else "resolved",
                      _when(row["first_seen"]), _when(row["last_seen"]), row["message"] or "",
                      f"#{proposal.get('id')} {proposal.get('status')}" if proposal else "-")
    Console().print(table)


@daemon.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="Config file.")
@click.option("--db", type=click.Path(path_type=Path), default=None, help="The daemon's database.")
@click.option("--since", default="7d", show_default=True, metavar="DURATION", help="How far back.")
@click.option("--id", "proposal_id", type=int, default=None, help="Show one proposal in full (diffs, what was sent).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def proposals(ctx: click.Context, config_file: Path | None, db: Path | None, since: str, proposal_id: int | None,
              as_json: bool) -> None:
    """Proposals made for findings with --propose (stored for a person to judge; never applied)."""
    from rich.markup import escape

    from perfpilot.errors import PerfpilotError

    config = _resolve(ctx, config_file, db)
    seconds = _since(since)
    if proposal_id is not None:
        rows = _read(config, lambda store: store.proposals(proposal_id=proposal_id, with_request=True))
        if not rows:
            raise PerfpilotError(f"no proposal #{proposal_id} in {config.db}",
                                 hint="list them with `perfpilot daemon proposals`")
    else:
        rows = _read(config, lambda store: store.proposals(since=time.time() - seconds))
    if as_json:
        click.echo(json.dumps(rows[0] if proposal_id is not None else rows, indent=1, default=str))
        return
    console = Console()
    if proposal_id is not None:
        row = rows[0]
        console.print(f"proposal #{row['id']} ({row['status']}, {escape(row['backend'] or '?')}) at "
                      f"{_when(row['ts'])} for {row['kind']} on {escape(row['entity'])}: "
                      f"{escape(row['finding'] or '')}")
        console.print(f"process: pid {row['pid']} {escape(row['process'] or '')}")
        if row["error"]:
            console.print(f"[red]{escape(row['error'])}[/]")
        for number, item in enumerate(row["proposals"], 1):
            console.print(f"\n[bold]{number}. {escape('[' + str(item.get('kind')) + ']')} "
                          f"{escape(item.get('title') or '')}[/]")
            if item.get("rationale"):
                console.print(escape(item["rationale"]))
            detail = item.get("diff") or (f"{item.get('name') or item.get('key') or item.get('knob')} = "
                                          f"{item.get('value')!r}" + (f" in {item['file']}" if item.get("file") else ""))
            console.print(escape(detail), highlight=False)
        console.print("\n(never applied: try it with `perfpilot optimize`, which measures before it keeps anything)")
        return
    if not rows:
        click.echo(f"no proposals in the last {since}")
        return
    table = _table("id", "time", "finding", "watch", "process", "status", "proposals / error")
    for row in rows:
        what = "; ".join(p.get("title") or p.get("kind", "") for p in row["proposals"]) or row["error"] or ""
        table.add_row(str(row["id"]), _when(row["ts"]), row["kind"], escape(row["entity"]),
                      escape((row["process"] or "")[:60]), row["status"], escape(what[:160]))
    console.print(table)


def _register_hotspots() -> None:
    # its own module (one module per command); registered here so it is `perfpilot daemon hotspots`
    from perfpilot.cli.daemon_hotspots import hotspots

    daemon.add_command(hotspots)


_register_hotspots()
