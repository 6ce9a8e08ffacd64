"""Checkpoints of a sharded (FSDP2) run: a folder each rank writes its shards into, replaced whole.

``OUT/checkpoints/last.dcp/`` holds the model and optimizer through ``torch.distributed.checkpoint``
(every rank writes its own shards, no rank ever holds the whole model) and one ``rankN.pt`` per
rank with what is not sharded: that rank's RNG states, and the scheduler, scaler, clipper, monitor,
step and config (the same on every rank). Loaded with ``weights_only=True`` like ``checkpoint.py``.

Written atomically: into ``.last.dcp.tmp`` first; only when every rank has finished is the old
folder moved aside, the new one renamed into place and the old one deleted. A run killed mid-save
leaves the last good checkpoint where it was (or, killed between the two renames, at
``last.dcp.old``, which loading falls back to).

A sharded checkpoint resumes on the same number of ranks: the data order and the RNG states are
per rank.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradhealth.errors import CheckpointError
from gradhealth.train.checkpoint import FORMAT, capture_rng_state, restore_rng_state
from gradhealth.distributed import DistInfo

__all__ = ["save_sharded_checkpoint", "load_sharded_checkpoint", "restore_rest", "is_sharded_checkpoint"]


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` names a sharded checkpoint folder (or one whose save was cut short)."""
    path = Path(path)
    return path.suffix == ".dcp" or path.is_dir() and any(path.glob("rank*.pt"))


def _barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def save_sharded_checkpoint(folder: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                            state: dict[str, Any], info: DistInfo) -> Path:
    """Every rank writes its shards and its ``rankN.pt`` (``state`` plus its RNG); a collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(folder)
    temp = folder.with_name(f".{folder.name}.tmp")
    try:
        if info.is_main:
            shutil.rmtree(temp, ignore_errors=True)
            temp.mkdir(parents=True)
        _barrier(info)
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(temp))
        own = {**state, "format": dict(FORMAT), "world_size": info.world_size, "rng": capture_rng_state()}
        torch.save(own, temp / f"rank{info.rank}.pt")
        _barrier(info)  # every rank's part is on disk
        if info.is_main:
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if folder.exists():
                folder.rename(old)
            temp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        _barrier(info)
    except OSError as err:
        raise CheckpointError(f"writing checkpoint {str(folder)!r} failed ({err}); the previous one is unchanged.") from None
    return folder


def load_sharded_checkpoint(folder: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                            info: DistInfo) -> dict[str, Any]:
    """Load the model's and the optimizer's shards in place; this rank's other state (see ``restore_rest``)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = Path(folder)
    if not folder.is_dir() and folder.with_name(folder.name + ".old").is_dir():
        folder = folder.with_name(folder.name + ".old")  # the save was cut short between its two renames
    if not (folder / "rank0.pt").is_file():
        raise CheckpointError(f"sharded checkpoint {str(folder)!r} does not exist or is incomplete; "
                              "check the path (sharded runs write OUT/checkpoints/last.dcp).")
    saved_world = torch.load(folder / "rank0.pt", weights_only=True).get("world_size")
    if saved_world != info.world_size:
        raise CheckpointError(f"checkpoint {str(folder)!r} was written by {saved_world} processes and this run has "
                              f"{info.world_size}; resume it with {saved_world} processes in all (torchrun --nnodes "
                              "times --nproc-per-node).")
    own = torch.load(folder / f"rank{info.rank}.pt", weights_only=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    loaded = {"model": model_state, "optimizer": optim_state}
    dcp.load(loaded, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
    return own


def restore_rest(own: dict[str, Any], *, scheduler: Any, scaler: Any, clipper: Any) -> dict[str, Any]:
    """Restore what a rank's ``rankN.pt`` holds besides the shards; returns step, epoch, config, monitor, extra."""
    for key, obj in (("scheduler", scheduler), ("scaler", scaler), ("clipper", clipper)):
        if obj is not None and own.get(key) is not None:
            obj.load_state_dict(own[key])
    restore_rng_state(own["rng"])
    return {key: own.get(key) for key in ("step", "epoch", "config", "monitor", "extra")}
