"""Gradient clipping by name, behind one entry point that always reports the global norm before and after.

    clipper = create_clipper("norm", 1.0)
    ...
    loss.backward()
    scaler.unscale_(optimizer)          # under mixed precision: clip true gradients, not scaled ones
    pre_norm, post_norm, clipped = clipper(model.parameters())
    optimizer.step()

Modes and what ``value`` means in each:
``none`` (no value; measures only), ``norm`` (max global L2 norm, clip_grad_norm_; default 1.0),
``value`` (max |g| per element; default 1.0), ``agc`` (clip factor lambda of Brock et al. 2021;
default 0.01), ``autoclip`` (percentile of past norms, Seetharaman et al. 2020; default 10).

Gradients that are None are skipped. When the pre-clip norm is NaN or Inf no gradient is changed
and the non-finite norm is returned as it is (see ``GradClipper``).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from gradhealth.distributed import is_sharded, local_pieces
from gradhealth.errors import ConfigError, unknown_name
from gradhealth.remedies._clip_base import ClipResult, GradClipper, Parameters, global_norm, grads_of, scale_grads_
from gradhealth.remedies.agc import AdaptiveGradClipper, resolve_head
from gradhealth.remedies.autoclip import AUTOCLIP_HISTORY, AutoClipper
from gradhealth.validate import positive_number

__all__ = [
    "CLIP_MODES",
    "DEFAULT_CLIP_VALUES",
    "ClipResult",
    "GradClipper",
    "NormClipper",
    "ValueClipper",
    "AdaptiveGradClipper",
    "AutoClipper",
    "create_clipper",
]

CLIP_MODES = ("none", "norm", "value", "agc", "autoclip")
DEFAULT_CLIP_VALUES = {"norm": 1.0, "value": 1.0, "agc": 0.01, "autoclip": 10.0}
# clip_grad_norm_'s guard against dividing by a zero norm
_NORM_EPS = 1e-6
# torch.nanquantile refuses inputs longer than this
_MAX_HISTORY = 2**24


class NormClipper(GradClipper):
    """clip_grad_norm_(max_norm=value): scale all gradients by min(1, value / (norm + 1e-6))."""

    mode = "norm"

    def __init__(self, max_norm: float):
        super().__init__()
        self.value = max_norm

    @torch.no_grad()
    def __call__(self, parameters: Parameters) -> ClipResult:
        _, grads = grads_of(parameters)
        pre = global_norm(grads)
        finite = torch.isfinite(pre)
        coef = torch.where(finite, (self.value / (pre + _NORM_EPS)).clamp(max=1.0), torch.ones_like(pre))
        if grads:
            scale_grads_(grads, coef)
        return ClipResult(pre, pre * coef, finite & (pre > self.value))


class ValueClipper(GradClipper):
    """Clamp every gradient element to [-value, value] (clip_grad_value_)."""

    mode = "value"

    def __init__(self, max_value: float):
        super().__init__()
        self.value = max_value

    @torch.no_grad()
    def __call__(self, parameters: Parameters) -> ClipResult:
        _, grads = grads_of(parameters)
        pre = global_norm(grads)
        if not grads:
            return ClipResult(pre, pre.clone(), torch.zeros((), dtype=torch.bool))
        finite = torch.isfinite(pre)
        sharded = is_sharded(grads)
        pieces = local_pieces(grads)[0] if sharded else grads
        largest = torch.stack([m.to(pre.device) for m in torch._foreach_norm(pieces, math.inf, dtype=pre.dtype)]).max()
        if sharded and dist.is_initialized():
            # clipped on any rank is clipped: every rank reports the same flag
            dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        # an infinite bound leaves a non-finite step untouched without asking the device which case it is
        bound = torch.where(finite, torch.full_like(pre, self.value), torch.full_like(pre, math.inf))
        for g in pieces:
            b = bound.to(g.device, g.dtype)
            g.clamp_(min=-b, max=b)
        return ClipResult(pre, global_norm(grads), finite & (largest > self.value))


def create_clipper(
    mode: str,
    value: float | None = None,
    *,
    model: nn.Module | None = None,
    head: nn.Module | str | None = None,
    percentile: float | None = None,
    history: int = AUTOCLIP_HISTORY,
) -> GradClipper:
    """A clipper for ``mode``; ``value`` is the mode's one knob (see the module docstring), None for its default.

    ``model`` and ``head`` serve ``agc`` only: the head (default ``model.get_classifier()``, else
    a module or submodule name you pass) is left unclipped. ``model`` is ignored by other modes so a
    loop may always pass it. ``percentile`` (default 10) and ``history`` (how many past norms
    are kept, default 10 000) serve ``autoclip``; for autoclip ``value`` is the percentile too.
    """
    if mode not in CLIP_MODES:
        raise unknown_name("clip mode", mode, CLIP_MODES)
    if head is not None and mode != "agc":
        raise ConfigError(f"head= is for clip mode 'agc' only; drop it for clip mode {mode!r}.")
    if percentile is not None and mode != "autoclip":
        raise ConfigError(f"percentile= is for clip mode 'autoclip' only; drop it for clip mode {mode!r}.")
    if mode == "none":
        if value is not None:
            raise ConfigError(f"clip mode 'none' takes no value, got {value!r}; drop the value or choose a clip mode.")
        return GradClipper()
    if mode == "autoclip":
        if value is not None and percentile is not None and value != percentile:
            raise ConfigError(f"autoclip got two percentiles, value={value!r} and percentile={percentile!r}; give one.")
        given = percentile if percentile is not None else value
        pct = DEFAULT_CLIP_VALUES["autoclip"] if given is None else positive_number(f"the percentile of clip mode {mode!r}", given)
        if pct > 100:
            raise ConfigError(f"the autoclip percentile must be in (0, 100], not {pct!r}.")
        if isinstance(history, bool) or not isinstance(history, int) or not 1 <= history <= _MAX_HISTORY:
            raise ConfigError(
                f"the autoclip history must be a whole number of steps in [1, {_MAX_HISTORY}], not {history!r}."
            )
        return AutoClipper(pct, history)
    knob = {"norm": "max norm", "value": "max value", "agc": "clip factor"}[mode]
    chosen = DEFAULT_CLIP_VALUES[mode] if value is None else positive_number(f"the {knob} of clip mode {mode!r}", value)
    if mode == "norm":
        return NormClipper(chosen)
    if mode == "value":
        return ValueClipper(chosen)
    return AdaptiveGradClipper(chosen, resolve_head(model, head))
