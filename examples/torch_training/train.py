"""A small but real PyTorch training run whose systems knobs perfpilot can tune.

The model is a residual MLP of transformer-style feed-forward blocks (LayerNorm ->
Linear(w, 4w) -> GELU -> Linear(4w, w)) trained with AdamW to imitate a fixed random
"teacher" network on synthetic data generated locally from a seed. With a large batch
and a narrow width its memory is dominated by activations (each block keeps ~10 w-wide
tensors per sample for backward, against 8 w^2 parameters), which is the regime where
activation checkpointing pays; with a wide model and a small batch the optimizer state
dominates instead and checkpointing only costs time.

Knobs (each: command-line flag, else environment variable, else ``train.toml``, else default):

======================== ========================== ===================================================
knob                     flag / environment         meaning
======================== ========================== ===================================================
amp                      --amp / TRAIN_AMP          ``off`` or ``bf16`` autocast (GPU and CPU)
activation_checkpointing --activation-checkpointing recompute each block's activations in backward
offload_optimizer        --offload-optimizer        fp32 master weights + AdamW state on the CPU,
                                                    gradients copied down and weights copied up each
                                                    step. On a CPU-only machine the copies are
                                                    host-to-host: pure overhead, nothing to save.
batch_size               --batch-size               micro-batch; gradient accumulation keeps
                                                    ``effective_batch`` (must divide it)
num_workers              --num-workers              DataLoader worker processes
pin_memory               --pin-memory               DataLoader page-locked batches (needs a GPU)
compile                  --compile                  ``torch.compile`` the model (slow first step)
checkpoint_every         --checkpoint-every         save model + optimizer every N steps (0: never)
async_checkpoint         --async-checkpoint         snapshot in memory, write + fsync in a thread
bucket_cap_mb            --bucket-cap-mb            DDP gradient bucket size, MB (under torchrun)
gradient_as_bucket_view  --gradient-as-bucket-view  DDP gradients alias the all-reduce buckets
======================== ========================== ===================================================

Under ``torchrun --nproc_per_node N`` the script trains with DistributedDataParallel
(``ddp.py``: gloo on CPU, NCCL on GPUs), each rank taking 1/N of the effective batch;
``--slow-rank R --slow-rank-ms MS`` gives rank R extra CPU work each step (a straggler,
for trying out ``perfpilot profile``'s per-rank view).

Environment names are ``TRAIN_<KNOB>`` in upper case (``TRAIN_AMP=bf16``); other settings
(``--width``, ``--depth``, ``--steps``, ``--effective-batch``, ``--threads``...) work the same way. ``train.toml``
keys: ``train.amp``, ``train.activation_checkpointing``, ``train.offload_optimizer``,
``train.batch_size``, ``train.compile``, ``data.num_workers``, ``data.pin_memory``,
``checkpoint.every``, ``checkpoint.async``, ``ddp.bucket_cap_mb``, ``ddp.gradient_as_bucket_view``.

Output: ``final_loss: <float>`` on stdout (eval loss in fp32 on a fixed held-out set, so it
can be compared with a tolerance across knobs), and per-run figures through
``perfpilot.reporting.report_metric`` (``reported.<name>`` in a perfpilot Profile):
``step_time_s``, ``step_time_median_s``, ``steps``, ``final_loss``, ``first_loss``,
``train_cpu_s``, ``checkpoint_stall_s`` (time the loop waited for saves; the wait for the
last save at exit is ``checkpoint_final_wait_s``), ``checkpoint_saves``,
``process_peak_rss_bytes``, ``samples_per_s``, ``cuda_max_memory_allocated_bytes`` (GPU),
``energy_per_step_j`` (GPU: NVML energy counter) or ``energy_per_step_estimate_j`` (CPU:
process CPU seconds x an assumed watts per busy core, ``TRAIN_CPU_WATTS_PER_CORE``,
default 10; an estimate, named as one).

Exit codes: 0 ok; 2 a knob or setting the script rejects (message says which and what
is allowed); 3 out of memory (GPU or CPU; message says where and what to lower).
``--memory-limit-mb N`` (``TRAIN_MEMORY_LIMIT_MB``) caps the address space at N MiB
above what the process holds once the model is built -- a container-style limit that
makes a CPU out-of-memory reproducible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import ddp

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXIT_BAD_KNOB = 2
EXIT_OOM = 3
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter

try:
    from perfpilot.reporting import report_metric
except ImportError:  # the script also runs without perfpilot installed: same one-line JSON protocol
    def report_metric(name: str, value: float) -> None:
        path = os.environ.get("PERFPILOT_METRICS_FILE")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"name": name, "value": float(value)}) + "\n")


class KnobError(Exception):
    """A knob or setting value this script does not accept."""


class OutOfMemory(Exception):
    """The run ran out of GPU or CPU memory."""


# ----------------------------------------------------------------------------- settings


@dataclass
class Config:
    # model
    width: int = 256
    depth: int = 8
    in_dim: int = 32
    # training
    steps: int = 20
    effective_batch: int = 256
    lr: float = 1e-3
    seed: int = 0
    samples: int = 4096
    eval_samples: int = 1024
    device: str = "auto"
    threads: int = 0  # intra-op threads; 0: torch's default (all cores)
    # knobs
    amp: str = "off"
    activation_checkpointing: bool = False
    offload_optimizer: bool = False
    batch_size: int = 0  # 0: the effective batch (no accumulation)
    num_workers: int = 0
    pin_memory: bool = False
    compile: bool = False
    checkpoint_every: int = 0
    async_checkpoint: bool = False
    checkpoint_dir: str = "checkpoints"
    # distributed (under torchrun; see ddp.py)
    bucket_cap_mb: float = 25.0
    gradient_as_bucket_view: bool = False
    slow_rank: int = -1  # a rank that does slow_rank_ms of extra CPU work each step: a straggler to find
    slow_rank_ms: float = 0.0
    # safety
    memory_limit_mb: int = 0


# train.toml "section.key" -> Config field
TOML_KEYS = {
    "model.width": "width", "model.depth": "depth", "model.in_dim": "in_dim",
    "train.steps": "steps", "train.effective_batch": "effective_batch", "train.lr": "lr", "train.seed": "seed",
    "train.device": "device", "train.threads": "threads", "train.amp": "amp",
    "train.activation_checkpointing": "activation_checkpointing",
    "train.offload_optimizer": "offload_optimizer", "train.batch_size": "batch_size", "train.compile": "compile",
    "train.memory_limit_mb": "memory_limit_mb",
    "data.samples": "samples", "data.eval_samples": "eval_samples", "data.num_workers": "num_workers",
    "data.pin_memory": "pin_memory",
    "checkpoint.every": "checkpoint_every", "checkpoint.async": "async_checkpoint", "checkpoint.dir": "checkpoint_dir",
    "ddp.bucket_cap_mb": "bucket_cap_mb", "ddp.gradient_as_bucket_view": "gradient_as_bucket_view",
}

# Ranges a value must fall in; outside them the run is refused before any work.
LIMITS: dict[str, tuple[float, float]] = {
    "width": (1, 65536), "depth": (1, 1024), "in_dim": (1, 65536), "steps": (1, 10_000_000),
    "effective_batch": (1, 1 << 20), "lr": (0.0, 10.0), "samples": (1, 1 << 26), "eval_samples": (1, 1 << 24),
    "batch_size": (0, 1 << 20), "num_workers": (0, 64), "checkpoint_every": (0, 10_000_000),
    "memory_limit_mb": (0, 1 << 24), "threads": (0, 1024), "seed": (0, 2**63 - 1), "bucket_cap_mb": (0.001, 4096),
    "slow_rank": (-1, 1 << 20), "slow_rank_ms": (0, 60_000),
}

AMP_VALUES = {"off": "off", "0": "off", "none": "off", "fp32": "off", "false": "off",
              "bf16": "bf16", "1": "bf16", "bfloat16": "bf16", "true": "bf16"}


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise KnobError(f"{name}={value!r} is not a boolean; use 0 or 1")


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(Config)}[name]
    if kind == "bool":
        return _parse_bool(name, value)
    if kind in {"int", "float"}:
        if isinstance(value, bool):
            raise KnobError(f"{name}={value!r} is not a number")
        try:
            number = int(str(value), 10) if kind == "int" else float(value)
        except (TypeError, ValueError):
            raise KnobError(f"{name}={value!r} is not {'an integer' if kind == 'int' else 'a number'}") from None
        low, high = LIMITS.get(name, (-math.inf, math.inf))
        if not (low <= number <= high) or (kind == "float" and not math.isfinite(number)):
            raise KnobError(f"{name}={value!r} is out of range; allowed {low:g}..{high:g}")
        return number
    if name == "amp":
        text = str(value).strip().lower()
        if text in {"fp16", "float16", "half"}:
            raise KnobError("amp=fp16 is not supported (it needs a GradScaler, which this script does not use); "
                            "use bf16 or off")
        if text not in AMP_VALUES:
            raise KnobError(f"amp={value!r} is not a precision this script knows; use off or bf16")
        return AMP_VALUES[text]
    return str(value)


def load_config(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description="Train a small residual MLP on synthetic data.")
    parser.add_argument("--config", default=None, help="TOML settings (default: train.toml in the working directory, if any)")
    for f in fields(Config):
        # A boolean flag alone means on (``--compile``), as perfpilot passes flag knobs.
        extra: dict[str, Any] = {"nargs": "?", "const": "1"} if f.type == "bool" else {}
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar="VALUE", **extra)
    args = parser.parse_args(argv)

    config = Config()
    values: dict[str, Any] = {}
    path = Path(args.config) if args.config else Path("train.toml")
    if args.config and not path.is_file():
        raise KnobError(f"config file {path} does not exist")
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise KnobError(f"{path} is not valid TOML: {exc}") from None
        for section, table in data.items():
            if not isinstance(table, dict):
                raise KnobError(f"{path}: top-level key {section!r} must be a table like [train]")
            for key, value in table.items():
                dotted = f"{section}.{key}"
                if dotted not in TOML_KEYS:
                    raise KnobError(f"{path}: unknown key {dotted!r}; known: {', '.join(sorted(TOML_KEYS))}")
                values[TOML_KEYS[dotted]] = value
    for f in fields(Config):
        env = os.environ.get("TRAIN_" + f.name.upper())
        if env is not None and env != "":
            values[f.name] = env
        arg = getattr(args, f.name)
        if arg is not None:
            values[f.name] = arg
    for name, value in values.items():
        setattr(config, name, _coerce(name, value))
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field rules, so a bad combination is refused before any work."""
    if config.batch_size == 0:  # no accumulation: each rank's share of the effective batch in one go
        config.batch_size = config.effective_batch // max(1, ddp.detect().size)
    if config.batch_size > config.effective_batch:
        raise KnobError(f"batch_size={config.batch_size} is larger than effective_batch={config.effective_batch}; "
                        "use at most the effective batch")
    if config.effective_batch % config.batch_size:
        divisors = [d for d in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if config.effective_batch % d == 0]
        raise KnobError(f"batch_size={config.batch_size} does not divide effective_batch={config.effective_batch}; "
                        f"use a divisor such as {', '.join(map(str, divisors[-4:]))}")
    if config.samples < config.effective_batch:
        raise KnobError(f"samples={config.samples} is smaller than effective_batch={config.effective_batch}")
    if config.device not in {"auto", "cpu", "cuda"} and not config.device.startswith("cuda:"):
        raise KnobError(f"device={config.device!r} is not auto, cpu or cuda[:N]")


# ----------------------------------------------------------------------------- model


def build_model(config: Config) -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.up = nn.Linear(width, 4 * width)
            self.down = nn.Linear(4 * width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))

    class ResidualMLP(nn.Module):
        def __init__(self, in_dim: int, width: int, depth: int, checkpointing: bool) -> None:
            super().__init__()
            self.inp = nn.Linear(in_dim, width)
            self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
            self.head = nn.Linear(width, 1)
            self.checkpointing = checkpointing

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.inp(x)
            for block in self.blocks:
                if self.checkpointing and self.training:
                    # Only the block's input survives to backward; its four wide
                    # intermediates are recomputed there (about one extra forward).
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            return self.head(x).squeeze(-1)

    return ResidualMLP(config.in_dim, config.width, config.depth, config.activation_checkpointing)


def make_data(config: Config) -> tuple[Any, Any, Any, Any]:
    """(x_train, y_train, x_eval, y_eval): inputs from a seeded normal, targets from a fixed random teacher."""
    import torch

    gen = torch.Generator().manual_seed(config.seed + 1)
    x = torch.randn(config.samples + config.eval_samples, config.in_dim, generator=gen)
    w1 = torch.randn(config.in_dim, 64, generator=gen) / math.sqrt(config.in_dim)
    w2 = torch.randn(64, 1, generator=gen) / 8.0
    y = (torch.tanh(x @ w1) @ w2).squeeze(-1) + 0.01 * torch.randn(x.shape[0], generator=gen)
    n = config.samples
    return x[:n].contiguous(), y[:n].contiguous(), x[n:].contiguous(), y[n:].contiguous()


# ----------------------------------------------------------------------------- optimiser


class AdamW:
    """torch.optim.AdamW's update (defaults: betas 0.9/0.999, eps 1e-8, weight decay 0.01),
    written with torch's multi-tensor ``_foreach`` kernels.

    Why not torch.optim.AdamW itself: every torch.optim optimiser's first call imports
    torch._dynamo (the JIT compiler, via ``torch._disable_dynamo``), ~0.8 s of a ~2 s demo
    run on a 2-core CPU, paid again by every run the knob search measures. The update is
    the same formula; ``state_dict()`` holds the same tensors (step, exp_avg, exp_avg_sq).
    """

    def __init__(self, params: list[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        import torch

        self.params, self.lr, self.betas, self.eps, self.weight_decay = params, lr, betas, eps, weight_decay
        self.steps = [0] * len(params)  # per parameter, as torch counts them (only steps with a gradient)
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [self.params[i] for i in live]
        grads = [self.params[i].grad for i in live]
        exp_avg = [self.exp_avg[i] for i in live]
        exp_avg_sq = [self.exp_avg_sq[i] for i in live]
        beta1, beta2 = self.betas
        for i in live:
            self.steps[i] += 1
        steps = [self.steps[i] for i in live]
        with torch.no_grad():
            torch._foreach_mul_(params, 1 - self.lr * self.weight_decay)
            torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denom, [math.sqrt(1 - beta2 ** n) for n in steps])
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(params, exp_avg, denom, [-self.lr / (1 - beta1 ** n) for n in steps])

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": {i: {"step": float(n), "exp_avg": m, "exp_avg_sq": v}
                      for i, (n, m, v) in enumerate(zip(self.steps, self.exp_avg, self.exp_avg_sq)) if n},
            "param_groups": [{"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                              "params": list(range(len(self.params)))}],
        }


class OffloadedAdamW:
    """AdamW whose fp32 master weights and moment estimates live in host memory.

    Per step: gradients go device -> host, AdamW runs on the CPU, weights go host ->
    device. On a GPU this frees 2x the parameter bytes of optimizer state (plus the
    master copy) from device memory at the cost of two transfers and a CPU update. On a
    CPU-only machine nothing is freed: the copies are host-to-host overhead.
    """

    def __init__(self, params: list[Any], lr: float) -> None:
        import torch

        self.params = params
        pin = torch.cuda.is_available()
        self.master = [p.detach().to("cpu", copy=True).pin_memory() if pin else p.detach().to("cpu", copy=True)
                       for p in params]
        for m in self.master:
            m.requires_grad_(True)
        self.inner = AdamW(self.master, lr=lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        for p, m in zip(self.params, self.master):
            m.grad = None if p.grad is None else p.grad.detach().to("cpu", copy=True)
        self.inner.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.master):
                p.copy_(m, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()


# ----------------------------------------------------------------------------- checkpoint saving


class CheckpointWriter:
    """Saves model + optimizer state; ``stall_s`` is the time the training loop waited.

    Blocking: serialise, write and fsync on the training thread (the whole save is a
    stall). Async: copy the state to fresh host tensors (the only stall, besides waiting
    for a previous save still in flight), then serialise + write + fsync in a thread.
    A save is written to a temporary file and renamed, so a crash never leaves a torn
    checkpoint.
    """

    def __init__(self, directory: Path, asynchronous: bool) -> None:
        self.directory = directory
        self.asynchronous = asynchronous
        self.stall_s = 0.0
        self.final_wait_s = 0.0
        self.saves = 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._staging: dict[str, Any] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def _write(self, state: dict[str, Any], step: int) -> None:
        import torch

        final = self.directory / "last.pt"
        tmp = self.directory / f".last.pt.{step}.tmp"
        try:
            with open(tmp, "wb") as fh:
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the training thread
            self._error = exc

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def save(self, model: Any, optimizer: Any, step: int) -> None:
        t0 = time.perf_counter()
        self._wait()
        state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        if self.asynchronous:
            snapshot = _snapshot(state, self._staging)
            self._thread = threading.Thread(target=self._write, args=(snapshot, step), name="checkpoint-writer")
            self._thread.start()
        else:
            self._write(state, step)
            self._wait()
        self.saves += 1
        self.stall_s += time.perf_counter() - t0

    def close(self) -> None:
        t0 = time.perf_counter()
        self._wait()
        # Waiting for the last save at exit is paid once per job, not per step: kept
        # apart from the stall (the run's wall time includes it either way).
        self.final_wait_s = time.perf_counter() - t0


def _snapshot(obj: Any, staging: dict[str, Any], key: str = "") -> Any:
    """A host copy of ``obj`` whose tensors live in ``staging`` buffers reused across saves.

    Reusing the buffers (pinned on a GPU machine) makes the snapshot a plain memcpy into
    memory that is already mapped: a fresh allocation per save would page-fault and
    zero every byte first, which on this model costs more than the copy itself.
    """
    import torch

    if isinstance(obj, torch.Tensor):
        src = obj.detach()
        buf = staging.get(key)
        if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
            buf = torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=torch.cuda.is_available())
            staging[key] = buf
        buf.copy_(src, non_blocking=False)
        return buf
    if isinstance(obj, dict):
        return {k: _snapshot(v, staging, f"{key}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v, staging, f"{key}/{i}") for i, v in enumerate(obj))
    return obj


# ----------------------------------------------------------------------------- energy


class EnergyMeter:
    """Energy of the training loop: NVML's counter on a GPU, else a labelled CPU estimate."""

    def __init__(self, device: Any) -> None:
        self.source = "estimate"
        self._nvml_handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                index = device.index if device.index is not None else 0
                visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
                ids = [v.strip() for v in visible.split(",") if v.strip()]
                if ids and ids[index].isdigit():
                    index = int(ids[index])
                self._nvml_handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                pynvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml_handle)
                self.source = "nvml_energy"
            except Exception:  # noqa: BLE001 - no NVML or no energy counter: fall back to the estimate
                self._nvml_handle = None
        self.watts_per_core = float(os.environ.get("TRAIN_CPU_WATTS_PER_CORE", "10"))
        self._start = self._read()

    def _read(self) -> float:
        if self._nvml_handle is not None:
            import pynvml

            return pynvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml_handle) / 1000.0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
        return cpu_s * self.watts_per_core

    def joules(self) -> float:
        return self._read() - self._start


# ----------------------------------------------------------------------------- training


def _return_freed_memory() -> None:
    """Fix glibc's mmap threshold so tensors freed after backward go back to the OS.

    glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed, so
    after the first step activations come from the heap, whose freed holes stay
    resident: peak RSS then reports allocator fragmentation (we saw a checkpointed
    24-block model at 880 MB where its live tensors needed 250 MB) instead of what
    training needs. A fixed threshold makes every tensor above 128 KiB its own mapping,
    which is what jemalloc/tcmalloc setups for PyTorch on CPU give in effect.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):  # not glibc: nothing to fix
        pass


def _memory_limit(extra_mb: int) -> None:
    """Cap the address space at what we hold now plus ``extra_mb`` (a reproducible CPU OOM)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        vm_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
    limit = (vm_kb * 1024) + extra_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def _busy(seconds: float) -> None:
    """Burn CPU on this thread for ``seconds`` (a straggler rank's extra work)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(i * i for i in range(1000))


def train(config: Config) -> tuple[dict[str, float], str]:
    import torch

    _return_freed_memory()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise KnobError(f"device={config.device} but torch sees no CUDA GPU; use cpu or auto")
    if config.pin_memory and device.type != "cuda":
        print("train.py: note: pin_memory has no effect without a GPU", file=sys.stderr)
    if config.offload_optimizer and device.type != "cuda":
        print("train.py: note: offload_optimizer on a CPU-only run moves state host-to-host: it only costs time",
              file=sys.stderr)

    world = ddp.detect()
    if world.distributed:
        if config.effective_batch % (world.size * config.batch_size):
            raise KnobError(f"effective_batch={config.effective_batch} must split into {world.size} ranks of whole "
                            f"micro-batches of {config.batch_size}; pick a batch_size dividing "
                            f"{config.effective_batch // world.size}")
        device = ddp.start(world, device.type)
    x_train, y_train, x_eval, y_eval = make_data(config)
    model = build_model(config).to(device)
    params = list(model.parameters())
    optimizer: Any = OffloadedAdamW(params, config.lr) if config.offload_optimizer else AdamW(params, config.lr)
    step_model = torch.compile(model) if config.compile else model
    if world.distributed:
        step_model = ddp.wrap(step_model, world, device, config.bucket_cap_mb, config.gradient_as_bucket_view)
    if config.memory_limit_mb:
        if config.activation_checkpointing or config.compile:
            # torch.utils.checkpoint and torch.compile import torch._dynamo on first call
            # (~35 MiB of code): the cap is for the training's tensors, not torch's modules.
            import torch._dynamo  # noqa: F401
        _memory_limit(config.memory_limit_mb)

    dataset = torch.utils.data.TensorDataset(x_train, y_train)
    shard = ddp.sampler(dataset, world, config.seed + 2) if world.distributed else None
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shard is None,
        sampler=shard,
        drop_last=True,
        num_workers=config.num_workers,
        pin_memory=config.pin_memory and device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed + 2),
        persistent_workers=config.num_workers > 0,
    )
    accumulation = config.effective_batch // world.size // config.batch_size
    amp_dtype = torch.bfloat16 if config.amp == "bf16" else None
    saves = config.checkpoint_every and world.main  # one copy of the state: rank 0 writes it
    writer = CheckpointWriter(Path(config.checkpoint_dir), config.async_checkpoint) if saves else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    meter = EnergyMeter(device)

    def batches() -> Any:
        while True:
            yield from loader

    stream = batches()
    step_times: list[float] = []
    first_loss = 0.0
    loop_start = time.perf_counter()
    cpu_start = time.process_time()
    model.train()
    for step in range(1, config.steps + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accumulation):
            xb, yb = next(stream)
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            # Disabled autocast still validates its dtype (float32 draws a warning on CUDA).
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                pred = step_model(xb)
            loss = torch.nn.functional.mse_loss(pred.float(), yb) / accumulation
            loss.backward()
            if step == 1:
                first_loss += float(loss.detach())
        optimizer.step()
        if world.rank == config.slow_rank:
            _busy(config.slow_rank_ms / 1000.0)
        if writer is not None and step % config.checkpoint_every == 0:
            writer.save(model, optimizer, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_times.append(time.perf_counter() - t0)
    if writer is not None:
        writer.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loop_s = time.perf_counter() - loop_start
    # CPU seconds of this process in the loop (checkpoint writer thread included): on a
    # shared machine a steadier measure of work done than the loop's wall time.
    loop_cpu_s = time.process_time() - cpu_start
    joules = meter.joules()

    model.eval()
    with torch.no_grad():
        final_loss = float(torch.nn.functional.mse_loss(model(x_eval.to(device)).float(), y_eval.to(device)))
    if world.distributed:
        loop_s = ddp.mean_across_ranks(loop_s, device)  # every rank's share of the job, on every rank
        ddp.finish(world)
    if not math.isfinite(final_loss):
        raise RuntimeError(f"training diverged: final loss is {final_loss}")

    figures = {
        "steps": float(config.steps),
        "step_time_s": loop_s / config.steps,
        "step_time_median_s": sorted(step_times)[len(step_times) // 2],
        "train_cpu_s": loop_cpu_s,
        "samples_per_s": config.steps * config.effective_batch / loop_s,
        "final_loss": final_loss,
        "first_loss": first_loss,
        "checkpoint_stall_s": writer.stall_s if writer else 0.0,
        "checkpoint_saves": float(writer.saves if writer else 0),
        "checkpoint_final_wait_s": writer.final_wait_s if writer else 0.0,
        "process_peak_rss_bytes": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        ("energy_per_step_estimate_j" if meter.source == "estimate" else "energy_per_step_j"): joules / config.steps,
    }
    if device.type == "cuda":
        figures["cuda_max_memory_allocated_bytes"] = float(torch.cuda.max_memory_allocated(device))
    return figures, meter.source


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except KnobError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return EXIT_BAD_KNOB
    try:
        import torch  # noqa: F401 - fail early and clearly when torch is missing
    except ImportError:
        print("train.py: error: PyTorch is not installed; pip install torch==2.13.0", file=sys.stderr)
        return EXIT_BAD_KNOB
    try:
        figures, energy_source = train(config)
    except KnobError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return EXIT_BAD_KNOB
    except Exception as exc:  # noqa: BLE001 - classify OOM; anything else is a real crash with its traceback
        if not _is_oom(exc):
            raise
        where = "GPU" if "CUDA" in str(exc) or type(exc).__name__ == "OutOfMemoryError" else "CPU"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"train.py: error: out of memory ({where}) with batch_size={config.batch_size}, "
              f"activation_checkpointing={int(config.activation_checkpointing)}: {first[:200]} -- "
              "lower batch_size (accumulation keeps the effective batch) or turn on activation_checkpointing",
              file=sys.stderr)
        report_metric("oom", 1.0)
        return EXIT_OOM
    if not ddp.detect().main:  # rank 0 speaks for the job
        return 0
    for name, value in figures.items():
        report_metric(name, value)
    print(f"steps: {config.steps}  step_time_s: {figures['step_time_s']:.4f}  "
          f"checkpoint_stall_s: {figures['checkpoint_stall_s']:.4f}  energy source: {energy_source}")
    print(f"first_loss: {figures['first_loss']:.6f}")
    print(f"final_loss: {figures['final_loss']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
