"""The LLM proposer on the PyTorch training target, with a scripted backend (in-process loop,
real training subprocesses, a tiny model).

The model is sent the PyTorch domain prompt and the declared knobs; what it proposes is
untrusted: a knob value the project does not declare, and a config edit that the
script refuses, are both recorded with their reasons, and the second prompt tells the
model what happened to the first proposal.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

TRAIN_TOML = """\
[model]
width = 32
depth = 2
[train]
steps = 2
effective_batch = 64
threads = 1
[data]
samples = 256
eval_samples = 64
num_workers = 0
"""

PYPROJECT = """\
[tool.perfpilot]
run = "{python} train.py"
objective = "wall"
output_check = "reported.final_loss:2%"
runs = 4
min_runs = 4
max_failures = 10

[tool.perfpilot.knobs]
amp = {{ env = "TRAIN_AMP", values = ["off", "bf16"], default = "off" }}
num_workers = {{ config = "train.toml:data.num_workers", values = [0, 2] }}
"""


def _reply(*proposals: dict) -> str:
    return json.dumps({"proposals": list(proposals)})


def test_llm_proposals_on_the_torch_target_are_checked_and_explained(tmp_path, monkeypatch):
    from perfpilot.agent.loop import Optimizer
    from perfpilot.agent.proposers.llm_proposer import LLMProposer
    from perfpilot.config import load_settings
    from perfpilot.testing import ScriptedBackend

    for name in ("train.py", "ddp.py"):
        shutil.copy(ROOT / "examples" / "torch_training" / name, tmp_path / name)
    (tmp_path / "train.toml").write_text(TRAIN_TOML)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.format(python=sys.executable))
    for name in [k for k in os.environ if k.startswith("TRAIN_")]:
        monkeypatch.delenv(name)
    settings = load_settings(cwd=tmp_path, environ={})
    backend = ScriptedBackend([
        _reply({"kind": "knob", "title": "fp16 autocast", "rationale": "halves the bytes", "knob": "amp",
                "value": "fp16"}),
        _reply({"kind": "config", "title": "many workers", "rationale": "overlap loading", "file": "train.toml",
                "key": "data.num_workers", "value": 99}),
    ])
    result = Optimizer(settings, tmp_path, LLMProposer(settings, backend), proposer_name="llm").run()

    first_prompt = "\n".join(m["content"] for m in backend.history[0])
    assert "Activation checkpointing" in first_prompt and "GradScaler" in first_prompt  # prompts/pytorch.md
    assert "TRAIN_AMP" in first_prompt and "train.toml:data.num_workers" in first_prompt  # the declared knobs

    undeclared, refused = result.outcomes
    assert undeclared.status == "refused" and "value 'fp16' is not one of its declared values" in undeclared.detail
    assert refused.status == "rejected" and refused.reason == "run failed"
    assert "num_workers=99 is out of range" in refused.detail
    assert not result.accepted and result.baseline is not None
    # The second prompt's history tells the model why its first idea went nowhere.
    second_prompt = "\n".join(m["content"] for m in backend.history[1])
    assert "fp16" in second_prompt and undeclared.reason in second_prompt
