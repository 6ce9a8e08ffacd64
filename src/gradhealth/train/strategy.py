"""How a multi-process run spreads the model: ``ddp`` (a full copy per rank) or ``fsdp`` (FSDP2, sharded).

``torchrun --nproc-per-node N -m gradhealth train --strategy fsdp ...``: FSDP2
(``torch.distributed.fsdp.fully_shard``) shards every parameter across the ranks, one unit at a time:

* a model with an ``fsdp_units()`` method (yours, from ``file.py:factory``) names its own units;
* otherwise the units are the children (those with parameters) of each outermost ``nn.Sequential``
  or ``nn.ModuleList`` in the model: the blocks of the built-in MLP and convnet, the residual
  blocks of each ResNet stage, the transformer's blocks; a model that is itself an
  ``nn.Sequential`` has its own children as units;
* then the root, which takes every parameter left over (embeddings, the head, tied weights).

Each unit's parameters are gathered just before it runs and freed after, so at most one unit is
whole at a time. Gradient norms and clipping see the whole tensors (``gradhealth.distributed``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from gradhealth.errors import ConfigError
from gradhealth.distributed import DistInfo

__all__ = ["STRATEGIES", "fsdp_units", "spread_model", "no_gradient_sync"]

STRATEGIES = ("ddp", "fsdp")
_CONTAINERS = (nn.Sequential, nn.ModuleList)


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards as units before the root, by the rule in the module docstring."""
    own = getattr(model, "fsdp_units", None)
    if callable(own):
        units = list(own())
        if not all(isinstance(u, nn.Module) for u in units):
            raise ConfigError(f"{type(model).__name__}.fsdp_units() must return submodules of the model.")
        return units
    containers = [model] if isinstance(model, _CONTAINERS) else []
    inside: set[int] = set()
    for _, module in model.named_modules():
        if module is model or id(module) in inside:
            continue
        if isinstance(module, _CONTAINERS):
            containers.append(module)
            # the containers inside this one belong to its units
            inside.update(id(m) for m in module.modules())
    return [child for c in containers for child in c.children() if any(True for _ in child.parameters())]


def spread_model(model: nn.Module, strategy: str, info: DistInfo, device: torch.device) -> nn.Module:
    """The module the loop runs: ``model`` itself (one process, or sharded in place by FSDP2) or its DDP wrapper."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    if not info.enabled:
        return model
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for unit in fsdp_units(model):
        fully_shard(unit)
    fully_shard(model)
    return model


@contextlib.contextmanager
def no_gradient_sync(net: nn.Module, info: DistInfo) -> Iterator[None]:
    """Accumulate this micro-batch's gradients locally: the ranks synchronise on the last one only."""
    if not info.enabled:
        yield
    elif hasattr(net, "no_sync"):  # DDP
        with net.no_sync():
            yield
    else:  # FSDP2
        net.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            net.set_requires_gradient_sync(True)
