"""A sharded model's step: every rank's per-layer pieces combined into whole-tensor norms, in ONE collective.

``measure.py`` leaves, for a sharded model, this rank's share of each layer's squared norm
(gradient, post-clip gradient, weight, update) and its own largest |grad|. Right before the step's
host transfer all of them are stacked into one vector and gathered from every rank at once
(``gradhealth.distributed.gather_rows``); every rank then adds the squares and takes the maxima in
the same order, so the numbers are the whole tensors' and bit-identical on every rank.

What each rank saw for itself (loss, metrics, activation statistics, inputs) is not combined: it
stays that rank's own.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradhealth.distributed import gather_rows, max_over_ranks, sum_over_ranks

__all__ = ["SQUARED_PIECES", "MAX_PIECES", "BAD_RANK_PIECE", "combine_ranks"]

# pieces holding a rank's share of a squared L2 norm: summed over the ranks, then square-rooted
SQUARED_PIECES = ("grad_l2", "post_l2", "weight_l2", "update_l2")
# pieces every rank measures in full on its own piece: the largest over the ranks
MAX_PIECES = ("grad_max", "has_grad")
# per layer, the lowest rank whose gradient share was NaN/Inf (-1: none)
BAD_RANK_PIECE = "grad_bad_rank"


def combine_ranks(pieces: dict[str, Tensor]) -> dict[str, Tensor]:
    """The step's pieces with every rank's shares combined (same keys, plus ``grad_bad_rank``).

    Every rank must call it at the same point of the same step: it is a collective.
    """
    keys = [k for k in (*SQUARED_PIECES, *MAX_PIECES) if k in pieces]
    if not keys:
        return pieces
    device = pieces[keys[0]].device
    rows = gather_rows(torch.cat([pieces[k].to(device).reshape(-1) for k in keys]))
    combined = dict(pieces)
    offset = 0
    for key in keys:
        n = pieces[key].numel()
        part = rows[:, offset:offset + n]
        offset += n
        combined[key] = sum_over_ranks(part).sqrt() if key in SQUARED_PIECES else max_over_ranks(part)
        if key == "grad_l2":
            bad = ~torch.isfinite(part)
            # argmax finds the first True: the lowest rank that had a non-finite share
            first = bad.to(torch.int8).argmax(0).to(part.dtype)
            combined[BAD_RANK_PIECE] = torch.where(bad.any(0), first, torch.full_like(first, -1.0))
    return combined
