"""The daemon's settings: the ``[daemon]`` table of perfpilot's config, then flags.

``perfpilot daemon --config /etc/perfpilot.toml`` reads the ``[daemon]`` table of that
file (the same :class:`perfpilot.config.Settings` every command uses, so top-level keys
such as ``plugins``/``disable_plugins`` apply too)::

    [daemon]
    watch = ["name:gunicorn", "cmdline:celery.*worker", "pid:1234", "top:5"]
    interval = "1s"                   # sampling interval
    db = "/var/lib/perfpilot/perfpilot.db"
    listen = "127.0.0.1:10464"        # off-loopback needs token or token_file
    token_file = "/etc/perfpilot/token"
    flush_interval = "5s"             # batched writes: at most this much is lost on a crash
    raw_retention = "24h"             # raw samples, then 1-minute means ...
    rollup_retention = "30d"          # ... kept this long
    max_db_bytes = "512MiB"           # hard bound on the database (oldest data goes first)

    propose = false                   # findings' hot spots to the LLM proposer (stored, never applied)
    propose_every = "1h"              # at most one proposal per finding kind and process per hour

    [daemon.snapshots]                # py-spy (needs ptrace: root or CAP_SYS_PTRACE)
    every = "60s"
    duration = "2s"
    rate = 50

    [daemon.findings]
    window = "60s"
    cpu_saturation_pct = 90

Unknown keys are an error naming the key, like everywhere else in perfpilot. Durations,
sizes and percentages follow :mod:`perfpilot.units` (a bare number is seconds or bytes;
a ``*_pct`` key takes ``90``, ``"90%"`` or ``0.9``).

Default port 10464: the exporter range 9100-9999 is fully allocated on Prometheus's
port-allocation page, 9464 is OpenTelemetry's Prometheus exporter default, and the issue
rules out node_exporter 9100, process-exporter 9256, dcgm-exporter 9400, Netdata 19999,
Pyroscope 4040 and Parca 7071. 10464 is below Linux's ephemeral range (32768+) and not
a well-known default of any exporter or Kubernetes component (those sit at 10250-10259).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from perfpilot.errors import ConfigError
from perfpilot.units import check_interval, parse_bool, parse_duration, parse_percent, parse_size

DEFAULT_PORT = 10464
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
TOKEN_ENV = "PERFPILOT_DAEMON_TOKEN"
PROPOSE_NEEDS_BACKEND = (
    "--propose needs an LLM backend: set backend = \"openai\" (plus model, base_url and PERFPILOT_API_KEY) in "
    "the config, or pass --backend openai --model NAME [--base-url URL], or --backend mock --mock-replies FILE"
)

# `perfpilot daemon query --since 7d` imports it under this name; days and weeks, which retention needs,
# are part of perfpilot.units' one grammar.
parse_span = parse_duration


def default_db_path() -> Path:
    """/var/lib/perfpilot as root (the systemd unit's StateDirectory), else XDG state."""
    if os.geteuid() == 0:
        return Path("/var/lib/perfpilot/perfpilot.db")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "perfpilot" / "perfpilot.db"


@dataclass
class SnapshotConfig:
    enabled: bool = True
    every: float = 60.0
    duration: int = 2  # py-spy takes whole seconds
    rate: int = 50
    keep: int = 10  # snapshots per process in the rolling hot spots
    max_per_round: int = 4  # processes snapshotted per round (bounded cost)
    top: int = 20  # hot spots kept per snapshot


@dataclass
class FindingConfig:
    window: float = 60.0
    cpu_saturation_pct: float = 90.0
    memory_window: float = 600.0
    memory_min_growth_bytes: int = 16 * 1024 * 1024
    memory_min_r2: float = 0.8
    iowait_pct: float = 20.0
    steal_pct: float = 10.0
    gpu_idle_pct: float = 5.0
    gpu_min_memory_bytes: int = 256 * 1024 * 1024
    restarts: int = 3
    restarts_window: float = 600.0


@dataclass
class DaemonConfig:
    watch: list[str] = field(default_factory=list)
    interval: float = 1.0
    db: Path = field(default_factory=default_db_path)
    listen: str = DEFAULT_LISTEN
    token: str | None = None
    token_file: Path | None = None
    flush_interval: float = 5.0
    raw_retention: float = 24 * 3600.0
    rollup_retention: float = 30 * 24 * 3600.0
    rollup_step: float = 60.0
    max_db_bytes: int = 512 * 1024 * 1024
    maintenance_every: float = 60.0
    max_processes_per_watch: int = 256
    top_every: float = 5.0
    propose: bool = False
    propose_every: float = 3600.0  # at most one proposal per finding kind and process this often
    snapshots: SnapshotConfig = field(default_factory=SnapshotConfig)
    findings: FindingConfig = field(default_factory=FindingConfig)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    def resolved_token(self) -> str | None:
        if self.token:
            return _strong_token(self.token, "daemon token")
        if self.token_file is not None:
            try:
                mode = self.token_file.stat().st_mode
                text = self.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"daemon token_file {self.token_file}: cannot read: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ConfigError(f"daemon token_file {self.token_file} is not UTF-8 text",
                                  hint="write a random token into it: openssl rand -hex 32") from None
            if mode & 0o077:
                # As ssh does with private keys: a secret others can read is no secret.
                raise ConfigError(f"daemon token_file {self.token_file} is readable by other users "
                                  f"(mode {mode & 0o777:o})", hint=f"chmod 600 {self.token_file}")
            if not text:
                raise ConfigError(f"daemon token_file {self.token_file} is empty", hint="write a random token into it")
            return _strong_token(text, f"daemon token_file {self.token_file}")
        value = os.environ.get(TOKEN_ENV) or None
        return _strong_token(value, TOKEN_ENV) if value else None


MIN_TOKEN_CHARS = 16


def _strong_token(token: str, origin: str) -> str:
    """A bearer token short enough to guess is refused, not accepted silently."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{origin}: the token has {len(token)} characters; at least {MIN_TOKEN_CHARS} are needed",
                          hint="use a random one: openssl rand -hex 32")
    return token


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ConfigError(f"daemon listen: expected HOST:PORT like {DEFAULT_LISTEN}, got {listen!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def join_listen(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets: what :func:`split_listen` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _as_number(value: Any, name: str, kind: type) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{name}: must not be negative, got {value!r}")
    return number


_DURATIONS = {"interval", "flush_interval", "propose_every", "raw_retention", "rollup_retention", "rollup_step", "maintenance_every",
              "top_every", "every", "window", "memory_window", "restarts_window"}
_SIZES = {"max_db_bytes", "memory_min_growth_bytes", "gpu_min_memory_bytes"}
_PERCENTS = {"cpu_saturation_pct", "iowait_pct", "steal_pct", "gpu_idle_pct"}


FLAGS_ORIGIN = "command line"
FLAG_NAMES = {"max_db_bytes": "--max-db-size"}  # where a flag's name differs from its key


def _coerce(obj: Any, table: Mapping[str, Any], origin: str) -> None:
    known = {f.name: f for f in fields(obj)}
    for key, value in table.items():
        norm = str(key).replace("-", "_")
        # a flag's error names the flag the user typed, not "command line.max_db_bytes"
        name = FLAG_NAMES.get(norm, f"--{norm.replace('_', '-')}") if origin == FLAGS_ORIGIN else f"{origin}.{key}"
        if norm not in known or norm in {"snapshots", "findings"}:
            raise ConfigError(f"{origin}: unknown key {key!r}", hint=f"known keys: {', '.join(known)}")
        current = getattr(obj, norm)
        if norm in _DURATIONS:
            value = parse_duration(value, name=name)
        elif norm in _SIZES:
            value = parse_size(value, name=name)
        elif norm in _PERCENTS:
            value = parse_percent(value, name=name) * 100.0
        elif norm == "duration":
            value = max(1, round(parse_duration(value, name=name)))
        elif norm == "watch":
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name}: expected a list of selectors like [\"name:gunicorn\"], got {value!r}")
        elif norm in {"db", "token_file"}:
            value = Path(str(value)).expanduser()
        elif isinstance(current, bool):
            value = parse_bool(value, name=name)
        elif isinstance(current, int):
            value = _as_number(value, name, int)
        elif isinstance(current, float):
            value = _as_number(value, name, float)
        elif not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        setattr(obj, norm, value)


def daemon_config(table: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None,
                  origin: str = "daemon") -> DaemonConfig:
    """Build a :class:`DaemonConfig` from a ``[daemon]`` table, then flag overrides."""
    config = DaemonConfig()
    table = dict(table or {})
    snapshots = table.pop("snapshots", None)
    findings = table.pop("findings", None)
    _coerce(config, table, origin)
    for key, sub, target in (("snapshots", snapshots, config.snapshots), ("findings", findings, config.findings)):
        if sub is None:
            continue
        if not isinstance(sub, Mapping):
            raise ConfigError(f"{origin}.{key}: expected a table, got {sub!r}")
        _coerce(target, sub, f"{origin}.{key}")
    flags = {k: v for k, v in (overrides or {}).items() if v is not None and v != ()}
    if "watch" in flags:
        flags["watch"] = list(flags["watch"])
    if "snapshots" in flags:
        config.snapshots.enabled = bool(flags.pop("snapshots"))
    _coerce(config, flags, FLAGS_ORIGIN)
    validate(config)
    return config


def validate(config: DaemonConfig) -> None:
    from perfpilot.agent.daemon.watch import Selector

    split_listen(config.listen)
    for text in config.watch:
        Selector(text)  # a typo in a selector is an error now, not an empty group later
    check_interval(config.interval, name="daemon interval")
    if config.flush_interval < config.interval:
        # Writing more often than sampling buys nothing and costs fsyncs.
        config.flush_interval = config.interval
    if config.rollup_step < 1:
        raise ConfigError(f"daemon rollup_step must be at least 1s, got {config.rollup_step}")
    if config.max_db_bytes < 64 * 1024:
        raise ConfigError(f"daemon max_db_bytes must be at least 64KiB, got {config.max_db_bytes}",
                          hint="the schema alone needs a few pages")
    if config.snapshots.rate <= 0:
        raise ConfigError("daemon.snapshots.rate must be a positive number of Hz")
    if not is_loopback(config.host) and not config.resolved_token():
        raise ConfigError(
            f"daemon listen {config.listen} is not loopback: a token is required",
            hint=f"set token_file in [daemon], --token-file, or {TOKEN_ENV}; or listen on 127.0.0.1",
        )
