"""Fleet hot spots: several daemons' rolling py-spy stacks merged into one view.

Each daemon serves its processes' merged snapshots as collapsed stacks
(``/api/hotspots?stacks=1``). :func:`fetch_all` asks every daemon at once (one slow or
refusing daemon costs its own timeout, not the others'), and :func:`merge` adds the
stacks up: the ranked table is computed over the code frames alone, so the same function
on several hosts is one row (with each host's share), while the flame graph's stacks
start with ``host <label>`` and ``pid <n> <name>`` frames, so it is labelled by host and
process. Every sample a daemon reported is in the merge once (a process matched by two
watches is listed twice by its daemon and counted once), so the per-host counts add up
to the total.

No new server: the daemons are asked directly, on demand. For stacks kept over days and
queried by time range, a continuous-profiling backend (Pyroscope, Parca) is the tool.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfpilot.agent.daemon.config import TOKEN_ENV
from perfpilot.errors import PerfpilotError
from perfpilot.profilers import hotspots as hotspot_model
from perfpilot.profilers.profile import Profile


class SourceError(PerfpilotError):
    """One daemon could not be read (unreachable, refused the token, not a daemon)."""


@dataclass(frozen=True)
class Source:
    """A daemon to ask: its base URL, the label shown for it, and where its token is."""

    url: str
    label: str
    token_from: str | None = None  # "file:PATH" or "env:NAME"


@dataclass
class DaemonStacks:
    source: Source
    rate_hz: float | None
    processes: list[dict[str, Any]] = field(default_factory=list)  # pid, name, watches, samples

    @property
    def samples(self) -> int:
        return sum(p["samples"] for p in self.processes)


def parse_source(text: str, default_token: str | None = None) -> Source:
    """``URL``, ``URL@TOKEN_FILE`` or ``URL@env:NAME``: a daemon and, optionally, its own
    token (after the last ``@``; daemon URLs carry no user name, so ``@`` is free)."""
    url, at, token = text.strip().rpartition("@")
    if not at:
        url, token = text.strip(), ""
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.username:
        raise PerfpilotError(f"--from {text!r}: expected a daemon URL like http://web1:10464, optionally "
                             "followed by @TOKEN_FILE or @env:NAME")
    if at and not token:
        raise PerfpilotError(f"--from {text!r}: nothing after '@'", hint="give a token file: URL@/path/to/token")
    token_from = (token if token.startswith("env:") else f"file:{token}") if token else default_token
    # host:port names a daemon; a path too when daemons sit behind one reverse proxy
    return Source(url=url.rstrip("/"), label=parts.netloc + parts.path.rstrip("/"), token_from=token_from)


def default_token(token_file: Path | None) -> str | None:
    """Where a daemon without its own ``@`` token gets one: --token-file, else the daemon's
    own environment variable, else none."""
    if token_file is not None:
        return f"file:{token_file}"
    return f"env:{TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else None


def _token(source: Source) -> str | None:
    if source.token_from is None:
        return None
    kind, _, where = source.token_from.partition(":")
    if kind == "env":
        value = os.environ.get(where, "").strip()
        if not value:
            raise SourceError(f"{source.label}: environment variable {where} holds no token")
        return value
    try:
        value = Path(where).expanduser().read_text().strip()
    except OSError as exc:
        raise SourceError(f"{source.label}: cannot read token file {where}: {exc.strerror or exc}") from None
    if not value:
        raise SourceError(f"{source.label}: token file {where} is empty")
    return value


def fetch(source: Source, *, watch: str | None = None, timeout: float = 10.0) -> DaemonStacks:
    """One daemon's processes and stacks; :class:`SourceError` with a one-line reason."""
    query = {"stacks": "1", **({"watch": watch} if watch else {})}
    request = urllib.request.Request(f"{source.url}/api/hotspots?{urllib.parse.urlencode(query)}")
    token = _token(source)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        hint = ""
        if exc.code == 401:
            hint = (" (missing or wrong bearer token: give this daemon's token with "
                    f"--from {source.url}@TOKEN_FILE or --token-file)")
        raise SourceError(f"{source.label}: HTTP {exc.code} {exc.reason}{hint}") from None
    except urllib.error.URLError as exc:
        raise SourceError(f"{source.label}: cannot connect to {source.url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a body that is not JSON
        raise SourceError(f"{source.label}: {source.url} gave no usable answer: {exc}") from None
    return _parse(source, body)


def _parse(source: Source, body: Any) -> DaemonStacks:
    if not isinstance(body, dict) or not isinstance(body.get("hotspots"), dict):
        raise SourceError(f"{source.label}: {source.url}/api/hotspots is not a perfpilot daemon's answer")
    by_pid: dict[int, dict[str, Any]] = {}
    for watch, processes in body["hotspots"].items():
        for proc in processes:
            if "stacks" not in proc:
                raise SourceError(f"{source.label}: this daemon does not serve stacks",
                                  hint="upgrade perfpilot there; its /api/hotspots lacks ?stacks=1")
            entry = by_pid.setdefault(int(proc["pid"]), {
                "pid": int(proc["pid"]), "name": str(proc.get("name") or ""), "watches": [],
                "stacks": Counter({str(k): int(v) for k, v in proc["stacks"].items()})})
            entry["watches"].append(watch)  # one process under two watches is still one process
    processes = []
    for entry in by_pid.values():
        entry["samples"] = sum(entry["stacks"].values())
        processes.append(entry)
    rate = body.get("rate_hz")
    return DaemonStacks(source, float(rate) if rate else None, sorted(processes, key=lambda p: -p["samples"]))


def fetch_all(sources: list[Source], *, watch: str | None = None,
              timeout: float = 10.0) -> tuple[list[DaemonStacks], list[SourceError]]:
    """Every daemon at once; the ones that answered, in the order given, and the errors.
    A daemon given twice is asked once (its samples must not count twice)."""
    unique: dict[str, Source] = {}
    for source in sources:
        unique.setdefault(source.url, source)
    sources = list(unique.values())
    def one(source: Source) -> DaemonStacks | SourceError:
        try:
            return fetch(source, watch=watch, timeout=timeout)
        except SourceError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(sources)))) as pool:
        results = list(pool.map(one, sources))
    return ([r for r in results if isinstance(r, DaemonStacks)], [r for r in results if isinstance(r, SourceError)])


def _frame_text(text: str) -> str:
    return text.replace(";", ",").replace("\n", " ")  # a frame must not split a collapsed line


@dataclass
class Merged:
    daemons: list[DaemonStacks]
    labelled: Counter[str]  # host and pid frames first: the flame graph's input
    code: Counter[str]  # the code frames alone: the table's input
    by_host: dict[str, Counter[str]]  # host -> function key -> self samples

    @property
    def samples(self) -> int:
        return sum(self.code.values())


def merge(daemons: list[DaemonStacks]) -> Merged:
    labelled: Counter[str] = Counter()
    code: Counter[str] = Counter()
    by_host: dict[str, Counter[str]] = {}
    for daemon in daemons:
        host = daemon.source.label
        own: Counter[str] = Counter()
        for proc in daemon.processes:
            prefix = f"host {_frame_text(host)};pid {proc['pid']} {_frame_text(proc['name'])}".rstrip()
            for stack, count in proc["stacks"].items():
                labelled[f"{prefix};{stack}"] += count
                code[stack] += count
                own[stack] += count
        by_host[host] = hotspot_model.function_counts(own)[0]
    return Merged(daemons, labelled, code, by_host)


def ranked(merged: Merged, top: int = 30) -> list[dict[str, Any]]:
    """Hot spots over every daemon, hottest first, each with ``hosts``: self samples per host."""
    rows = hotspot_model.aggregate(merged.code, top=top, lines_per_function=3, with_source=False)
    for row in rows:
        key = hotspot_model.function_key(row["function"], row["file"])
        row["hosts"] = {host: counts[key] for host, counts in merged.by_host.items() if counts.get(key)}
    return rows


def to_profile(merged: Merged, rows: list[dict[str, Any]]) -> Profile:
    """A Profile holding the merged stacks, for the existing renderers (HTML flame graph,
    speedscope, collapsed). Its stacks' rate is the daemons' if they agree."""
    rates = {d.rate_hz for d in merged.daemons if d.rate_hz}
    labels = ", ".join(d.source.label for d in merged.daemons)
    return Profile(
        target={"command": [f"perfpilot fleet: {labels}"]},
        hotspots=rows,
        stacks={"rate_hz": rates.pop() if len(rates) == 1 else None, "samples": merged.samples,
                "collapsed": dict(merged.labelled)},
        annotations={"fleet": {d.source.label: {"url": d.source.url, "samples": d.samples,
                                                "processes": len(d.processes)} for d in merged.daemons}},
    )
