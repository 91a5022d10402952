"""Which declared knobs to try first, and which to skip, from the baseline's evidence.

A person tuning a training job does not try every knob in the order it was declared:
a visible checkpoint stall points at the checkpoint knobs, a DataLoader that the
stacks show waiting points at workers and pinned memory, memory near its limit (or a
memory objective) points at activation checkpointing and offload, and a host with no
GPU makes GPU-only knobs pointless. This module reads the baseline Profile for those
signs and ranks the knobs; every rank carries the evidence that put it there, so the
proposal's rationale (and the report) can name it.

A knob's role comes from its declaration (``role = "checkpoint"``, ``requires = "gpu"``
in ``[tool.perfpilot.knobs]``) and, when not declared, from its name and target
(``async_checkpoint``, ``TRAIN_NUM_WORKERS``, ``train.toml:data.pin_memory``...). A
knob with no role and no evidence keeps its declared place after the ones with evidence.

Thresholds (a share of the baseline's wall time, or of the memory available):
``STALL_SHARE`` for checkpoint saves, ``LOADER_SHARE`` of stack samples inside the
DataLoader, ``MEMORY_SHARE`` of host (or GPU) memory at peak.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import AbstractSet, Any, Iterable, Mapping, Sequence

from perfpilot.agent.knobs import Knob
from perfpilot.profilers.profile import Profile

STALL_SHARE = 0.02
LOADER_SHARE = 0.10
MEMORY_SHARE = 0.5
MEMORY_OBJECTIVES = ("peak_rss", "gpu_memory")

# Name/target words -> role, tried in order (the first match wins).
_ROLE_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("memory", re.compile(r"activation|offload|grad(ient)?_?accum|batch_?size|amp|precision|dtype", re.I)),
    ("checkpoint", re.compile(r"checkpoint|ckpt|save_every|snapshot", re.I)),
    ("dataloader", re.compile(r"num_?workers|pin_?memory|prefetch|loader|persistent_workers", re.I)),
)
_GPU_ONLY = re.compile(r"pin_?memory|offload|cuda|nccl|cudnn|tf32", re.I)
_GPU_ONLY_VALUES = {"fp16", "float16", "half"}  # CPU autocast has no useful fp16 path
_BF16_VALUES = {"bf16", "bfloat16"}
_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # CPUs that compute bf16 natively (else it is emulated: slower)
_LOADER_FRAMES = re.compile(r"torch/utils/data/|dataloader", re.I)
_SAVE_FRAMES = re.compile(r"torch/serialization\.py|\bfsync\b|\bsave\b", re.I)


@dataclass(frozen=True)
class Ranked:
    """A knob's place in the search: ``score`` higher first; ``skip`` says why not at all."""

    knob: Knob
    role: str
    score: float
    evidence: str  # what in the baseline put it here ("" when nothing did)
    skip: str = ""


def role_of(knob: Knob) -> str:
    if knob.role:
        return knob.role
    words = f"{knob.name} {knob.target}"
    return next((role for role, pattern in _ROLE_WORDS if pattern.search(words)), "compute")


def gpu_only_reason(knob: Knob) -> str:
    """Why ``knob`` can only matter on a GPU, or ''."""
    if knob.requires == "gpu":
        return f"{knob.name} declares requires = \"gpu\""
    if knob.requires is None and _GPU_ONLY.search(f"{knob.name} {knob.target}"):
        return f"{knob.name} only acts on a GPU (page-locked host memory / device offload)"
    return ""


def _share_of_samples(profile: Profile, pattern: re.Pattern[str]) -> float:
    collapsed: Mapping[str, int] = (profile.stacks or {}).get("collapsed") or {}
    total = sum(collapsed.values())
    if not total:
        return 0.0
    hit = sum(n for stack, n in collapsed.items() if pattern.search(stack))
    return hit / total


def _checkpoint_evidence(profile: Profile) -> tuple[float, str]:
    s = profile.summary
    wall = float(s.get("wall_s") or profile.duration_s or 0.0)
    stall = s.get("reported.checkpoint_stall_s")
    if stall is not None and wall > 0:
        share = float(stall) / wall
        if share >= STALL_SHARE:
            return share, (f"checkpoint saves stalled training {float(stall):.3f} s, {share:.0%} of the "
                           f"{wall:.2f} s run (reported.checkpoint_stall_s)")
    share = _share_of_samples(profile, _SAVE_FRAMES)
    if share >= STALL_SHARE:
        return share, f"{share:.0%} of stack samples are in checkpoint saving (torch.save / fsync)"
    return 0.0, ""


def _loader_evidence(profile: Profile) -> tuple[float, str]:
    share = _share_of_samples(profile, _LOADER_FRAMES)
    if share >= LOADER_SHARE:
        return share, f"{share:.0%} of stack samples wait in the DataLoader (torch/utils/data)"
    return 0.0, ""


def _memory_evidence(profile: Profile, objective: str) -> tuple[float, str]:
    if objective.split(".")[0] in MEMORY_OBJECTIVES:
        return 1.0, f"the objective is {objective}"
    s, host = profile.summary, profile.host
    host_memory = float(host.get("memory_bytes") or 0)
    peak = float(s.get("peak_rss_bytes") or 0)
    if host_memory and peak / host_memory >= MEMORY_SHARE:
        return peak / host_memory, f"peak RSS is {peak / host_memory:.0%} of the host's memory"
    gpu_total = sum(float(g.get("memory_bytes") or 0) for g in host.get("gpus") or [])
    gpu_peak = float(s.get("gpu_memory_peak_bytes") or 0)
    if gpu_total and gpu_peak / gpu_total >= MEMORY_SHARE:
        return gpu_peak / gpu_total, f"peak GPU memory is {gpu_peak / gpu_total:.0%} of the GPUs' memory"
    return 0.0, ""


def evidence(profile: Profile, objective: str) -> dict[str, tuple[float, str]]:
    """Role -> (strength 0..1, the words that say why), for the roles the baseline points at."""
    found = {"checkpoint": _checkpoint_evidence(profile), "dataloader": _loader_evidence(profile),
             "memory": _memory_evidence(profile, objective)}
    return {role: value for role, value in found.items() if value[0] > 0}


def has_gpu(profile: Profile) -> bool:
    return bool(profile.host.get("gpus"))


def rank(knobs: Iterable[Knob], profile: Profile, objective: str) -> list[Ranked]:
    """Knobs in the order to try them (strongest evidence first, then declared order);
    skipped ones last, each with its reason."""
    found = evidence(profile, objective)
    gpu = has_gpu(profile)
    ranked: list[Ranked] = []
    for order, knob in enumerate(knobs):
        role = role_of(knob)
        why_gpu = "" if gpu else gpu_only_reason(knob)
        if why_gpu:
            ranked.append(Ranked(knob, role, -1.0, "", skip=f"no GPU on this host; {why_gpu}"))
            continue
        strength, why = found.get(role, (0.0, ""))
        # Declared order breaks ties; a knob with evidence always outranks one without.
        ranked.append(Ranked(knob, role, strength + (1.0 if strength else 0.0) - order * 1e-6, why))
    return sorted(ranked, key=lambda r: r.score, reverse=True)


@functools.lru_cache(maxsize=4)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """This machine's CPU feature flags, or None where /proc/cpuinfo does not say. Read
    once: they do not change, and /proc/cpuinfo is large on a many-core host."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def skipped_values(knob: Knob, values: Sequence[Any], profile: Profile,
                   flags: AbstractSet[str] | None = None) -> list[tuple[Any, str]]:
    """Values of a kept knob that cannot help on this host: ``amp=fp16`` without a GPU, and
    ``amp=bf16`` without a GPU on a CPU with no bf16 instructions (``flags``: this
    machine's CPU flags; read from /proc/cpuinfo when not given)."""
    if has_gpu(profile):
        return []
    skipped = [(v, f"{knob.name}={v}: CPU autocast has no fast {v} path") for v in values
               if str(v).lower() in _GPU_ONLY_VALUES]
    flags = cpu_flags() if flags is None else flags
    if flags is not None and not flags & _BF16_FLAGS:
        skipped += [(v, f"{knob.name}={v}: no GPU, and this CPU has no bf16 instructions "
                        f"({' or '.join(sorted(_BF16_FLAGS))} not in /proc/cpuinfo): bf16 would be emulated, slower")
                    for v in values if str(v).lower() in _BF16_VALUES]
    return skipped
