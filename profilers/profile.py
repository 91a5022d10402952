"""The Profile: one plain, JSON-serialisable document per run.

Schema (``schema_version`` 1); every key below is always present, possibly empty:

``schema_version``  int
``target``          ``{"command": [str] | null, "cwd": str, "pid": int, "exit_code": int | null,
                      "signal": int | null, "attached": bool}``
``host``            ``{"hostname", "cpu_model", "cores_logical", "cores_physical",
                      "memory_bytes", "gpus": [...], "python", "os", "machine_id"}``
``started_at``      ISO 8601 UTC timestamp of the first sample
``duration_s``      wall seconds from start to the target's exit (or detach)
``summary``         totals; a key is present only when a collector measured it:
                    ``wall_s``, ``cpu_user_s``, ``cpu_system_s``, ``cpu_utilization_mean_pct``,
                    ``peak_rss_bytes``, ``io_read_bytes``, ``io_write_bytes``,
                    ``gpu_utilization_mean_pct``, ``gpu_memory_peak_bytes``,
                    ``energy`` (domain -> ``{"joules": float, "source": str, ...}``), and any
                    collector-specific extras (``cpu_ctx_switches_voluntary``, ...)
``series``          ``{"t": [seconds since start, ...], "values": {metric: [float | null, ...]}}``
                    -- one shared time base; ``null`` where a metric had no sample
``hotspots``        ``[{"function", "file", "line", "self_pct", "total_pct", "samples", ...}]``,
                    hottest first (self samples, then total). ``line`` is the function's hottest
                    line; also ``short_file``, ``code`` (that line's text), ``total_samples``,
                    ``processes`` (distinct pids), ``lines``: ``[{"line", "code", "samples",
                    "total_samples", "self_pct", "total_pct"}]`` hottest first, and with energy
                    figures ``energy_j`` (self), ``energy_total_j``, ``energy_by_domain``,
                    ``energy_estimated`` (see profilers/hotspots.py, energy_attribution.py)
``stacks``          ``{"rate_hz": int, "samples": int, "collapsed": {"f1;f2;f3": count},
                      "timeline": [{"start_s", "end_s", "samples"}]}`` or ``{}``; frames are
                    py-spy's ``name (file:line)``, ``process N:"cmd"`` at the root per process
``collectors``      name -> ``{"available": bool, "reason": str, "errors": [str], "disabled": bool}``
``annotations``     free-form, namespaced by who wrote it (``imports``, ``stacks_note``, ...)

Metric names are ``<domain>.<quantity>_<unit>`` in SI base units or bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perfpilot.errors import ProfileFormatError

SCHEMA_VERSION = 1

TOP_LEVEL_KEYS = (
    "schema_version",
    "target",
    "host",
    "started_at",
    "duration_s",
    "summary",
    "series",
    "hotspots",
    "stacks",
    "collectors",
    "annotations",
)


@dataclass
class Profile:
    target: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    duration_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=lambda: {"t": [], "values": {}})
    hotspots: list[dict[str, Any]] = field(default_factory=list)
    stacks: dict[str, Any] = field(default_factory=dict)
    collectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # Captured output of the target when asked for (never serialised).
    output: tuple[bytes, bytes] | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------ accessors

    @property
    def exit_code(self) -> int | None:
        return self.target.get("exit_code")

    def metric(self, name: str) -> float | None:
        """A summary figure by name (``energy.cpu`` reads the energy domain's joules)."""
        if name.startswith("energy."):
            entry = self.summary.get("energy", {}).get(name.split(".", 1)[1])
            return None if entry is None else float(entry["joules"])
        value = self.summary.get(name)
        return None if value is None else float(value)

    def series_of(self, metric: str) -> tuple[list[float], list[float]]:
        """(times, values) for one metric, with missing samples dropped."""
        times = self.series.get("t", [])
        values = self.series.get("values", {}).get(metric, [])
        pairs = [(t, v) for t, v in zip(times, values) if v is not None]
        return [t for t, _ in pairs], [v for _, v in pairs]

    # -------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("output", None)
        return {key: data[key] for key in TOP_LEVEL_KEYS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "profile") -> "Profile":
        if not isinstance(data, dict) or "schema_version" not in data:
            raise ProfileFormatError(f"{origin}: not a perfpilot Profile (no schema_version)")
        version = data["schema_version"]
        if version != SCHEMA_VERSION:
            raise ProfileFormatError(
                f"{origin}: Profile schema_version {version} is not supported (this perfpilot reads {SCHEMA_VERSION})",
                hint="re-record it with this version of perfpilot",
            )
        unknown = set(data) - set(TOP_LEVEL_KEYS)
        if unknown:
            raise ProfileFormatError(f"{origin}: unknown top-level keys {sorted(unknown)}")
        kwargs = {key: data[key] for key in TOP_LEVEL_KEYS if key in data}
        _check_types(kwargs, origin)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileFormatError(f"cannot read profile {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ProfileFormatError(f"{path}: not a perfpilot Profile (not UTF-8 text: byte {exc.start})",
                                     hint="give the .json file perfpilot profile wrote") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileFormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, origin=str(path))


# What each top-level key must be, so a hand-edited or foreign file fails here, in one line,
# and not deep inside compare or a renderer.
_TYPES: dict[str, tuple[type, ...]] = {
    "target": (dict,), "host": (dict,), "started_at": (str,), "duration_s": (int, float), "summary": (dict,),
    "series": (dict,), "hotspots": (list,), "stacks": (dict,), "collectors": (dict,), "annotations": (dict,),
}


def _check_types(data: dict[str, Any], origin: str) -> None:
    for key, types in _TYPES.items():
        value = data.get(key)
        if key in data and (not isinstance(value, types) or isinstance(value, bool)):
            want = " or ".join("a number" if t in (int, float) else f"a JSON {_JSON_NAME[t]}" for t in types[:1])
            raise ProfileFormatError(f"{origin}: {key!r} must be {want}, got {type(value).__name__} {value!r:.40}",
                                     hint="give the .json file perfpilot profile wrote, unedited")
    for name, value in data.get("summary", {}).items():
        if name == "energy":
            if not isinstance(value, dict) or not all(isinstance(e, dict) for e in value.values()):
                raise ProfileFormatError(f"{origin}: summary.energy must map each domain to "
                                         '{"joules": ..., "source": ...}')
        elif value is not None and not isinstance(value, (int, float, str, list, dict)):
            raise ProfileFormatError(f"{origin}: summary.{name} has an unexpected value {value!r:.40}")
    if not all(isinstance(h, dict) for h in data.get("hotspots", [])):
        raise ProfileFormatError(f"{origin}: every hotspots entry must be an object")


_JSON_NAME = {dict: "object", list: "array", str: "string"}
