"""The ``perfpilot_measure`` fixture's object: measure a callable over calibrated rounds,
or a block once, inside a test. Works with or without ``--perfpilot``; with it, the
distributions are part of the report and of saved baselines, and a comparison judges
them (rather than whole-test rounds).

Not named ``benchmark`` (pytest-benchmark and pytest-codspeed own that name); both can be
used in one session and even in one test.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from perfpilot.profilers.block import BlockMeter, BlockSample, Distribution, measure_calls

DEFAULT_ROUNDS = 10
DEFAULT_MAX_TIME_S = 1.0


class PerfpilotMeasure:
    """``perfpilot_measure(fn, *args, **kwargs)`` -> :class:`Distribution` (``.result`` is fn's value)."""

    def __init__(self, nodeid: str, session: Any | None) -> None:
        self.nodeid = nodeid
        self.session = session  # the PerfpilotSession when enabled, else None
        self.distributions: list[Distribution] = []
        self.blocks: list[BlockSample] = []
        self._meter: BlockMeter | None = None

    @property
    def meter(self) -> BlockMeter:
        # Share the session's meter: the process-wide peak-RSS mark is reset per block.
        if self.session is not None:
            return self.session.meter
        if self._meter is None:
            self._meter = BlockMeter(energy=False)
        return self._meter

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Distribution:
        return self.measure(fn, args=args, kwargs=kwargs)

    def measure(self, fn: Callable[..., Any], *, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                name: str = "", rounds: int = DEFAULT_ROUNDS, min_rounds: int = 5,
                max_time_s: float = DEFAULT_MAX_TIME_S, warmup: int = 1, min_round_s: float | None = None
                ) -> Distribution:
        """Calibrated rounds of ``fn(*args, **kwargs)``; ``name`` tells several apart in one test."""
        if not callable(fn):
            raise TypeError(f"perfpilot_measure needs a callable, got {fn!r}")
        # Not the function's name by default: the point of a baseline is to survive the code
        # under test being rewritten (renamed, swapped for a faster version).
        name = name or "measure"
        if any(d.name == name for d in self.distributions):
            name = f"{name}#{sum(1 for d in self.distributions if d.name.split('#')[0] == name) + 1}"
        dist = measure_calls(fn, args, kwargs, rounds=rounds, min_rounds=min(min_rounds, rounds),
                             max_time_s=max_time_s, min_round_s=min_round_s, warmup=warmup,
                             meter=self.meter, name=name)
        self.distributions.append(dist)
        if self.session is not None:
            self.session.add_measure(self.nodeid, dist.to_dict())
        return dist

    @contextmanager
    def block(self) -> Iterator[Any]:
        """``with perfpilot_measure.block() as b: ...`` then ``b.sample`` (one measurement)."""
        with self.meter.measure() as ctx:
            yield ctx
        assert ctx.sample is not None
        self.blocks.append(ctx.sample)
