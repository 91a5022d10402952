"""Distributed training seen rank by rank: who each process is, what it cost, where it waited.

A ``torchrun`` job is a process tree like any other: the launcher and one worker per
rank (``RANK``/``LOCAL_RANK`` in each worker's environment, read by the ``processes``
collector into ``annotations["processes"]``). This module joins that table with the
stacks py-spy took of every process (``process N:"cmd"`` roots in the collapsed stacks)
into ``annotations["ranks"]``:

``ranks``      one entry per rank, by rank: ``rank``, ``pid``, ``cpu_s``,
               ``peak_rss_bytes``, ``samples``, ``collective_pct`` (share of its samples
               inside a collective: frames of ``torch.distributed``, c10d, gloo or NCCL),
               ``hotspots`` (its top functions by self samples)
``straggler``  the rank the others wait for, and why: in data parallel training every
               rank meets the others in each gradient all-reduce, so the fast ranks'
               stacks show the wait and the slowest one's do not. The straggler is the
               rank with the smallest collective share; without stacks, the one with the
               most CPU seconds. Absent with fewer than two ranks or when nothing tells
               them apart (shares within ``TIE_PCT`` points, CPU within ``TIE_CPU``).
``note``       when a rank was gone ``GONE_S`` or more before the last one (a crash, a
               kill, an out-of-memory), which one went first and when: the launcher then
               stops the rest, so the first to go is where to look. When the run failed,
               a lead of one sampling tick is enough (``FAILED_GONE_S``).

Python stacks see a collective only where Python calls it (``dist.all_reduce``,
``barrier``, DDP's buffer sync); the all-reduces that DDP starts from C++ autograd hooks
during ``backward()`` show up as collective frames only with native stacks
(``perfpilot profile --native``), and as backward time without them.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any, Mapping

from perfpilot.profilers.hotspots import aggregate, split_stack
from perfpilot.profilers.profile import Profile

COLLECTIVE = re.compile(r"torch/distributed/|c10d|gloo|nccl|all_reduce|allreduce|all_gather|reduce_scatter|"
                        r"broadcast|barrier", re.I)
TIE_PCT = 5.0
TIE_CPU = 0.05
GONE_S = 0.5
FAILED_GONE_S = 0.05
TOP = 3


def _per_pid(collapsed: Mapping[str, int]) -> dict[int, Counter[str]]:
    by_pid: dict[int, Counter[str]] = defaultdict(Counter)
    for stack, count in collapsed.items():
        pid, frames = split_stack(stack)
        if pid is not None and frames:
            by_pid[pid][stack] += count
    return by_pid


def _collective_pct(stacks: Mapping[str, int]) -> float:
    total = sum(stacks.values())
    waiting = sum(n for stack, n in stacks.items() if COLLECTIVE.search(stack))
    return 100.0 * waiting / total if total else 0.0


def _straggler(ranks: list[dict[str, Any]]) -> dict[str, Any] | None:
    if len(ranks) < 2:
        return None
    sampled = [r for r in ranks if r["samples"]]
    if len(sampled) == len(ranks):
        order = sorted(sampled, key=lambda r: r["collective_pct"])
        if order[1]["collective_pct"] - order[0]["collective_pct"] >= TIE_PCT:
            slow = order[0]
            others = ", ".join("{:.0f}%".format(r["collective_pct"]) for r in order[1:])
            return {"rank": slow["rank"], "pid": slow["pid"],
                    "why": (f"rank {slow['rank']} spent {slow['collective_pct']:.0f}% of its samples in collectives, "
                            f"the others {others}: they wait for it")}
    order = sorted(ranks, key=lambda r: r["cpu_s"], reverse=True)
    if order[0]["cpu_s"] > 0 and (order[0]["cpu_s"] - order[1]["cpu_s"]) / order[0]["cpu_s"] >= TIE_CPU:
        slow = order[0]
        return {"rank": slow["rank"], "pid": slow["pid"],
                "why": f"rank {slow['rank']} used the most CPU time ({slow['cpu_s']:.2f} s; next "
                       f"{order[1]['cpu_s']:.2f} s)"}
    return None


def rank_view(profile: Profile) -> dict[str, Any] | None:
    """``{"ranks": [...], "straggler": {...} | None}`` for a run with ranked processes, else None."""
    processes = [p for p in profile.annotations.get("processes") or [] if p.get("rank") is not None]
    if not processes:
        return None
    by_pid = _per_pid((profile.stacks or {}).get("collapsed") or {})
    cwd = (profile.target or {}).get("cwd")
    ranks = []
    for proc in sorted(processes, key=lambda p: (p["rank"], p["pid"])):
        stacks = by_pid.get(int(proc["pid"]), Counter())
        spots = aggregate(stacks, top=TOP, lines_per_function=1, cwd=cwd, with_source=False) if stacks else []
        ranks.append({"rank": int(proc["rank"]), "pid": int(proc["pid"]), "cpu_s": float(proc.get("cpu_s") or 0.0),
                      "peak_rss_bytes": int(proc.get("peak_rss_bytes") or 0), "samples": sum(stacks.values()),
                      "collective_pct": round(_collective_pct(stacks), 1), "ended_s": float(proc.get("ended_s", proc.get("last_s")) or 0.0),
                      "hotspots": [{"function": s["function"], "file": s["short_file"], "line": s["line"],
                                    "self_pct": s["self_pct"]} for s in spots]})
    return {"ranks": ranks, "straggler": _straggler(ranks), "note": _first_gone(ranks, profile.exit_code)}


def _first_gone(ranks: list[dict[str, Any]], exit_code: int | None) -> str | None:
    if len(ranks) < 2:
        return None
    first = min(ranks, key=lambda r: r["ended_s"])
    last = max(r["ended_s"] for r in ranks)
    # After a failure the launcher stops the others within a tick or two: any lead counts.
    if last - first["ended_s"] < (FAILED_GONE_S if exit_code else GONE_S):
        return None
    failed = f"the run failed (exit {exit_code}); " if exit_code else ""
    return (f"{failed}rank {first['rank']} (pid {first['pid']}) was the first to go, at "
            f"{first['ended_s']:.1f} s, {last - first['ended_s']:.1f} s before the last rank")


def annotate(profile: Profile) -> None:
    """Add ``annotations["ranks"]`` when the run had ranked processes."""
    view = rank_view(profile)
    if view is not None:
        profile.annotations["ranks"] = view
