"""The PyTorch domain prompt reaches the optimiser for the training example."""

from __future__ import annotations

from pathlib import Path

from perfpilot import prompts
from perfpilot.agent.context import target_kind
from perfpilot.profilers.profile import Profile

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "torch_training"


def test_the_training_example_is_a_pytorch_target():
    assert target_kind(Profile(), EXAMPLE, "python train.py --steps 20") == "pytorch"


def test_the_pytorch_prompt_carries_the_trade_offs():
    text = prompts.domain_prompt("pytorch")
    assert text == prompts.load("pytorch") != prompts.load("generic")
    for topic in ("Mixed precision", "Activation checkpointing", "Optimizer offload", "Checkpoint saving",
                  "gradient accumulation", "torch.compile", "final loss"):
        assert topic in text, topic
    # Rendered into the optimise template through string.Template: a stray "$" would vanish.
    assert "$" not in text
