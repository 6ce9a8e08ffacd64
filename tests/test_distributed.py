"""``gradhealth.distributed``: where a collective's tensors live, and a rank with nothing to measure (gloo)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.multiprocessing as mp

import _sharded_workers as workers
from _ports import free_port
from gradhealth.distributed import backend_device_type, collective_device


def test_backend_device_type_is_cpu_whenever_the_backend_takes_cpu_tensors():
    assert backend_device_type("gloo") == "cpu"
    assert backend_device_type("cpu:gloo,cuda:nccl") == "cpu"
    # NCCL refuses a CPU tensor: a rank's own zero must be made on its CUDA device
    assert backend_device_type("nccl") == "cuda"
    assert backend_device_type("cuda:nccl") == "cuda"


def test_collective_device_without_a_process_group_is_the_cpu():
    assert not torch.distributed.is_initialized()
    assert collective_device() == torch.device("cpu")



@pytest.mark.timeout(600)
def test_a_rank_without_tensors_joins_the_global_norm(tmp_path):
    world = 3
    mp.spawn(workers.no_tensor_rank_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    # the pieces of ranks 0 and 1: [1, 2] and [2, 4]; rank 2 adds its zero
    want = math.sqrt(1 + 4 + 4 + 16)
    for rank in ranks:
        assert rank["norm"] == pytest.approx(want, rel=1e-6)  # float32 norms of the pieces
        assert rank["device"] == rank["collective_device"] == "cpu"  # gloo reduces on the CPU
