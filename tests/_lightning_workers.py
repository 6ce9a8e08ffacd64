"""Worker processes for tests/test_lightning.py: a Lightning Trainer under ``ModelParallelStrategy`` (FSDP2) on
CPU with gloo, each rank writing what the callback recorded as JSON.

Kept apart from the test file so that spawned processes import only this module.
"""
from __future__ import annotations

import json
import os

import lightning
import torch
import torch.nn.functional as F

import gradhealth
from gradhealth.integrations.lightning import GradHealthCallback

STEPS, BATCH, CLIP = 3, 8, 0.05


class ShardableModule(lightning.LightningModule):
    """An MLP whose blocks FSDP2 shards in ``configure_model`` under ModelParallelStrategy (plain otherwise)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        # widths 7 and 5 do not divide by 2: uneven shards
        self.net = gradhealth.create_model("mlp:depth=3,width=7,in_features=5,num_classes=3")

    def configure_model(self):
        if self.device_mesh is None:  # another strategy: nothing to shard
            return
        from torch.distributed.fsdp import fully_shard

        from gradhealth.train.strategy import fsdp_units

        mesh = self.device_mesh["data_parallel"]
        for unit in fsdp_units(self.net):
            fully_shard(unit, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def dataset() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(1)
    return torch.utils.data.TensorDataset(torch.randn(96, 5, generator=g), torch.randint(0, 3, (96,), generator=g))


def fit(module: ShardableModule, batch_size: int, root: str, sampler=None, **trainer_kwargs) -> GradHealthCallback:
    """``STEPS`` steps clipped at ``CLIP``, on the data in order unless ``sampler`` says otherwise."""
    callback = GradHealthCallback(detail_every=1, activations=False, report=False)
    trainer = lightning.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=CLIP,
                                default_root_dir=root, callbacks=[callback], **trainer_kwargs)
    trainer.fit(module, torch.utils.data.DataLoader(dataset(), batch_size=batch_size, sampler=sampler))
    return callback


def numbers(callback: GradHealthCallback) -> list[dict]:
    """Per step, every per-layer number and the totals the callback recorded."""
    return [{"step": r.step,
             "layers": {name: {"grad_norm": s.grad_norm, "grad_max": s.grad_max, "weight_norm": s.weight_norm,
                               "update_ratio": s.update_ratio, "post": s.grad_norm_post_clip}
                        for name, s in r.layers.items()},
             "total": r.global_grad_norm, "total_post": r.global_grad_norm_post_clip}
            for r in callback.records]


def model_parallel_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from lightning.pytorch.strategies import ModelParallelStrategy

    # LOCAL_RANK tells Lightning that the processes are launched already (here, by the test)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    module = ShardableModule()
    strategy = ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1)
    # rank r takes examples r, r + world, ...: together the ranks' batches are the unsharded run's, in order
    # (Lightning's own distributed sampler would shuffle them)
    sampler = torch.utils.data.DistributedSampler(dataset(), num_replicas=world, rank=rank, shuffle=False)
    callback = fit(module, BATCH, out_dir, sampler, devices=world, strategy=strategy, use_distributed_sampler=False)
    sharded = all(type(p).__name__ == "DTensor" for p in module.parameters())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"records": numbers(callback), "sharded": sharded}, handle)
