"""Worker processes for tests/test_monitor_sharded.py and tests/test_distributed.py: each writes what its rank recorded as JSON.

Kept apart from the test file so that spawned processes import only this (fast) module.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gradhealth.monitor import GradientMonitor
from gradhealth.remedies.clip import create_clipper

VOCAB, BATCH, SEQ = 11, 4, 3
LR = 0.1


class Net(nn.Module):
    """Dims 7, 5 and 11 divide by neither 2 nor 4 (uneven shards); a frozen layer; tied embedding and head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 6)
        self.fc1 = nn.Linear(6, 7)
        self.act = nn.Tanh()
        self.frozen = nn.Linear(7, 5)
        self.fc2 = nn.Linear(5, 6)
        self.head = nn.Linear(6, VOCAB, bias=False)
        self.head.weight = self.embed.weight
        self.frozen.requires_grad_(False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(self.embed(idx).mean(1)))
        return self.head(torch.relu(self.fc2(self.frozen(h))))


class Mlp(nn.Module):
    """Two tensor-parallel linears (column- then row-wise) around a plain one."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.up = nn.Linear(6, 8)
        self.act = nn.Tanh()
        self.down = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(self.inp(x))))


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def make_mlp() -> Mlp:
    torch.manual_seed(0)
    return Mlp()


def net_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g), torch.randint(0, VOCAB, (BATCH,), generator=g)


def mlp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(BATCH, 5, generator=g), torch.randint(0, 3, (BATCH,), generator=g)


def summary(record) -> dict:
    """What the tests compare: every per-layer number, the totals, the first non-finite event."""
    event = record.first_nonfinite
    return {
        "layers": {name: {"grad_norm": s.grad_norm, "grad_max": s.grad_max, "weight_norm": s.weight_norm,
                          "update_ratio": s.update_ratio, "post": s.grad_norm_post_clip}
                   for name, s in record.layers.items()},
        "total": record.global_grad_norm,
        "total_post": record.global_grad_norm_post_clip,
        "nonfinite": None if event is None else {"layer": event.layer, "rank": event.rank, "kind": event.kind},
    }


class Counter:
    """Counts the collectives (and the bytes they carry from this rank) while active."""

    NAMES = ("all_reduce", "all_gather_single", "all_gather_into_tensor", "all_gather", "broadcast")

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.bytes = 0

    @contextmanager
    def counting(self):
        originals = {n: getattr(dist, n) for n in self.NAMES if hasattr(dist, n)}

        def wrap(name, fn):
            def counted(*args, **kwargs):
                self.calls[name] = self.calls.get(name, 0) + 1
                sent = args[1] if name.startswith("all_gather_") else args[0]
                if isinstance(sent, torch.Tensor):
                    self.bytes += sent.numel() * sent.element_size()
                return fn(*args, **kwargs)
            return counted

        for name, fn in originals.items():
            setattr(dist, name, wrap(name, fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(dist, name, fn)


def train_step(model: nn.Module, x, y, *, clip: float | tuple[str, float] | None = None, poison=None,
               count: bool = False) -> dict:
    """One monitored SGD step (every number on a detailed step); the summary and the collectives it cost.

    ``clip``: a max norm, or (mode, value) for another clip mode.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)
    counter = Counter()
    with GradientMonitor(model, optimizer=opt, detail_every=1, activations=False) as mon:
        F.cross_entropy(model(x), y).backward()
        if poison is not None:
            poison(model)
        with counter.counting():
            mon.step()
            if clip is not None:
                mode, value = clip if isinstance(clip, tuple) else ("norm", clip)
                head = {"model": model, "head": "head"} if mode == "agc" else {}
                result = create_clipper(mode, value, **head)(model.parameters())
                mon.after_clip(metrics={"clipped": result.clipped})
            opt.step()
        record = mon.records[-1]
    out = summary(record)
    out["clipped"] = record.metrics.get("clipped")
    if count:
        out["collectives"] = counter.calls
        out["bytes"] = counter.bytes
    return out


def fsdp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """FSDP2 with uneven shards, frozen and tied parameters; DDP of the same; bf16 mixed precision; NaN."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _join(rank, world, port)
    try:
        x, y = net_batch(rank)
        result = {}

        def shard(mp=None):
            model = make_net()
            kwargs = {"mp_policy": mp} if mp is not None else {}
            for block in (model.fc1, model.fc2):
                fully_shard(block, **kwargs)
            fully_shard(model, **kwargs)
            return model

        result["fsdp"] = train_step(shard(), x, y, count=True)
        result["fsdp_clipped"] = train_step(shard(), x, y, clip=0.05, count=True)
        for mode, value in (("value", 0.05), ("agc", 0.01), ("autoclip", 50.0)):
            result[f"fsdp_{mode}"] = train_step(shard(), x, y, clip=(mode, value))
        result["ddp"] = train_step(nn.parallel.DistributedDataParallel(make_net()), x, y)
        result["plain"] = train_step(make_net(), x, y, count=True)

        # bf16 compute: the oracle is the whole gradient itself, gathered from the shards
        model = shard(MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=LR)
        with GradientMonitor(model, optimizer=opt, detail_every=1, activations=False) as mon:
            F.cross_entropy(model(x), y).backward()
            full = {n: p.grad.full_tensor().double() for n, p in model.named_parameters() if p.grad is not None}
            mon.step()
            opt.step()
            result["bf16"] = summary(mon.records[-1])
        result["bf16_full_grads"] = {n: [float(g.norm()), float(g.abs().max())] for n, g in full.items()}

        def poison(m):
            if rank == world - 1:
                m.fc2.weight.grad.to_local()[0, 0] = float("nan")

        result["nan"] = train_step(shard(), x, y, poison=poison)
        _write(out_dir, rank, result)
    finally:
        dist.destroy_process_group()


def tp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Tensor parallelism: column-wise then row-wise linears, every rank on the same batch."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    _join(rank, world, port)
    try:
        mesh = init_device_mesh("cpu", (world,))
        model = parallelize_module(make_mlp(), mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
        x, y = mlp_batch()
        _write(out_dir, rank, {"tp": train_step(model, x, y, clip=0.05, count=True)})
    finally:
        dist.destroy_process_group()


def hsdp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """HSDP on a 2 x 2 mesh: replicate across the first dim, shard across the second."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _join(rank, world, port)
    try:
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
        model = make_net()
        for block in (model.fc1, model.fc2):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        x, y = net_batch(rank)
        _write(out_dir, rank, {"hsdp": train_step(model, x, y, count=True)})
    finally:
        dist.destroy_process_group()


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _write(out_dir: str, rank: int, result: dict) -> None:
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def no_tensor_rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """``sharded_global_norm`` when the last rank holds no tensors at all: it still joins the sum."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    from gradhealth.distributed import collective_device, sharded_global_norm

    _join(rank, world, port)
    try:
        mesh = init_device_mesh("cpu", (world,))
        # rank r's piece of a sharded tensor is [r + 1, 2 (r + 1)]; the last rank has nothing to measure
        pieces = [] if rank == world - 1 else [
            DTensor.from_local(torch.tensor([rank + 1.0, 2.0 * (rank + 1)]), mesh, [Shard(0)], run_check=False)]
        norm = sharded_global_norm(pieces)
        _write(out_dir, rank, {"norm": float(norm), "device": str(norm.device),
                               "collective_device": str(collective_device())})
    finally:
        dist.destroy_process_group()
