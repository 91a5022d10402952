"""Metric names a verdict can be asked about, and how to read them from a Profile.

Short names (what ``--metric`` takes) map onto the Profile's ``summary``:

================  ==================================================  ============
name              reads                                               collector
================  ==================================================  ============
``wall``          ``wall_s``                                          (session)
``cpu``           ``cpu_user_s + cpu_system_s``                       cpu
``peak_rss``      ``peak_rss_bytes``                                  memory
``io``            ``io_read_bytes + io_write_bytes``                  io
``io_read``       ``io_read_bytes``                                   io
``io_write``      ``io_write_bytes``                                  io
``energy``        sum of every ``energy`` domain's joules             power/gpu
``energy.X``      the joules of energy domain ``X`` (``energy.cpu``)   power/gpu
``gpu_memory``    ``gpu_memory_peak_bytes``                           gpu
``gpu_util``      ``gpu_utilization_mean_pct``                        gpu
``instructions``  ``instructions`` (source: ``instructions_source``)  instructions
================  ==================================================  ============

Any other summary key is accepted verbatim (``cpu_user_s``, ``reported.loss`` from
:mod:`perfpilot.reporting`), and so is any series metric (``cpu.utilization_pct``),
whose per-run value is the mean of its samples. Lower is better for all of them; the
verdict words depend on :func:`metric_kind`.

``instructions`` (user-space instructions of the whole process tree) is a count whose
runs agree to a fraction of a percent (hardware counters, or valgrind with the hash seed
pinned): :func:`is_deterministic` says so, and the verdict engine then decides it in a
few runs on a ~1% threshold (:mod:`perfpilot.profilers.stats`). Its verdicts carry the
figure's source (``pmu`` or ``valgrind``, from ``instructions_source``), as energy's do.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from perfpilot.errors import PerfpilotError
from perfpilot.profilers.profile import Profile


class UnknownMetric(PerfpilotError):
    """A metric name that no collector could ever produce (usually a typo)."""


class MetricUnavailable(PerfpilotError):
    """A known metric that this Profile does not have (its collector did not run)."""


@dataclass(frozen=True)
class Alias:
    keys: tuple[str, ...]  # summary keys summed
    collector: str
    kind: str
    description: str
    source_key: str | None = None  # summary key naming where the figure came from
    deterministic: bool = False  # runs of the same code give the same figure, near enough


ALIASES: dict[str, Alias] = {
    "wall": Alias(("wall_s",), "session", "time", "wall-clock seconds"),
    "cpu": Alias(("cpu_user_s", "cpu_system_s"), "cpu", "time", "CPU seconds, user + system, whole process tree"),
    "peak_rss": Alias(("peak_rss_bytes",), "memory", "size", "peak resident memory, bytes"),
    "io": Alias(("io_read_bytes", "io_write_bytes"), "io", "size", "storage bytes read + written"),
    "io_read": Alias(("io_read_bytes",), "io", "size", "storage bytes read"),
    "io_write": Alias(("io_write_bytes",), "io", "size", "storage bytes written"),
    "gpu_memory": Alias(("gpu_memory_peak_bytes",), "gpu", "size", "peak GPU memory, bytes"),
    "gpu_util": Alias(("gpu_utilization_mean_pct",), "gpu", "other", "mean GPU utilisation, %"),
    "instructions": Alias(("instructions",), "instructions", "count",
                          "user-space instructions retired, whole process tree",
                          source_key="instructions_source", deterministic=True),
}
ENERGY = "energy"
ENERGY_COLLECTORS = ("power", "gpu")

# Summary keys the design names, so `check_metric_names` can suggest them.
KNOWN_SUMMARY_KEYS = (
    "wall_s", "cpu_user_s", "cpu_system_s", "cpu_utilization_mean_pct", "peak_rss_bytes", "io_read_bytes",
    "io_write_bytes", "gpu_utilization_mean_pct", "gpu_memory_peak_bytes",
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)+$")


def known_names() -> list[str]:
    return [*ALIASES, ENERGY, "energy.<domain>", "reported.<name>", "<summary key>", "<series metric>"]


def check_metric_names(names: Iterable[str]) -> None:
    """Reject names no collector could produce, before any run is spent on them.

    Accepted: the short names above, ``energy.<domain>``, ``reported.<name>``, dotted
    series names (``cpu.utilization_pct``) and snake_case summary keys (anything with an
    underscore, e.g. ``cpu_user_s``). A bare word that is none of these (``wal``,
    ``rss``) is a typo. Whether an accepted name is actually present is only known once
    a Profile exists (:class:`MetricUnavailable`).
    """
    names = list(names)
    if not names:
        raise UnknownMetric("no metric given", hint=f"use e.g. --metric wall,cpu; known: {', '.join(known_names())}")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise UnknownMetric(f"empty metric name in {names!r}", hint="separate metric names with commas, e.g. wall,cpu")
        if name in ALIASES or name == ENERGY:
            continue
        if _DOTTED.match(name):
            continue
        if _IDENT.match(name) and "_" in name.strip("_"):
            continue
        close = difflib.get_close_matches(name, [*ALIASES, ENERGY, *KNOWN_SUMMARY_KEYS], n=2, cutoff=0.5)
        hint = (f"did you mean {' or '.join(close)}? " if close else "") + f"known: {', '.join(known_names())}"
        raise UnknownMetric(f"unknown metric {name!r}", hint=hint)


def is_deterministic(name: str) -> bool:
    """Whether runs of unchanged code give (near) the same figure, so few runs decide.

    Only a promise about the metric; the engine still checks each comparison's runs
    (a count that spreads is judged by the rank test like any other figure).
    """
    alias = ALIASES.get(name)
    return alias is not None and alias.deterministic


def metric_kind(name: str) -> str:
    """``time`` (verdict words faster/slower), ``size``, ``count`` or ``other`` (smaller/larger)."""
    alias = ALIASES.get(name)
    if alias is not None:
        return alias.kind
    base = name.rsplit(".", 1)[-1]
    if base.endswith("_s") or base in {"s", "seconds"}:
        return "time"
    if base.endswith("_bytes"):
        return "size"
    return "other"


def _collector_note(profile: Profile, collector: str) -> str:
    info = profile.collectors.get(collector)
    if info is None:
        return f"the {collector} collector did not run (not installed or disabled; see `perfpilot plugins`)"
    if not info.get("available", False):
        reason = info.get("reason") or "no reason given"
        return f"the {collector} collector was unavailable: {reason}"
    if info.get("errors"):
        return f"the {collector} collector failed: {info['errors'][0]}"
    return f"the {collector} collector reported no such figure"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _energy_entries(profile: Profile) -> dict[str, dict[str, Any]]:
    energy = profile.summary.get("energy")
    return energy if isinstance(energy, dict) else {}


def metric_value(profile: Profile, name: str) -> float:
    """The per-run figure for ``name``, or :class:`MetricUnavailable` saying what is missing."""
    summary = profile.summary
    alias = ALIASES.get(name)
    if alias is not None:
        values = [_number(summary.get(key)) for key in alias.keys]
        if all(v is not None for v in values):
            return float(sum(values))  # type: ignore[arg-type]
        missing = [key for key, v in zip(alias.keys, values) if v is None]
        raise MetricUnavailable(
            f"metric {name!r} needs {', '.join(missing)}, which this profile lacks: {_collector_note(profile, alias.collector)}",
            hint="choose another --metric or enable that collector",
        )
    if name == ENERGY or name.startswith(ENERGY + "."):
        entries = _energy_entries(profile)
        if name == ENERGY:
            joules = [_number(e.get("joules")) for e in entries.values() if isinstance(e, dict)]
            joules = [j for j in joules if j is not None]
            if joules:
                return float(sum(joules))
            missing = "energy figure"
        else:
            entry = entries.get(name.split(".", 1)[1])
            joules_one = _number(entry.get("joules")) if isinstance(entry, dict) else None
            if joules_one is not None:
                return joules_one
            missing = f"energy domain {name.split('.', 1)[1]!r}" + (
                f" (it has: {', '.join(sorted(entries))})" if entries else "")
        notes = "; ".join(_collector_note(profile, c) for c in ENERGY_COLLECTORS)
        raise MetricUnavailable(f"metric {name!r}: this profile has no {missing}: {notes}",
                                hint="energy needs RAPL, NVML or the power collector's estimate")
    value = _number(summary.get(name))
    if value is not None:
        return value
    _times, samples = profile.series_of(name)
    numbers = [v for v in (_number(s) for s in samples) if v is not None]
    if numbers:
        return float(sum(numbers) / len(numbers))
    domain = name.split(".", 1)[0] if "." in name else name.split("_", 1)[0]
    where = _collector_note(profile, domain) if domain in profile.collectors else "no collector reports it"
    have = sorted(k for k, v in summary.items() if _number(v) is not None)
    raise MetricUnavailable(
        f"metric {name!r} is not in this profile ({where})",
        hint=f"summary has: {', '.join(have[:12])}{', ...' if len(have) > 12 else ''}",
    )


def metric_source(profile: Profile, name: str) -> str:
    """Where the figure came from: ``estimate`` when an energy figure rests on a model
    rather than a meter; an alias's own source label (``instructions``: ``pmu`` or
    ``valgrind``); ``measured`` otherwise.

    A sum over energy domains counts as an estimate as soon as one of its parts is one:
    a partly modelled total must not be presented as a measurement.
    """
    alias = ALIASES.get(name)
    if alias is not None and alias.source_key is not None:
        label = profile.summary.get(alias.source_key)
        return str(label) if isinstance(label, str) and label else "measured"
    if name != ENERGY and not name.startswith(ENERGY + "."):
        return "measured"
    entries = _energy_entries(profile)
    if name == ENERGY:
        parts = [e for e in entries.values() if isinstance(e, dict)]
    else:
        entry = entries.get(name.split(".", 1)[1])
        parts = [entry] if isinstance(entry, dict) else []
    if any(str(e.get("source", "estimate")) == "estimate" for e in parts):
        return "estimate"
    return "measured"


def energy_sources(profile: Profile, name: str) -> list[str]:
    """The distinct ``source`` labels behind an energy metric (for notes)."""
    entries = _energy_entries(profile)
    keys = list(entries) if name == ENERGY else [name.split(".", 1)[1]]
    return sorted({str(entries[k].get("source", "?")) for k in keys if isinstance(entries.get(k), dict)})
