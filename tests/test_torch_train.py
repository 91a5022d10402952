"""examples/torch_training/train.py as a program: its figures, its knobs, its refusals.

Real subprocesses with a tiny model (seconds each). Bad knob values are refused before
torch is imported, so those checks are cheap.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from perfpilot.reporting import ENV_VAR, read_reported

torch = pytest.importorskip("torch")

TRAIN = Path(__file__).resolve().parent.parent / "examples" / "torch_training" / "train.py"
TINY = ["--steps", "4", "--width", "64", "--depth", "3", "--effective-batch", "128", "--samples", "512",
        "--eval-samples", "128", "--threads", "1"]


def train(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    metrics = tmp_path / f"metrics-{len(list(tmp_path.glob('metrics-*')))}.jsonl"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_")}
    full_env.update({ENV_VAR: str(metrics), **(env or {})})
    (tmp_path / "empty.toml").write_text("")
    done = subprocess.run([sys.executable, str(TRAIN), "--config", str(tmp_path / "empty.toml"), *args], cwd=tmp_path,
                          env=full_env, capture_output=True, text=True, timeout=300)
    reported, problems = read_reported(metrics)
    assert not problems
    return done, reported


def final_loss(done: subprocess.CompletedProcess) -> float:
    match = re.search(r"^final_loss: (\S+)$", done.stdout, re.MULTILINE)
    assert match, done.stdout + done.stderr
    return float(match.group(1))


def refusal(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_reports_per_step_figures_and_prints_the_loss(tmp_path):
    done, reported = train(tmp_path, *TINY, "--checkpoint-every", "2", "--checkpoint-dir", str(tmp_path / "ck"))
    assert done.returncode == 0, done.stderr
    assert reported["reported.steps"] == 4
    assert reported["reported.final_loss"] == pytest.approx(final_loss(done), rel=1e-5)
    assert reported["reported.final_loss"] < reported["reported.first_loss"]
    assert reported["reported.step_time_s"] > 0 and reported["reported.checkpoint_saves"] == 2
    assert reported["reported.checkpoint_stall_s"] > 0
    assert reported["reported.process_peak_rss_bytes"] > 50 * 2**20
    # No GPU here: the energy figure is an estimate and says so in its name.
    assert "reported.energy_per_step_j" not in reported and reported["reported.energy_per_step_estimate_j"] > 0
    assert "reported.cuda_max_memory_allocated_bytes" not in reported
    saved = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert saved["step"] == 4 and "state" in saved["optimizer"]


@pytest.fixture(scope="module")
def plain_loss(tmp_path_factory) -> float:
    done, _ = train(tmp_path_factory.mktemp("plain"), *TINY)
    assert done.returncode == 0, done.stderr
    return final_loss(done)


def test_knobs_that_do_not_change_the_maths_keep_the_loss(tmp_path, plain_loss):
    """Accumulation, offload, workers, async saving and checkpointing: same loss (within float rounding)."""
    same, _ = train(tmp_path, *TINY, "--batch-size", "32", "--offload-optimizer", "--activation-checkpointing",
                    "--async-checkpoint", "--checkpoint-every", "2", "--checkpoint-dir", str(tmp_path / "ck"),
                    env={"TRAIN_NUM_WORKERS": "1"})
    assert same.returncode == 0, same.stderr
    assert "offload_optimizer on a CPU-only run" in same.stderr
    assert final_loss(same) == pytest.approx(plain_loss, rel=1e-4)


def test_bf16_autocast_is_close_not_exact(tmp_path, plain_loss):
    bf16, _ = train(tmp_path, *TINY, env={"TRAIN_AMP": "bf16"})
    assert bf16.returncode == 0, bf16.stderr
    assert final_loss(bf16) != plain_loss
    assert final_loss(bf16) == pytest.approx(plain_loss, rel=0.02)


@pytest.mark.parametrize("args, env, says", [
    (["--batch-size", "48"], {}, "batch_size=48 does not divide effective_batch=128"),
    (["--batch-size", "512"], {}, "batch_size=512 is larger than effective_batch=128"),
    (["--num-workers", "99"], {}, "num_workers='99' is out of range; allowed 0..64"),
    (["--steps", "-3"], {}, "steps='-3' is out of range"),
    ([], {"TRAIN_AMP": "fp16"}, "amp=fp16 is not supported"),
    ([], {"TRAIN_AMP": "fp8"}, "amp='fp8' is not a precision"),
    ([], {"TRAIN_ASYNC_CHECKPOINT": "maybe"}, "async_checkpoint='maybe' is not a boolean"),
    (["--config", "missing.toml"], {}, "config file missing.toml does not exist"),
])
def test_rejected_knob_values_exit_2_with_one_line(tmp_path, args, env, says):
    done, _ = train(tmp_path, *TINY, *args, env=env)
    assert says in refusal(done, 2)


def test_unknown_config_key_is_refused(tmp_path):
    (tmp_path / "bad.toml").write_text("[data]\nnum_worker = 2\n")
    done, _ = train(tmp_path, *TINY, "--config", str(tmp_path / "bad.toml"))
    assert "unknown key 'data.num_worker'" in refusal(done, 2)


def test_out_of_memory_is_reported_not_a_traceback(tmp_path):
    # 40 MiB of address space above the built model: the micro-batch of 4096 needs ~80 MiB
    # of activations, the same run with micro-batches of 256 fits.
    args = ["--steps", "1", "--width", "64", "--depth", "8", "--effective-batch", "4096", "--samples", "4096",
            "--eval-samples", "128", "--threads", "1", "--memory-limit-mb", "40"]
    done, reported = train(tmp_path, *args)
    line = refusal(done, 3)
    assert "out of memory (CPU) with batch_size=4096" in line and "lower batch_size" in line
    assert reported == {"reported.oom": 1.0}
    fits, _ = train(tmp_path, *args, "--batch-size", "256")
    assert fits.returncode == 0, fits.stderr


def test_the_example_declares_valid_settings_and_every_knob():
    from perfpilot.agent.knobs import parse_knobs
    from perfpilot.agent.acceptance import parse_guards
    from perfpilot.agent.output_check import parse_output_check
    from perfpilot.config import load_settings

    settings = load_settings(cwd=TRAIN.parent, environ={})
    knobs = parse_knobs(settings.knobs)
    assert set(knobs) == {"amp", "activation_checkpointing", "offload_optimizer", "batch_size", "num_workers",
                          "pin_memory", "compile", "checkpoint_every", "async_checkpoint"}
    assert {k.kind for k in knobs.values()} == {"env", "arg", "config"}
    assert parse_guards(settings.guards)["reported.final_loss"] == pytest.approx(0.02)
    check = parse_output_check(settings.output_check)
    assert check.metric == "reported.final_loss" and check.tolerance == pytest.approx(0.02)
    # Every config knob points at a key train.toml really has.
    from perfpilot.config import read_toml

    toml = read_toml(TRAIN.parent / "train.toml")
    for knob in knobs.values():
        if knob.kind == "config":
            section, key = knob.config_key.split(".")
            assert key in toml[section], knob


def test_the_examples_adamw_is_torch_optim_adamw_bit_for_bit():
    """train.py's AdamW (foreach kernels, no torch._dynamo import) takes the same steps as
    torch.optim.AdamW, with weight decay, a parameter without a gradient, and the same
    tensors in its state_dict."""
    sys.path.insert(0, str(TRAIN.parent))
    try:
        import train as example
    finally:
        sys.path.remove(str(TRAIN.parent))
    gen = torch.Generator().manual_seed(3)
    ours = [torch.randn(6, 4, generator=gen).requires_grad_(), torch.randn(9, generator=gen).requires_grad_(),
            torch.randn(2, generator=gen).requires_grad_()]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    mine, reference = example.AdamW(ours, 3e-3), torch.optim.AdamW(theirs, lr=3e-3)
    for step in range(7):
        for k, (a, b) in enumerate(zip(ours, theirs)):  # the last one only has a gradient from step 4 on
            if k == 2 and step < 4:
                continue
            grad = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
        mine.zero_grad()
        reference.zero_grad()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    state, expected = mine.state_dict()["state"], reference.state_dict()["state"]
    assert set(state) == set(expected) == {0, 1, 2}
    for i in (0, 1, 2):
        assert torch.equal(state[i]["exp_avg"], expected[i]["exp_avg"])
        assert torch.equal(state[i]["exp_avg_sq"], expected[i]["exp_avg_sq"])
        assert state[i]["step"] == float(expected[i]["step"])
