"""The knob search's order comes from the baseline's evidence, and GPU-only knobs are
skipped on a host without a GPU (with the reason in the report)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from perfpilot.agent.knobs import parse_knobs
from perfpilot.agent.proposers.knob_evidence import evidence, rank, role_of
from perfpilot.agent.proposers.knob_proposer import KnobProposer
from perfpilot.config import Settings, read_toml
from perfpilot.errors import ConfigError
from perfpilot.profilers.profile import Profile

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "torch_training"
EXAMPLE_KNOBS = read_toml(EXAMPLE / "pyproject.toml")["tool"]["perfpilot"]["knobs"]
CPU_HOST = {"memory_bytes": 24 * 2**30, "gpus": []}
BF16_CPU = {"avx2", "avx512_bf16"}  # a CPU that computes bf16 natively
GPU_HOST = {"memory_bytes": 24 * 2**30, "gpus": [{"index": 0, "name": "H200", "memory_bytes": 141 * 2**30}]}


def profile(host: dict, **summary: float) -> Profile:
    return Profile(host=host, summary={"wall_s": 2.0, "peak_rss_bytes": 300e6, **summary})


def order(ranked) -> list[str]:
    return [r.knob.name for r in ranked if not r.skip]


def test_a_checkpoint_stall_puts_the_checkpoint_knobs_first():
    knobs = parse_knobs(EXAMPLE_KNOBS)
    ranked = rank(knobs.values(), profile(CPU_HOST, **{"reported.checkpoint_stall_s": 0.4}), "wall")
    assert order(ranked)[:2] == ["checkpoint_every", "async_checkpoint"]
    first = ranked[0]
    assert "0.400 s" in first.evidence and "20%" in first.evidence and "checkpoint_stall_s" in first.evidence
    # No stall: the declared order stands (amp first), nothing claims evidence.
    calm = rank(knobs.values(), profile(CPU_HOST, **{"reported.checkpoint_stall_s": 0.001}), "wall")
    assert order(calm)[0] == "amp" and not any(r.evidence for r in calm)


def test_cpu_only_host_skips_gpu_only_knobs_with_a_reason_and_a_gpu_host_keeps_them():
    knobs = parse_knobs(EXAMPLE_KNOBS)
    skipped = {r.knob.name: r.skip for r in rank(knobs.values(), profile(CPU_HOST), "wall") if r.skip}
    assert set(skipped) == {"pin_memory", "offload_optimizer"}
    assert all(reason.startswith("no GPU on this host") for reason in skipped.values())
    assert not [r for r in rank(knobs.values(), profile(GPU_HOST), "wall") if r.skip]


def test_memory_objective_and_memory_pressure_put_memory_knobs_first():
    knobs = parse_knobs(EXAMPLE_KNOBS)
    by_objective = order(rank(knobs.values(), profile(GPU_HOST), "gpu_memory"))
    assert set(by_objective[:4]) == {"amp", "activation_checkpointing", "offload_optimizer", "batch_size"}
    pressed = profile(CPU_HOST, peak_rss_bytes=20 * 2**30)
    assert "peak RSS is 83% of the host's memory" in evidence(pressed, "wall")["memory"][1]
    assert order(rank(knobs.values(), pressed, "wall"))[0] == "amp"  # first memory knob in declared order


def test_dataloader_waits_in_the_stacks_put_loader_knobs_first():
    knobs = parse_knobs(EXAMPLE_KNOBS)
    waiting = profile(GPU_HOST)
    waiting.stacks = {"collapsed": {"main (train.py:10);__next__ (torch/utils/data/dataloader.py:700)": 40,
                                    "main (train.py:10);forward (train.py:20)": 60}}
    ranked = rank(knobs.values(), waiting, "wall")
    assert order(ranked)[:2] == ["num_workers", "pin_memory"]
    assert "40% of stack samples wait in the DataLoader" in ranked[0].evidence


def test_declared_role_and_requires_override_the_name():
    knobs = parse_knobs({"flush": {"env": "FLUSH", "values": ["0", "1"], "role": "checkpoint"},
                         "pinned": {"env": "PINNED", "values": ["0", "1"], "requires": "none"},
                         "fused": {"env": "FUSED", "values": ["0", "1"], "requires": "gpu"}})
    assert role_of(knobs["flush"]) == "checkpoint"
    ranked = rank(knobs.values(), profile(CPU_HOST, **{"reported.checkpoint_stall_s": 0.2}), "wall")
    assert order(ranked) == ["flush", "pinned"]
    assert [r.skip for r in ranked if r.skip] == ['no GPU on this host; fused declares requires = "gpu"']
    with pytest.raises(ConfigError, match="role = 'speed' is not one of"):
        parse_knobs({"x": {"env": "X", "values": ["1"], "role": "speed"}})


def test_proposals_name_their_evidence_and_the_proposer_notes_skips():
    proposer = KnobProposer(Settings(knobs=EXAMPLE_KNOBS))
    proposer.cpu_flags = BF16_CPU
    context = SimpleNamespace(profile=profile(CPU_HOST, **{"reported.checkpoint_stall_s": 0.4}), objective="wall",
                              knob_values={"checkpoint_every": 2})
    first = proposer.propose(context)[0]
    assert (first.knob, first.value) == ("checkpoint_every", 10)
    assert "tried early: checkpoint saves stalled training 0.400 s" in first.rationale
    queued = [(p.knob, p.value) for p in proposer.queue]
    assert ("async_checkpoint", "1") == queued[0] and not any(k in {"pin_memory", "offload_optimizer"}
                                                               for k, _ in queued)
    assert any(n.startswith("knob pin_memory skipped: no GPU on this host") for n in proposer.notes)


def test_fp16_amp_values_are_skipped_on_a_cpu_host():
    proposer = KnobProposer(Settings(knobs={"amp": {"env": "AMP", "values": ["off", "bf16", "fp16"],
                                                    "default": "off"}}))
    proposer.cpu_flags = BF16_CPU
    context = SimpleNamespace(profile=profile(CPU_HOST), objective="wall", knob_values={})
    values = [p.value for p in proposer.propose(context) + proposer.queue]
    assert values == ["bf16"]
    assert proposer.notes == ["knob value skipped: amp=fp16: CPU autocast has no fast fp16 path"]


@pytest.mark.skipif(sys.platform != "linux", reason="real host probe")
def test_this_hosts_report_lists_a_skipped_gpu_knob(tmp_path):
    # End to end with the real baseline profile of this (GPU-less) host.
    from perfpilot.agent.loop import Optimizer
    from perfpilot.profilers.host import gpu_names

    if gpu_names():
        pytest.skip("this host has a GPU")
    (tmp_path / "app.py").write_text("print('ok')\n")
    (tmp_path / "test_app.py").write_text("def test_ok():\n    assert True\n")
    knobs = {"pin_memory": {"env": "PIN", "values": ["0", "1"], "default": "0"}}
    s = Settings(run=f"{sys.executable} app.py", test=f"{sys.executable} -m pytest -q -p no:cacheprovider",
                 knobs=knobs, budget=2, stacks=False)
    result = Optimizer(s, tmp_path, KnobProposer(s)).run()
    assert result.outcomes == []
    assert any(n.startswith("knob pin_memory skipped: no GPU on this host") for n in result.notes)


def test_a_small_budget_screens_the_best_evidence_and_keeps_one_proposal_to_adopt():
    proposer = KnobProposer(Settings(knobs=EXAMPLE_KNOBS, budget=4))
    proposer.cpu_flags = BF16_CPU
    context = SimpleNamespace(profile=profile(CPU_HOST, **{"reported.checkpoint_stall_s": 0.4}), objective="wall",
                              knob_values={"checkpoint_every": 2})
    screened = [(p.knob, p.value) for p in proposer.propose(context) + proposer.queue]
    assert screened == [("checkpoint_every", 10), ("async_checkpoint", "1"), ("amp", "bf16")]
    budget_note = next(n for n in proposer.notes if n.startswith("budget 4: screened 3 of"))
    assert "not tried: activation_checkpointing=1" in budget_note and "raise --budget" in budget_note


def test_with_one_proposal_left_the_best_single_winner_is_adopted_not_the_combination():
    proposer = KnobProposer(Settings(knobs={"a": {"env": "A", "values": ["0", "1"], "default": "0"},
                                            "b": {"env": "B", "values": ["0", "1"], "default": "0"}}, budget=3))
    context = SimpleNamespace(profile=profile(CPU_HOST), objective="wall", knob_values={})
    for ratio in (0.9, 0.8):
        trial = proposer.propose(context)[0]
        proposer.feedback(trial, SimpleNamespace(status="winner", verdicts={"wall": {"ratio": ratio}}))
    adopt = proposer.propose(context)
    assert [(p.kind, p.knob, p.value) for p in adopt] == [("knob", "b", "1")]
    assert "one proposal left in the budget" in adopt[0].rationale
    roomy = KnobProposer(Settings(knobs={"a": {"env": "A", "values": ["1"]}, "b": {"env": "B", "values": ["1"]}},
                                  budget=8))
    for ratio in (0.9, 0.8):
        trial = roomy.propose(context)[0]
        roomy.feedback(trial, SimpleNamespace(status="winner", verdicts={"wall": {"ratio": ratio}}))
    assert roomy.propose(context)[0].kind == "combined"


def test_bf16_autocast_is_skipped_on_a_gpu_less_host_whose_cpu_has_no_bf16_instructions():
    proposer = KnobProposer(Settings(knobs=EXAMPLE_KNOBS, budget=4))
    proposer.cpu_flags = {"avx2", "fma"}
    context = SimpleNamespace(profile=profile(CPU_HOST, **{"reported.checkpoint_stall_s": 0.4}), objective="wall",
                              knob_values={"checkpoint_every": 2})
    screened = [(p.knob, p.value) for p in proposer.propose(context) + proposer.queue]
    assert ("amp", "bf16") not in screened and screened[:2] == [("checkpoint_every", 10), ("async_checkpoint", "1")]
    assert any("amp=bf16: no GPU, and this CPU has no bf16 instructions" in n for n in proposer.notes)
    gpu = KnobProposer(Settings(knobs=EXAMPLE_KNOBS))
    gpu.cpu_flags = {"avx2"}
    on_gpu = SimpleNamespace(profile=profile(GPU_HOST), objective="wall", knob_values={})
    assert ("amp", "bf16") in [(p.knob, p.value) for p in gpu.propose(on_gpu) + gpu.queue]
