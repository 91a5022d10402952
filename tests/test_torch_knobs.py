"""What the training knobs cost and buy on CPU, measured by perfpilot itself.

* Activation checkpointing on a model whose activations dominate: the verdict engine
  (fresh processes, interleaved runs, the memory collector's exact peak RSS) calls it
  *smaller*, and reports what it costs in time next to it.
* Async checkpoint saving: the time the training loop is blocked by saves
  (``reported.checkpoint_stall_s``) drops by most of itself.

No timed assertions: peak RSS is a size; the stall is compared as a ratio with a wide
margin (measured here: 0.2-0.4 under heavy load, see benchmarks/torch_knobs.py).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from perfpilot.reporting import ENV_VAR, read_reported

pytest.importorskip("torch")

pytestmark = pytest.mark.slow

TRAIN = Path(__file__).resolve().parent.parent / "examples" / "torch_training" / "train.py"
# 16 blocks x batch 8192 x width 64: ~13 MiB of saved activations per block without
# checkpointing, ~2 MiB with it; parameters and optimizer state ~2 MiB in all. Large on
# purpose: torch.utils.checkpoint's first call imports torch._dynamo (~35 MiB more RSS,
# ~1 s), which the checkpointing arm pays and the plain one does not.
ACTIVATION_BOUND = ["--steps", "1", "--width", "64", "--depth", "16", "--effective-batch", "8192", "--samples", "8192",
                    "--eval-samples", "128"]
# 4 blocks x width 256: a 25 MB checkpoint (weights + AdamW moments), short steps.
CHECKPOINTED = ["--steps", "8", "--width", "256", "--depth", "4", "--effective-batch", "64", "--samples", "1024",
                "--eval-samples", "128", "--checkpoint-every", "2"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_")}
    env["TRAIN_THREADS"] = "1"  # one intra-op thread: no OpenMP spinning against the neighbours
    return env


def test_activation_checkpointing_is_smaller_and_its_time_cost_is_reported(tmp_path):
    from perfpilot.profilers.measure import Arm, compare
    from perfpilot.registry import build_plugin_manager

    (tmp_path / "empty.toml").write_text("")
    argv = [sys.executable, str(TRAIN), "--config", str(tmp_path / "empty.toml"), *ACTIVATION_BOUND]
    comparison = compare(
        Arm(argv, env=_env(), cwd=str(tmp_path), label="plain"),
        Arm([*argv, "--activation-checkpointing"], env=_env(), cwd=str(tmp_path), label="checkpointing"),
        metrics=["peak_rss", "wall", "reported.train_cpu_s", "reported.final_loss"], primary="peak_rss",
        min_runs=4, max_runs=4, warmup=0, plugin_set=build_plugin_manager())
    memory = comparison.verdicts["peak_rss"]
    assert memory.verdict == "smaller" and memory.improved, memory.to_dict()
    # ~13 MiB x 16 blocks of saved activations go (~200 MiB measured); torch itself (~280 MiB) stays.
    assert memory.median_a - memory.median_b > 100 * 2**20, memory.to_dict()
    # The cost is reported in time units, with its own verdict, next to the saving.
    for metric in ("wall", "reported.train_cpu_s"):
        cost = comparison.verdicts[metric]
        assert cost.verdict in {"faster", "slower", "no change", "inconclusive"}
        assert cost.runs_a == cost.runs_b == 4 and cost.ci_low <= cost.ratio <= cost.ci_high
    # Recomputation is the same arithmetic: the loss is bit-for-bit the same.
    assert comparison.verdicts["reported.final_loss"].ratio == 1.0


def _stalls(tmp_path: Path, asynchronous: bool, runs: int) -> list[float]:
    stalls = []
    for run in range(runs):
        metrics = tmp_path / f"m-{int(asynchronous)}-{run}.jsonl"
        done = subprocess.run(
            [sys.executable, str(TRAIN), "--config", str(tmp_path / "empty.toml"), *CHECKPOINTED,
             "--async-checkpoint", str(int(asynchronous)), "--checkpoint-dir", str(tmp_path / "ck")],
            cwd=tmp_path, env={**_env(), ENV_VAR: str(metrics)}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        reported, _ = read_reported(metrics)
        assert reported["reported.checkpoint_saves"] == 4
        stalls.append(reported["reported.checkpoint_stall_s"])
    return stalls


def test_async_checkpoint_removes_most_of_the_save_stall(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    blocking, asynchronous = [], []
    for _ in range(2):  # interleaved, so a busy neighbour hits both modes alike
        blocking += _stalls(tmp_path, False, 1)
        asynchronous += _stalls(tmp_path, True, 1)
    ratio = statistics.median(asynchronous) / statistics.median(blocking)
    assert ratio < 0.6, (blocking, asynchronous)
    assert (tmp_path / "ck" / "last.pt").stat().st_size > 20e6
