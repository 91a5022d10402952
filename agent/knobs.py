"""Knobs: the settings a target project declares as safe to turn.

Declared in ``[tool.perfpilot.knobs]``, one table per knob, exactly one of ``env``,
``arg`` or ``config``, and ``values``::

    amp         = { env = "TRAIN_AMP", values = ["0", "1"] }
    batch_size  = { arg = "--batch-size", values = [16, 32, 64] }
    compile     = { arg = "--compile", values = [false, true] }        # booleans: a flag, present or not
    num_workers = { config = "train.toml:data.num_workers", values = [0, 2, 4] }

``default`` (optional) names the value in effect when perfpilot sets nothing; for
``config`` knobs it is read from the file. ``role`` (optional: checkpoint, dataloader,
memory, compute) and ``requires = "gpu"`` (or ``"none"``) tell the knob search what
evidence makes the knob worth trying and when to skip it; without them both are
inferred from the knob's name (see ``agent/proposers/knob_evidence.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from perfpilot.errors import ConfigError

KINDS = ("env", "arg", "config")
ROLES = ("checkpoint", "dataloader", "memory", "compute")
REQUIRES = ("gpu", "none")


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # env | arg | config
    target: str  # variable name, flag, or "file:dotted.key"
    values: tuple[Any, ...]
    default: Any = None
    role: str | None = None  # checkpoint | dataloader | memory | compute; None: inferred from the name
    requires: str | None = None  # "gpu": pointless without one; "none": never skip; None: inferred

    @property
    def is_flag(self) -> bool:
        return self.kind == "arg" and all(isinstance(v, bool) for v in self.values)

    @property
    def config_file(self) -> str:
        return self.target.split(":", 1)[0]

    @property
    def config_key(self) -> str:
        return self.target.split(":", 1)[1]

    def check_value(self, value: Any) -> Any:
        """The declared value equal to ``value`` (``"32"`` matches ``32``), else ConfigError."""
        for declared in self.values:
            if declared == value or str(declared).lower() == str(value).lower():
                return declared
        raise ConfigError(
            f"knob {self.name!r}: value {value!r} is not one of its declared values {list(self.values)}",
            hint="declare it in [tool.perfpilot.knobs] or pick a declared value",
        )

    def describe(self) -> str:
        default = f"; default {self.default!r}" if self.default is not None else ""
        return f"{self.name} ({self.kind} {self.target}; values {list(self.values)}{default})"


def parse_knobs(table: Mapping[str, Any]) -> dict[str, Knob]:
    """Validate ``[tool.perfpilot.knobs]``; every problem is a ConfigError naming the knob."""
    knobs: dict[str, Knob] = {}
    for name, spec in (table or {}).items():
        where = f"[tool.perfpilot.knobs] {name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a table like {{ env = \"VAR\", values = [\"0\", \"1\"] }}")
        kinds = [k for k in KINDS if k in spec]
        if len(kinds) != 1:
            raise ConfigError(f"{where}: give exactly one of env, arg or config", hint=f"got {sorted(spec)}")
        unknown = set(spec) - {*KINDS, "values", "default", "role", "requires"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                              hint="known: env, arg, config, values, default, role, requires")
        for key, allowed in (("role", ROLES), ("requires", REQUIRES)):
            if key in spec and spec[key] not in allowed:
                raise ConfigError(f"{where}: {key} = {spec[key]!r} is not one of {', '.join(allowed)}")
        kind = kinds[0]
        target = spec[kind]
        if not isinstance(target, str) or not target.strip():
            raise ConfigError(f"{where}: {kind} must be a non-empty string")
        if kind == "config" and (":" not in target or not target.split(":", 1)[1]):
            raise ConfigError(f"{where}: config must be FILE:KEY, e.g. \"train.toml:data.num_workers\"")
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values must be a non-empty list")
        for value in values:
            if not isinstance(value, (str, int, float, bool)):
                raise ConfigError(f"{where}: value {value!r} must be a string, number or boolean")
        knobs[str(name)] = Knob(str(name), kind, target.strip(), tuple(values), spec.get("default"),
                                spec.get("role"), spec.get("requires"))
    return knobs


def knob_args(knobs: Mapping[str, Knob], values: Mapping[str, Any]) -> list[str]:
    """Command-line arguments for the arg knobs that are set, in declaration order."""
    argv: list[str] = []
    for name, knob in knobs.items():
        if knob.kind != "arg" or name not in values:
            continue
        value = values[name]
        if knob.is_flag:
            if value:
                argv.append(knob.target)
        else:
            argv += [knob.target, str(value)]
    return argv


def knob_env(knobs: Mapping[str, Knob], values: Mapping[str, Any]) -> dict[str, str]:
    return {knob.target: str(values[name]) for name, knob in knobs.items()
            if knob.kind == "env" and name in values}
