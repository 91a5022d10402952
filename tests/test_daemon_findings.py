"""Findings over windows: each kind raised by its condition, not by a lone tick, and resolved."""

from __future__ import annotations

from perfpilot.agent.daemon.config import FindingConfig
from perfpilot.agent.daemon.findings import FindingEngine, linear_growth
from perfpilot.agent.daemon.sampler import WatchState


def _engine(**kw) -> FindingEngine:
    return FindingEngine(FindingConfig(window=10.0, memory_window=60.0, restarts_window=60.0, **kw), interval=1.0)


def _run(engine: FindingEngine, seconds: int, host=lambda t: {}, watch=lambda t: None, gpu=lambda t: {},
         restarts=lambda t: []) -> list[dict]:
    changed: list[dict] = []
    start = getattr(engine, "_test_clock", 0)  # successive runs continue the same timeline
    engine._test_clock = start + seconds  # type: ignore[attr-defined]
    for t in range(start, start + seconds):
        state = watch(t)
        watches = {"name:web": state} if state is not None else {}
        engine.observe(float(t), host(t), watches, gpu(t))
        changed += engine.evaluate(float(t), watches, {"name:web": restarts(t)})
    return changed


def _state(cpu=10.0, rss=100 * 2**20, gpu=None, processes=1) -> WatchState:
    s = WatchState("name:web", processes=processes, cpu_pct=cpu, rss_bytes=int(rss))
    s.gpu_memory_bytes = gpu
    return s


def test_linear_growth_slope_and_fit() -> None:
    slope, r2, growth = linear_growth([(float(t), 1000.0 + 50.0 * t) for t in range(20)])
    assert abs(slope - 50.0) < 1e-6 and r2 > 0.999 and abs(growth - 950.0) < 1e-6
    assert linear_growth([(float(t), 7.0) for t in range(20)]) == (0.0, 0.0, 0.0)


def test_memory_growth_is_found_with_its_slope() -> None:
    engine = _engine()
    leak = 1 * 2**20  # 1 MiB per second
    _run(engine, 61, watch=lambda t: _state(rss=100 * 2**20 + leak * t + (t % 3) * 4096))
    finding = engine.active[("memory_growth", "name:web")]
    assert abs(finding["details"]["slope_bytes_per_s"] - leak) / leak < 0.01
    assert finding["details"]["r2"] > 0.99
    assert "MiB/h" in finding["message"]


def test_flat_or_noisy_memory_is_not_a_leak() -> None:
    engine = _engine()
    _run(engine, 61, watch=lambda t: _state(rss=100 * 2**20 + (t % 7) * 2**20))  # saw-tooth, no trend
    assert ("memory_growth", "name:web") not in engine.active


def test_cpu_saturation_needs_a_sustained_window_and_resolves() -> None:
    engine = _engine()
    _run(engine, 5, watch=lambda t: _state(cpu=99.0))
    assert not engine.active  # 5 s of a 10 s window: not yet sustained
    changed = _run(engine, 12, watch=lambda t: _state(cpu=99.0))
    assert ("cpu_saturation", "name:web") in engine.active
    assert any(f["kind"] == "cpu_saturation" for f in changed)
    _run(engine, 12, watch=lambda t: _state(cpu=5.0))
    assert ("cpu_saturation", "name:web") not in engine.active
    assert engine.listing()[0]["active"] is False


def test_one_busy_tick_is_not_saturation() -> None:
    engine = _engine()
    _run(engine, 30, watch=lambda t: _state(cpu=99.0 if t % 5 == 0 else 20.0))
    assert not engine.active


def test_host_steal_and_iowait() -> None:
    engine = _engine()
    _run(engine, 15, host=lambda t: {"cpu.utilization_pct": 50.0, "cpu.steal_pct": 25.0, "cpu.iowait_pct": 40.0})
    assert {("cpu_steal", "host"), ("io_wait", "host")} <= set(engine.active)
    assert ("cpu_saturation", "host") not in engine.active


def test_gpu_allocated_but_idle() -> None:
    engine = _engine()
    _run(engine, 15, watch=lambda t: _state(gpu=2 * 2**30), gpu=lambda t: {"gpu0.utilization_pct": 1.0})
    assert ("gpu_idle", "name:web") in engine.active
    busy = _engine()
    _run(busy, 15, watch=lambda t: _state(gpu=2 * 2**30), gpu=lambda t: {"gpu0.utilization_pct": 80.0})
    assert not busy.active


def test_frequent_restarts() -> None:
    engine = _engine()
    _run(engine, 30, watch=lambda t: _state(), restarts=lambda t: [5.0, 12.0, 20.0] if t >= 20 else [5.0, 12.0])
    finding = engine.active[("restarts", "name:web")]
    assert finding["details"]["restarts"] == 3
