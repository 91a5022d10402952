"""Settings: ``[tool.perfpilot]`` / ``perfpilot.toml``, then ``PERFPILOT_*``, then flags.

Each source overrides the one before. Unknown keys in a file are an error that names
the key (a typo must never be silently ignored). Durations and percentages are read by
:mod:`perfpilot.units` (``interval = "100ms"``; ``threshold = 2``, ``"2%"`` and ``0.02`` are all 2%). Tables (``knobs``, ``guards``,
``daemon``, ``pytest``) are passed through as dicts and validated by their consumers.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from perfpilot.errors import ConfigError
from perfpilot.units import check_interval, parse_bool, parse_duration, parse_percent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "PERFPILOT_"
# Environment variables that are not settings (read elsewhere, never an error).
ENV_NOT_SETTINGS = {"PERFPILOT_LOAD_PLUGINS", "PERFPILOT_DISABLE_PLUGINS", "PERFPILOT_API_KEY"}

def _as_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise ConfigError(f"{name}: expected a list or comma-separated string, got {value!r}")


@dataclass
class Settings:
    """Every top-level setting. Field metadata ``kind`` says how a string is parsed."""

    # what to run
    run: str | None = None
    test: str | None = None
    cwd: str | None = None
    timeout: float | None = field(default=None, metadata={"kind": "duration"})
    # sampling
    interval: float = field(default=0.1, metadata={"kind": "duration"})
    stacks: bool = field(default=True, metadata={"kind": "bool"})
    rate: int = field(default=100, metadata={"kind": "int"})
    subprocesses: bool = field(default=True, metadata={"kind": "bool"})
    native: bool = field(default=False, metadata={"kind": "bool"})
    plugins: list[str] = field(default_factory=list, metadata={"kind": "list"})
    disable_plugins: list[str] = field(default_factory=list, metadata={"kind": "list"})
    cpu_tdp_w: float | None = field(default=None, metadata={"kind": "float"})
    # statistics / verification
    runs: int = field(default=10, metadata={"kind": "int"})
    min_runs: int = field(default=5, metadata={"kind": "int"})
    threshold: float | None = field(default=None, metadata={"kind": "percent"})
    confidence: float = field(default=0.95, metadata={"kind": "float"})
    # optimiser
    objective: str = "wall"
    guards: dict[str, Any] = field(default_factory=dict, metadata={"kind": "table"})
    knobs: dict[str, Any] = field(default_factory=dict, metadata={"kind": "table"})
    budget: int = field(default=8, metadata={"kind": "int"})
    time_budget: float | None = field(default=None, metadata={"kind": "duration"})
    max_failures: int = field(default=4, metadata={"kind": "int"})
    protected: list[str] = field(default_factory=list, metadata={"kind": "list"})
    output_check: str = "auto"  # see perfpilot.agent.output_check
    backend: str | None = None
    model: str | None = None
    base_url: str | None = None
    context_tokens: int = field(default=12000, metadata={"kind": "int"})
    mock_replies: str | None = None  # JSON file of scripted replies for the mock backend
    llm_timeout: float = field(default=120.0, metadata={"kind": "duration"})
    llm_retries: int = field(default=3, metadata={"kind": "int"})
    test_timeout: float | None = field(default=None, metadata={"kind": "duration"})
    test_repeats: int = field(default=3, metadata={"kind": "int"})  # test runs per candidate, each its own hash seed
    sandbox: str = "auto"  # auto / on / off: candidates under bubblewrap (perfpilot.agent.sandbox)
    # other modes
    daemon: dict[str, Any] = field(default_factory=dict, metadata={"kind": "table"})
    pytest: dict[str, Any] = field(default_factory=dict, metadata={"kind": "table"})

    # where the file settings came from (not a setting)
    source: str | None = field(default=None, metadata={"kind": "internal"})

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.metadata.get("kind") != "internal"]

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.keys()}


_FIELDS = {f.name: f for f in fields(Settings)}


def _coerce(key: str, value: Any, origin: str) -> Any:
    f = _FIELDS[key]
    kind = f.metadata.get("kind", "str")
    name = f"{origin}: {key}"
    if value is None:
        return None
    if kind == "duration":
        return parse_duration(value, name=name)
    if kind == "percent":
        return parse_percent(value, name=name)
    if kind == "bool":
        return parse_bool(value, name=name)
    if kind == "list":
        return _as_list(value, name)
    if kind == "table":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a table, got {value!r}")
        return dict(value)
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _apply(settings: Settings, values: Mapping[str, Any], origin: str) -> Settings:
    changes: dict[str, Any] = {}
    for key, value in values.items():
        norm = key.replace("-", "_")
        if norm not in _FIELDS or _FIELDS[norm].metadata.get("kind") == "internal":
            raise ConfigError(
                f"{origin}: unknown key {key!r}",
                hint=f"known keys: {', '.join(Settings.keys())}",
            )
        changes[norm] = _coerce(norm, value, origin)
    return dataclasses.replace(settings, **changes)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", hint="fix the file or pass --config") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files must be UTF-8",
                          hint="re-save it as UTF-8 or pass --config") from None


def find_config_file(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest ``perfpilot.toml`` or pyproject with ``[tool.perfpilot]``, upwards."""
    for folder in [start, *start.parents]:
        candidate = folder / "perfpilot.toml"
        if candidate.is_file():
            return candidate, read_toml(candidate)
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            data = read_toml(pyproject)
            table = data.get("tool", {}).get("perfpilot")
            if table is not None:
                return pyproject, table
            # a project root without our table: stop looking further up
            return None
    return None


def file_values(path: Path) -> dict[str, Any]:
    """The settings table of an explicit config file (pyproject or perfpilot.toml)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", hint="check the --config path")
    data = read_toml(path)
    if path.name == "pyproject.toml":
        return dict(data.get("tool", {}).get("perfpilot", {}))
    return data


def env_values(environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_SETTINGS:
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key in _FIELDS and _FIELDS[key].metadata.get("kind") not in {"internal", "table"}:
            values[key] = value
    return values


def load_settings(
    *,
    cwd: Path | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """File, then environment, then ``overrides`` (CLI flags; ``None`` values skipped)."""
    settings = Settings()
    start = (cwd or Path.cwd()).resolve()
    if config_file is not None:
        settings = _apply(settings, file_values(config_file), str(config_file))
        settings.source = str(config_file)
    else:
        found = find_config_file(start)
        if found is not None:
            path, table = found
            origin = f"{path} [tool.perfpilot]" if path.name == "pyproject.toml" else str(path)
            settings = _apply(settings, table, origin)
            settings.source = str(path)
    settings = _apply(settings, env_values(os.environ if environ is None else environ), "environment")
    if overrides:
        settings = _apply(settings, {k: v for k, v in overrides.items() if v is not None}, "command line")
    check_interval(settings.interval)
    return settings
