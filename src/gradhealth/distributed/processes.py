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

__all__ = ["DistInfo", "init_distributed", "agree_any", "collective_device", "backend_device_type",
           "shutdown_distributed"]


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


def collective_device() -> torch.device:
    """Where a tensor this process makes for a collective of the default group must live.

    The CPU when the group's backend takes CPU tensors (gloo, or a mixed ``cpu:gloo,cuda:nccl``);
    otherwise this process's current device of the backend's kind (NCCL: its CUDA device), since
    NCCL refuses a CPU tensor. The CPU when no group is joined.
    """
    if not dist.is_initialized():
        return torch.device("cpu")
    kind = backend_device_type(str(dist.get_backend()))
    if kind == "cpu":
        return torch.device("cpu")
    module = getattr(torch, kind, None)
    current = getattr(module, "current_device", None)
    return torch.device(kind, current()) if callable(current) else torch.device(kind)


def backend_device_type(backend: str) -> str:
    """The device type whose tensors ``backend`` reduces: "cpu" whenever it takes CPU tensors.

    ``backend`` as ``dist.get_backend()`` spells it: "gloo", "nccl", or pairs "cpu:gloo,cuda:nccl".
    """
    if ":" in backend:
        kinds = [pair.split(":", 1)[0] for pair in backend.split(",")]
    else:
        defaults = getattr(dist.Backend, "default_device_backend_map", {"cpu": "gloo", "cuda": "nccl"})
        kinds = [kind for kind, name in defaults.items() if name == backend]
    # a backend torch does not map (a plugin) is trusted with CPU tensors, as gloo is
    return "cpu" if not kinds or "cpu" in kinds else kinds[0]


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group if ``init_distributed`` joined it."""
    if info.enabled and info.owned and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
