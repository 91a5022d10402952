"""Distributed data parallel for ``train.py`` when it is started by ``torchrun``.

``torchrun --nproc_per_node 2 train.py`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous address; this module turns them into a process group (``gloo`` on CPU,
``nccl`` on GPUs), wraps the model in ``DistributedDataParallel`` and shards the data
with a ``DistributedSampler``. The effective batch stays global: each rank takes
``effective_batch / WORLD_SIZE`` samples a step, so the loss curve does not depend on
the process count. Rank 0 alone saves checkpoints, prints and reports figures.

DDP knobs (flag, ``TRAIN_*`` variable, or ``train.toml`` ``[ddp]``): ``bucket_cap_mb``
(gradient bucket size for the all-reduce) and ``gradient_as_bucket_view`` (gradients
alias the buckets: one copy less). The process count is torchrun's own
``--nproc_per_node``, which torchrun also reads from ``PET_NPROC_PER_NODE``: declare that
variable as an env knob to search it.

Multi-node: the same script under ``torchrun --nnodes N --node_rank R
--rdzv_endpoint HOST:PORT``; perfpilot profiles one node's tree per node (``perfpilot
profile -- torchrun ...`` on each), and a fleet view comes from ``perfpilot daemon`` on
every node scraped by one Prometheus -- no scheduler of perfpilot's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def detect() -> World:
    """The torchrun environment, or a world of one."""
    try:
        return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                     int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as exc:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (torchrun sets them): {exc}") from None


def start(world: World, device_type: str) -> Any:
    """Join the process group; returns the device this rank trains on."""
    import torch
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend=backend)
    return device


def wrap(model: Any, world: World, device: Any, bucket_cap_mb: float, gradient_as_bucket_view: bool) -> Any:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=bucket_cap_mb,
                                   gradient_as_bucket_view=gradient_as_bucket_view)


def sampler(dataset: Any, world: World, seed: int) -> Any:
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed,
                              drop_last=True)


def mean_across_ranks(value: float, device: Any) -> float:
    """The mean of ``value`` over every rank (an all-reduce the stacks can see)."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def finish(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
