"""The Collector protocol and the isolation that keeps one bad collector from
spoiling a run.

A collector is created per run by the factory its plugin registered (see
:func:`perfpilot.hookspecs.perfpilot_register_collectors`):

``name``                 unique short name (``cpu``, ``gpu``...), also the metric domain
``available()``          ``(True, "")`` or ``(False, "why not, and how to fix it")``;
                         must not raise for an expected absence (no GPU, no RAPL)
``start(target)``        begin observing a :class:`~perfpilot.profilers.target.Target`
``sample(now)``          ``{metric_name: float}`` for this tick; ``now`` is the session's
                         monotonic clock in seconds. Called from the sampler thread.
``stop()``               totals for the Profile's ``summary`` (exact figures where the
                         OS has them, e.g. ``target.exact_totals()``), merged into it;
                         ``energy`` entries are merged per domain.
``annotate()``           optional: structured results that are not totals (a table, a
                         list), merged into the Profile's ``annotations`` after ``stop()``
                         (the ``processes`` collector's per-process table is one).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from perfpilot.profilers.target import Target

MAX_CONSECUTIVE_FAILURES = 3
MAX_ERRORS_KEPT = 10


@runtime_checkable
class Collector(Protocol):
    name: str

    def available(self) -> tuple[bool, str]: ...

    def start(self, target: Target) -> None: ...

    def sample(self, now: float) -> dict[str, float]: ...

    def stop(self) -> dict[str, Any]: ...


class CollectorSource(Protocol):
    """What a profiling session needs from the caller's plugin registry
    (:class:`perfpilot.registry.PluginSet` is one). ``profilers`` never builds a registry:
    the front door, the agent and the daemon build one and hand it in."""

    def make_collectors(self, settings: Any) -> list[Any]:
        """Fresh collectors for one run, selected by ``settings.plugins`` / ``disable_plugins``."""
        ...

    def profile_finished(self, profile: Any) -> None:
        """Tell the plugins that a Profile is complete."""
        ...


@dataclass
class CollectorSlot:
    """One collector plus its health record (becomes ``profile.collectors[name]``)."""

    collector: Any
    name: str
    available: bool = False
    reason: str = ""
    errors: list[str] = field(default_factory=list)
    disabled: bool = False
    started: bool = False
    error_count: int = 0  # every error, also those past MAX_ERRORS_KEPT (a Prometheus counter)
    _consecutive: int = 0

    def record(self, where: str, exc: BaseException) -> None:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        place = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(f"{where}: {type(exc).__name__}: {exc}{place}")

    def status(self) -> dict[str, Any]:
        return {"available": self.available, "reason": self.reason, "errors": list(self.errors), "disabled": self.disabled,
                "error_count": self.error_count}


class CollectorSet:
    """Runs collectors with per-collector isolation."""

    def __init__(self, collectors: list[Any]) -> None:
        self.slots = [CollectorSlot(c, getattr(c, "name", type(c).__name__)) for c in collectors]

    def check_available(self) -> None:
        for slot in self.slots:
            try:
                ok, reason = slot.collector.available()
                slot.available, slot.reason = bool(ok), str(reason or "")
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                slot.available, slot.reason = False, f"available() raised {type(exc).__name__}: {exc}"
                slot.record("available", exc)

    def start(self, target: Target) -> None:
        for slot in self.slots:
            if not slot.available:
                continue
            try:
                slot.collector.start(target)
                slot.started = True
            except Exception as exc:  # noqa: BLE001
                slot.record("start", exc)
                slot.disabled = True

    def sample(self, now: float) -> dict[str, float]:
        values: dict[str, float] = {}
        for slot in self.slots:
            if not slot.started or slot.disabled:
                continue
            try:
                values.update(slot.collector.sample(now))
                slot._consecutive = 0
            except Exception as exc:  # noqa: BLE001
                slot.record("sample", exc)
                slot._consecutive += 1
                if slot._consecutive >= MAX_CONSECUTIVE_FAILURES:
                    slot.disabled = True
                    slot.errors.append(f"disabled after {MAX_CONSECUTIVE_FAILURES} consecutive failures")
        return values

    def stop(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        for slot in self.slots:
            if not slot.started:
                continue
            try:
                totals = slot.collector.stop() or {}
            except Exception as exc:  # noqa: BLE001
                slot.record("stop", exc)
                continue
            for key, value in totals.items():
                if key == "energy":
                    summary.setdefault("energy", {}).update(value)
                else:
                    summary[key] = value
        return summary

    def annotations(self) -> dict[str, Any]:
        """Every started collector's optional ``annotate()``, isolated like ``stop()``."""
        merged: dict[str, Any] = {}
        for slot in self.slots:
            annotate = getattr(slot.collector, "annotate", None)
            if not slot.started or annotate is None:
                continue
            try:
                merged.update(annotate() or {})
            except Exception as exc:  # noqa: BLE001
                slot.record("annotate", exc)
        return merged

    def status(self) -> dict[str, dict[str, Any]]:
        return {slot.name: slot.status() for slot in self.slots}
