"""torchrun / DDP: which process am I, and agreement between ranks so none waits forever.

``torchrun --nproc-per-node 2 -m gradhealth train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK;
we join the process group (gloo on CPU, nccl on GPU). Every decision that changes control flow
(skip a step, stop the run, an interrupt) is all-reduced, so all ranks take the same branch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "agree_any", "shutdown_distributed"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # we joined the process group ourselves, so we also leave it at the end
    owned: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)


def agree_any(flag: torch.Tensor | bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (one all-reduce, also the host sync)."""
    value = torch.as_tensor(flag, dtype=torch.int32, device=device).reshape(())
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group if ``init_distributed`` joined it."""
    if info.enabled and info.owned and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
