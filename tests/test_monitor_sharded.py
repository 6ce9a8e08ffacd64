"""Sharded models (FSDP2, tensor parallelism, HSDP) on CPU with gloo: every number is the whole tensor's.

Each test spawns the ranks (tests/_sharded_workers.py), which write what they recorded, and
compares it with the same model unsharded on the same data, computed here in one process.

Tolerance: relative 1e-5. The sharded run computes the same float32 gradients, but the ranks'
gradients are averaged by a reduce-scatter in another order than one backward over the whole
batch sums them, and the norms are summed from per-shard float32 norms rather than taken at once:
both differ from the oracle by a few float32 roundings (~1e-7 relative each), far below 1e-5, while
a norm that counts a duplicate twice, misses a shard or takes a shard's own value is off by >1%.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.multiprocessing as mp

import _sharded_workers as workers
from _ports import free_port

REL = 1e-5



def _spawn(worker, world: int, tmp_path) -> list[dict]:
    mp.spawn(worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


def _oracle(model, x, y, clip: float | tuple[str, float] | None = None) -> dict:
    return workers.train_step(model, x, y, clip=clip)


def _net_oracle(world: int, clip: float | tuple[str, float] | None = None) -> dict:
    """The unsharded model on every rank's batch at once: the mean loss over it is the ranks' average."""
    batches = [workers.net_batch(r) for r in range(world)]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return _oracle(workers.make_net(), x, y, clip)


def _assert_same_numbers(got: dict, want: dict) -> None:
    assert list(got["layers"]) == list(want["layers"])
    for name, stats in want["layers"].items():
        for key, value in stats.items():
            seen = got["layers"][name][key]
            if value is None:
                assert seen is None, (name, key)
            else:
                assert seen == pytest.approx(value, rel=REL, abs=1e-12), (name, key)
    assert got["total"] == pytest.approx(want["total"], rel=REL)
    assert got["total_post"] == pytest.approx(want["total_post"], rel=REL)


def _same_on_every_rank(ranks: list[dict], key: str) -> None:
    first = ranks[0][key]
    for other in ranks[1:]:
        assert other[key] == first  # bit-identical: every rank combines the same gathered rows


@pytest.mark.timeout(600)
def test_fsdp2_uneven_frozen_tied_mixed_precision_and_nan(tmp_path):
    world = 2
    ranks = _spawn(workers.fsdp_worker, world, tmp_path)
    for key in ("fsdp", "fsdp_clipped", "fsdp_value", "fsdp_agc", "fsdp_autoclip", "nan", "bf16"):
        _same_on_every_rank(ranks, key)
    got = ranks[0]

    _assert_same_numbers(got["fsdp"], _net_oracle(world))
    # clipping under FSDP2 uses the norm over all shards: the post-clip norms are the unsharded clip's
    clipped = _net_oracle(world, clip=0.05)
    _assert_same_numbers(got["fsdp_clipped"], clipped)
    assert got["fsdp_clipped"]["total_post"] == pytest.approx(0.05, rel=1e-4)
    assert got["fsdp_clipped"]["clipped"] == 1.0 and got["fsdp"]["clipped"] is None
    # every clip mode clips the sharded gradients as it clips the whole ones
    for mode, value in (("value", 0.05), ("agc", 0.01), ("autoclip", 50.0)):
        want = _net_oracle(world, clip=(mode, value))
        _assert_same_numbers(got[f"fsdp_{mode}"], want)
        assert got[f"fsdp_{mode}"]["clipped"] == want["clipped"], mode
    # value and agc bounds this tight fire; autoclip's first step clips at its only norm, so does not
    assert got["fsdp_value"]["clipped"] == got["fsdp_agc"]["clipped"] == 1.0
    assert got["fsdp"]["layers"]["frozen"]["grad_norm"] is None
    assert got["fsdp"]["layers"]["frozen"]["weight_norm"] is not None

    # DDP of the same model on the same data records the same numbers
    _assert_same_numbers(got["ddp"], got["fsdp"])

    # bf16 compute: the monitor's numbers are those of the whole gradient gathered from the shards
    full = got["bf16_full_grads"]
    layer_params = {"embed": ["embed.weight"], "fc1": ["fc1.weight", "fc1.bias"], "fc2": ["fc2.weight", "fc2.bias"]}
    for layer, names in layer_params.items():
        stats = got["bf16"]["layers"][layer]
        assert stats["grad_norm"] == pytest.approx(math.hypot(*(full[n][0] for n in names)), rel=REL)
        assert stats["grad_max"] == pytest.approx(max(full[n][1] for n in names), rel=REL)

    # a NaN in the last rank's shard of fc2: every rank names the layer and the rank
    for rank in ranks:
        assert rank["nan"]["nonfinite"] == {"layer": "fc2", "rank": world - 1, "kind": "gradient"}
        assert math.isnan(rank["nan"]["layers"]["fc2"]["grad_norm"])
        assert math.isfinite(rank["nan"]["layers"]["fc1"]["grad_norm"])

    # one gather per recorded step, whatever it measured; clipping adds one all-reduce; a plain
    # model in the same process group costs none
    layers = len(got["fsdp"]["layers"])
    pieces = 6  # grad, post-clip, weight, update, max |grad|, has-grad (the frozen layer has none)
    for rank in ranks:
        assert rank["fsdp"]["collectives"] == {"all_gather_single": 1}
        assert rank["fsdp"]["bytes"] == pieces * layers * 8
        assert rank["fsdp_clipped"]["collectives"] == {"all_gather_single": 1, "all_reduce": 1}
        assert rank["plain"]["collectives"] == {}


@pytest.mark.timeout(600)
def test_tensor_parallel_colwise_rowwise(tmp_path):
    ranks = _spawn(workers.tp_worker, 2, tmp_path)
    _same_on_every_rank(ranks, "tp")
    x, y = workers.mlp_batch()
    # replicated pieces (the row-wise bias, the plain input layer) count once, not once per rank
    _assert_same_numbers(ranks[0]["tp"], _oracle(workers.make_mlp(), x, y, clip=0.05))
    assert ranks[0]["tp"]["collectives"] == {"all_gather_single": 1, "all_reduce": 1}


@pytest.mark.timeout(600)
def test_hsdp_on_a_2x2_mesh(tmp_path):
    world = 4
    ranks = _spawn(workers.hsdp_worker, world, tmp_path)
    _same_on_every_rank(ranks, "hsdp")
    _assert_same_numbers(ranks[0]["hsdp"], _net_oracle(world))
    assert ranks[0]["hsdp"]["collectives"] == {"all_gather_single": 1}
