"""`perfpilot optimize` with the knob search on the PyTorch training example, end to end.

One real session (no LLM) over knobs chosen to exercise every way a training knob can
fail, then one that only costs time:

* ``batch_size=96`` -- the script refuses it (does not divide the effective batch);
* ``batch_size=4096`` -- the micro-batch no longer fits the run's memory limit: CPU OOM;
* ``num_workers=99`` -- out of the script's range;
* ``activation_checkpointing=1`` -- runs, same loss, but with objective ``wall`` it can
  only cost time (recomputation): it must not be accepted.

Each is recorded as a rejected candidate with its reason, and the search goes on to the
next one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

TRAIN_TOML = """\
[model]
width = 64
depth = 8

[train]
steps = 2
effective_batch = 4096
batch_size = 512
threads = 1
memory_limit_mb = 40   # address space above the built model: micro-batches of 512 fit, 4096 do not

[data]
samples = 4096
eval_samples = 128
num_workers = 0
"""

PYPROJECT = """\
[tool.perfpilot]
run = "python train.py"
objective = "wall"
output_check = "reported.final_loss:2%"
runs = 4
min_runs = 4
max_failures = 10

[tool.perfpilot.knobs]
batch_size = { arg = "--batch-size", values = [96, 4096] }
num_workers = { config = "train.toml:data.num_workers", values = [0, 99] }
activation_checkpointing = { env = "TRAIN_ACTIVATION_CHECKPOINTING", values = ["0", "1"], default = "0" }
"""


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    project = tmp_path_factory.mktemp("torch_project")
    for name in ("train.py", "ddp.py"):
        shutil.copy(ROOT / "examples" / "torch_training" / name, project / name)
    (project / "train.toml").write_text(TRAIN_TOML)
    (project / "pyproject.toml").write_text(PYPROJECT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", COLUMNS="200")
    done = subprocess.run([str(BIN / "perfpilot"), "optimize"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((project / ".perfpilot" / "optimize-report.json").read_text())
    return project, done, report


def _by_title(report: dict) -> dict[str, dict]:
    return {p["title"]: p for p in report["proposals"]}


def test_every_candidate_is_screened_in_order_and_the_search_continues(session):
    _project, _done, report = session
    assert report["proposer"] == "knobs"
    declared = ["try batch_size=96", "try batch_size=4096", "try num_workers=99", "try activation_checkpointing=1"]
    # declared order, except knobs the baseline's profile points at, which go first and say
    # why (on a fast CPU the DataLoader's share of this short run's stacks moves num_workers up)
    early = [p["title"] for p in report["proposals"] if "tried early: " in p["proposal"]["rationale"]]
    assert early in ([], ["try num_workers=99"]), early
    assert [p["title"] for p in report["proposals"]] == early + [t for t in declared if t not in early]
    assert all(p["status"] == "rejected" for p in report["proposals"])
    assert report["final"]["knobs"] == {} and report["final"]["env"] == {}


def test_a_value_the_script_refuses_is_rejected_with_its_reason(session):
    refused = _by_title(session[2])["try batch_size=96"]
    assert refused["reason"] == "run failed"
    assert "batch_size=96 does not divide effective_batch=4096" in refused["detail"]


def test_an_out_of_memory_run_is_rejected_with_its_reason(session):
    oom = _by_title(session[2])["try batch_size=4096"]
    assert oom["reason"] == "run failed"
    assert "out of memory (CPU) with batch_size=4096" in oom["detail"]


def test_an_out_of_range_value_is_rejected_with_its_reason(session):
    bad = _by_title(session[2])["try num_workers=99"]
    assert bad["reason"] == "run failed"
    assert "num_workers=99 is out of range" in bad["detail"] or "num_workers='99' is out of range" in bad["detail"]


def test_a_knob_that_only_costs_time_is_rejected_on_measurement(session):
    _project, done, report = session
    ckpt = _by_title(report)["try activation_checkpointing=1"]
    assert ckpt["reason"] in {"slower", "no change", "inconclusive"}
    wall = ckpt["verdicts"]["wall"]
    assert not wall["improved"] and wall["runs_a"] >= 4 and wall["runs_b"] >= 4
    assert "activation_checkpointing" in done.stderr + done.stdout
