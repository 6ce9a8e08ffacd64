"""Norms of sharded tensors (DTensor: FSDP2, tensor parallelism, HSDP), one collective at a time.

The monitor, the clippers and the training loop all measure sharded parameters and gradients here,
so they agree on what a norm of a sharded tensor is: the norm of the whole (unsharded) tensor.

Each rank measures its own piece (``DTensor.to_local()``) and contributes its squared norm; the
whole tensor's squared norm is the sum over the mesh dims the tensor is sharded on. Along a mesh
dim the tensor is replicated on (tensor-parallel duplicates, the replicate dim of an HSDP mesh)
every rank holds the same values, so only the rank at coordinate 0 of each such dim counts: the
sum over ALL ranks of the counted contributions is the whole tensor's, whatever the mesh. That is
why one world-wide collective serves every parameter at once, however their meshes differ
(torchtitan's ``clip_grad_norm_`` and Megatron's ``clip_grads`` do the same).

A rank that does not count still multiplies its contribution by 0 rather than dropping it: a NaN
or Inf times 0 is NaN, so a non-finite value on any rank reaches every rank's sum.

Plain (non-DTensor) tensors never come here: callers check ``is_sharded`` first, so a plain model
pays nothing. Torch only, like ``tensor_norms``.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from gradhealth.distributed.processes import collective_device
from gradhealth.tensor_norms import NORM_DTYPE, fused_norms, max_abs

__all__ = [
    "is_sharded",
    "own_pieces",
    "local_pieces",
    "counted_squares",
    "local_maxes",
    "gather_rows",
    "sum_over_ranks",
    "max_over_ranks",
    "sharded_global_norm",
]

try:  # torch built without distributed support has no DTensor
    from torch.distributed.tensor import DTensor, Partial, Replicate
except ImportError:  # pragma: no cover - every supported torch has it
    DTensor = None  # type: ignore[assignment,misc]


def is_sharded(tensors: Iterable[Tensor | None]) -> bool:
    """Whether any of the tensors is a DTensor (so its norm needs the other ranks' pieces)."""
    return DTensor is not None and any(isinstance(t, DTensor) for t in tensors)


def _resolved(t: Tensor) -> Tensor:
    """``t`` with pending sums (``Partial``) carried out: a partial piece's norm is not a piece of the norm.

    Costs a collective, and only for a tensor that is still Partial (FSDP2 and the tensor-parallel
    styles reduce their gradients before the optimizer sees them, so normally none is).
    """
    if any(isinstance(p, Partial) for p in t.placements):
        placements = [Replicate() if isinstance(p, Partial) else p for p in t.placements]
        t = t.redistribute(t.device_mesh, placements)
    return t


def _counted_here(t: Tensor) -> bool:
    """Whether this rank's piece of ``t`` counts: it holds a piece, at coordinate 0 of every replicate dim."""
    if not isinstance(t, DTensor):
        # a plain tensor in a sharded model is a full copy on every rank: rank 0's counts
        return not dist.is_initialized() or dist.get_rank() == 0
    coordinate = t.device_mesh.get_coordinate()
    if coordinate is None:  # this rank is not in the tensor's mesh
        return False
    return all(c == 0 for c, p in zip(coordinate, t.placements) if isinstance(p, Replicate))


def local_pieces(tensors: list[Tensor]) -> tuple[list[Tensor], list[bool]]:
    """This rank's piece of every tensor (plain tensors as they are) and whether each piece counts."""
    pieces, counted = [], []
    for t in tensors:
        if isinstance(t, DTensor):
            t = _resolved(t)
            counted.append(_counted_here(t))
            pieces.append(t.to_local())
        else:
            counted.append(_counted_here(t))
            pieces.append(t)
    return pieces, counted


def own_pieces(tensors: list[Tensor]) -> list[Tensor]:
    """The tensors as this rank holds them: a sharded list's local pieces, a plain list itself.

    For checks each rank makes on its own and then agrees on (e.g. all finite, then one all-reduce).
    """
    return local_pieces(tensors)[0] if is_sharded(tensors) else tensors


def counted_squares(pieces: list[Tensor], counted: list[bool]) -> Tensor:
    """Per tensor, the squared norm of this rank's piece if it counts, else 0 (NaN stays NaN), float64.

    Summed over all ranks these are the squared norms of the whole tensors. Squares of float64
    norms overflow only past 1e154, far beyond any float32 or bf16 gradient.
    """
    norms = fused_norms(pieces)
    weight = torch.tensor(counted, dtype=NORM_DTYPE, device=norms.device)
    return norms.square() * weight


def local_maxes(pieces: list[Tensor]) -> Tensor:
    """Per tensor, the largest |element| of this rank's piece (0 for an empty piece), float64."""
    return max_abs(pieces)


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def gather_rows(vector: Tensor) -> Tensor:
    """Every rank's ``vector`` as the rows of a ``(world, n)`` matrix: ONE collective.

    A gather rather than a reduction so that sums and maxima travel together, every rank then
    combines the same rows in the same order (results bit-identical on every rank), and the rows
    say which rank a non-finite value came from.
    """
    world = _world()
    if world == 1:
        return vector.reshape(1, -1)
    vector = vector.contiguous()
    out = torch.empty(world * vector.numel(), dtype=vector.dtype, device=vector.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, vector)
    return out.reshape(world, -1)


def sum_over_ranks(rows: Tensor) -> Tensor:
    """Column sums of gathered rows, added in rank order on every rank."""
    return rows.sum(0)


def max_over_ranks(rows: Tensor) -> Tensor:
    """Column maxima of gathered rows (NaN wins, as in ``torch.amax``)."""
    return rows.amax(0)


def sharded_global_norm(tensors: list[Tensor]) -> Tensor:
    """The L2 norm of all the whole tensors together, float64, identical on every rank: one all-reduce.

    For clipping: its coefficient must come from the global norm over all shards, never from a
    shard's own. Every rank must call it (it is a collective), also a rank with no tensors: its
    zero share is made where the group's backend reduces (``collective_device``: a CUDA device
    under NCCL, which refuses a CPU tensor).
    """
    pieces, counted = local_pieces(tensors)
    if not pieces:
        total = torch.zeros((), dtype=NORM_DTYPE, device=collective_device())
    else:
        total = counted_squares(pieces, counted).sum()
    if _world() > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.sqrt()
