"""Adaptive Gradient Clipping (Brock et al. 2021, "High-Performance Large-Scale Image Recognition
Without Normalization", NFNets): clip each unit's gradient relative to the norm of its weights.

For unit i of a weight W with gradient G:  max_i = clip * max(||W_i||, eps)  and, where
||G_i|| > max_i,  G_i <- G_i * max_i / ||G_i||.  A unit is an output row: dim 0 of a Linear or
convolution weight, the norm taken over all other dims; a bias, a norm scale or a scalar gain is
one unit. The classifier head is left unclipped, as in the paper; it is named by module, never
by position ("the last two parameters" breaks as soon as a model registers its head first).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gradhealth.distributed import is_sharded, local_pieces
from gradhealth.errors import ConfigError
from gradhealth.remedies._clip_base import ClipResult, GradClipper, Parameters, grads_of
from gradhealth.tensor_norms import NORM_DTYPE

__all__ = ["AGC_EPS", "AdaptiveGradClipper", "unit_norms", "resolve_head"]

# The weight-norm floor of the NFNet reference: a zero-initialised unit may still move.
AGC_EPS = 1e-3
# Only guards the division; units this small are never clipped.
_GRAD_FLOOR = 1e-6


def unit_norms(tensors: list[Tensor]) -> list[Tensor]:
    """Float64 L2 norm per unit: shape ``(out,)`` for tensors of 2+ dims, ``()`` for vectors and scalars.

    Vectors and scalars share one fused ``_foreach_norm``; a matrix or kernel needs a norm over
    dims 1.., which the foreach kernels do not offer, so it takes one reduction each.
    """
    norms: list[Tensor | None] = [None] * len(tensors)
    flat = [i for i, t in enumerate(tensors) if t.dim() <= 1]
    if flat:
        for i, n in zip(flat, torch._foreach_norm([tensors[i] for i in flat], 2, dtype=NORM_DTYPE)):
            norms[i] = n
    for i, t in enumerate(tensors):
        if t.dim() > 1:
            norms[i] = torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), dtype=NORM_DTYPE)
    return norms  # type: ignore[return-value]


def resolve_head(model: nn.Module | None, head: nn.Module | str | None) -> nn.Module:
    """The classifier head AGC leaves alone: ``head`` (a module or a submodule name) or ``model.get_classifier()``."""
    if model is None:
        raise ConfigError(
            "agc leaves the classifier head unclipped, so it needs the model: pass model= "
            "(and head= if the model has no get_classifier())."
        )
    if head is None:
        getter = getattr(model, "get_classifier", None)
        if not callable(getter):
            raise ConfigError(
                f"agc leaves the classifier head unclipped but {type(model).__name__} has no get_classifier(); "
                "pass head= (the head module or its name in model.named_modules(); --clip-head NAME on the "
                "command line)."
            )
        head = getter()
    if isinstance(head, str):
        try:
            head = model.get_submodule(head)
        except AttributeError:
            raise ConfigError(
                f"the model has no submodule named {head!r}; pass head= (--clip-head) as a name from "
                "model.named_modules()."
            ) from None
    if not isinstance(head, nn.Module):
        raise ConfigError(f"head must be a module or a submodule name, not {type(head).__name__}.")
    if not any(m is head for m in model.modules()):
        raise ConfigError("the head module given is not part of the model; pass one of the model's own submodules.")
    return head


class AdaptiveGradClipper(GradClipper):
    """Unit-wise AGC with clip factor ``value`` (the paper's lambda; 0.01 is its choice for large batches)."""

    mode = "agc"

    def __init__(self, clip_factor: float, head: nn.Module, eps: float = AGC_EPS):
        super().__init__()
        self.value = clip_factor
        self.head = head
        self.eps = eps

    @torch.no_grad()
    def __call__(self, parameters: Parameters) -> ClipResult:
        params, grads = grads_of(parameters)
        if not grads:
            return super().__call__(grads)
        device = grads[0].device
        # looked up on every call: the head's parameters may be replaced after the clipper is built
        head_ids = {id(p) for p in self.head.parameters()}
        body = [i for i, p in enumerate(params) if id(p) not in head_ids]
        kept = [grads[i] for i, p in enumerate(params) if id(p) in head_ids]
        body_grads = [grads[i] for i in body]
        body_weights = [params[i].detach() for i in body]
        sharded = is_sharded(grads)
        if sharded:
            body_grads, body_weights, body_counted, kept, kept_counted = _local_units(body_grads, body_weights, kept)

        grad_units = unit_norms(body_grads)
        weight_units = unit_norms(body_weights)
        sizes = [n.numel() for n in grad_units]
        gn = _flat(grad_units, device)
        max_norm = _flat(weight_units, device).clamp_min(self.eps).mul(self.value)
        kept_norms = torch._foreach_norm(kept, 2, dtype=NORM_DTYPE) if kept else []
        kept_squares = _flat(list(kept_norms), device).square()
        # a sharded unit that is a duplicate of another rank's counts once (see gradhealth.distributed)
        weight = _flat([torch.full((s,), float(c), dtype=NORM_DTYPE) for s, c in zip(sizes, body_counted)],
                       device) if sharded else 1.0
        kept_sq = (kept_squares * _flat([torch.tensor([float(c)], dtype=NORM_DTYPE) for c in kept_counted],
                                        device) if sharded else kept_squares).sum()

        pre = _summed((gn.square() * weight).sum() + kept_sq, sharded).sqrt()
        finite = torch.isfinite(pre)
        over = (gn > max_norm) & finite
        factor = torch.where(over, max_norm / gn.clamp_min(_GRAD_FLOOR), torch.ones_like(gn))
        # (out,) factors broadcast over the remaining dims of each unit
        factors = [f.reshape(g.shape[:1] + (1,) * (g.dim() - 1) if g.dim() > 1 else ()).to(g.device, g.dtype)
                   for g, f in zip(body_grads, torch.split(factor, sizes))]
        if body_grads:
            torch._foreach_mul_(body_grads, factors)
        post_sq, clipped = ((gn * factor).square() * weight).sum() + kept_sq, over.any().to(NORM_DTYPE)
        if sharded:
            post_sq, clipped = _summed(torch.stack([post_sq, clipped]), True).unbind()
        post = torch.where(finite, post_sq.sqrt(), pre)
        return ClipResult(pre, post, clipped > 0)


def _local_units(grads: list[Tensor], weights: list[Tensor], kept: list[Tensor]):
    """Sharded AGC: each rank clips the units (output rows) it holds, so a row must not be split."""
    for g in grads:
        if any(getattr(p, "dim", 0) != 0 for p in getattr(g, "placements", ()) if p.is_shard()):
            raise ConfigError(
                "agc clips whole output rows but a gradient here is sharded along another dim (tensor-parallel "
                "row-wise sharding); use clip mode 'norm' or 'autoclip' for this model."
            )
    grads, counted = local_pieces(grads)
    weights = local_pieces(weights)[0]
    kept, kept_counted = local_pieces(kept)
    return grads, weights, counted, kept, kept_counted


def _summed(value: Tensor, sharded: bool) -> Tensor:
    """``value`` summed over all ranks when the gradients are sharded (one all-reduce)."""
    if sharded and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def _flat(norms: list[Tensor], device: torch.device) -> Tensor:
    if not norms:
        return torch.zeros(0, dtype=NORM_DTYPE, device=device)
    return torch.cat([n.reshape(-1).to(device) for n in norms])
