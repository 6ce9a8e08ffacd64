"""Under DDP the monitor records the norms of the averaged gradients, equal on every rank."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from _ports import free_port

import gradhealth
from gradhealth.monitor import GradientMonitor

WORLD = 2



def _data(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)


def _model():
    torch.manual_seed(0)
    return gradhealth.create_model("mlp:depth=4,width=16,activation=tanh")


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        x, y = _data(rank)
        with GradientMonitor(model) as mon:
            F.cross_entropy(model(x), y).backward()
            mon.step()
            record = mon.records[-1]
        result = {"layers": {k: v.grad_norm for k, v in record.layers.items()}, "global": record.global_grad_norm}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_ddp_norms_are_those_of_the_averaged_gradients_on_both_ranks(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0] == ranks[1]

    # oracle: average the two ranks' local gradients by hand, without DDP
    grads = []
    for rank in range(WORLD):
        model = _model()
        x, y = _data(rank)
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    mean = {n: (grads[0][n] + grads[1][n]) / 2 for n in grads[0]}
    head = torch.cat([mean["head.weight"].flatten(), mean["head.bias"]]).double().norm()
    total = torch.cat([g.flatten() for g in mean.values()]).double().norm()
    assert ranks[0]["layers"]["head"] == pytest.approx(float(head), rel=1e-5)
    assert ranks[0]["global"] == pytest.approx(float(total), rel=1e-5)
