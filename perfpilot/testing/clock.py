"""A manually advanced monotonic clock for deterministic tests.

Pass it wherever perfpilot takes a ``clock`` callable (``FakeNVML(clock=...)``,
``PowerCollector(settings, clock=...)``) and hand ``clock()`` to ``sample(now)``::

    clock = FakeClock()
    collector.sample(clock())
    clock.advance(0.1)
    collector.sample(clock())
"""

from __future__ import annotations


class FakeClock:
    """Seconds that only move when told to; never goes backwards."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (must be >= 0); returns the new time."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self.now += seconds
        return self.now

    sleep = advance

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now})"
