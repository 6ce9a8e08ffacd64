"""L1 and L2 regularization, and the parameter split that keeps weight decay off biases and norms.

Which parameters: by default only the weights of Linear and convolution layers. Biases, norm
scales/shifts, PReLU slopes and residual gains are left alone: they are few, they do not add
capacity the way weight matrices do, and pulling a norm scale or a residual gain to zero
switches a layer's signal off instead of regularizing it (Goyal et al. 2017 leave biases and BN
parameters undecayed; timm's ``param_groups_weight_decay`` does the same).

Two ways to apply L2 (``L2_MODES``), after Loshchilov & Hutter 2019, "Decoupled Weight Decay
Regularization":

* ``"decoupled"``: the optimizer shrinks the weights itself, apart from the gradient
  (``param_groups_for_decay`` + AdamW, or SGD's ``weight_decay``).
* ``"penalty"``: the loop adds ``l2_penalty(model, wd)`` = 0.5 * wd * sum w^2 to the loss, so wd * w
  joins the gradient.

With plain SGD (momentum included) the two are the same update: SGD's weight_decay adds wd * w to
the gradient, exactly the penalty's gradient. With Adam they differ: the penalty's gradient is
divided by Adam's running RMS like any other gradient, so weights with large gradients are
barely decayed, while decoupled decay shrinks every weight by lr * wd.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gradhealth.errors import ConfigError, unknown_name

__all__ = [
    "L2_MODES",
    "L2Mode",
    "PENALTY_INCLUDE",
    "decay_weights",
    "penalized_params",
    "l1_penalty",
    "l2_penalty",
    "param_groups_for_decay",
    "check_l2_mode",
]

L2_MODES = ("decoupled", "penalty")
L2Mode = Literal["decoupled", "penalty"]
PENALTY_INCLUDE = ("weights", "all")

_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def decay_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the model's Linear and convolution layers, each once even when tied."""
    seen: set[int] = set()
    weights = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, _WEIGHT_LAYERS) and isinstance(weight, nn.Parameter) and id(weight) not in seen:
            seen.add(id(weight))
            weights.append(weight)
    return weights


def penalized_params(model_or_params: nn.Module | Iterable[Tensor], include: str = "weights") -> list[Tensor]:
    """The parameters a penalty covers: a module's layer weights (or all its parameters with
    ``include="all"``); a list of parameters is taken as given, each tensor once."""
    if include not in PENALTY_INCLUDE:
        raise unknown_name("penalty selection", include, PENALTY_INCLUDE)
    if isinstance(model_or_params, nn.Module):
        return decay_weights(model_or_params) if include == "weights" else list(model_or_params.parameters())
    unique: dict[int, Tensor] = {}
    for p in [model_or_params] if isinstance(model_or_params, Tensor) else model_or_params:
        unique.setdefault(id(p), p)
    return list(unique.values())


def _check_weight(what: str, weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"{what} must be a finite number >= 0, not {weight!r}.")
    return float(weight)


def _sum_of_norms(params: list[Tensor], ord: float) -> Tensor:
    # _foreach_norm is differentiable, so the penalty trains the weights in one fused kernel per device
    if not params:
        return torch.zeros(())
    device = params[0].device
    return torch.stack([n.to(device) for n in torch._foreach_norm(params, ord)]).sum()


def l1_penalty(model_or_params: nn.Module | Iterable[Tensor], weight: float, *, include: str = "weights") -> Tensor:
    """``weight * sum |w|`` over the selected parameters, to add to the loss (differentiable)."""
    weight = _check_weight("the L1 weight", weight)
    return weight * _sum_of_norms(penalized_params(model_or_params, include), 1.0)


def l2_penalty(model_or_params: nn.Module | Iterable[Tensor], weight: float, *, include: str = "weights") -> Tensor:
    """``0.5 * weight * sum w^2`` over the selected parameters: its gradient is ``weight * w``,
    the same as SGD's ``weight_decay=weight``."""
    weight = _check_weight("the L2 weight", weight)
    params = penalized_params(model_or_params, include)
    if not params:
        return torch.zeros(())
    device = params[0].device
    squares = torch.stack([n.to(device).square() for n in torch._foreach_norm(params, 2.0)]).sum()
    return 0.5 * weight * squares


def param_groups_for_decay(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer param groups: Linear/conv weights with ``weight_decay``, everything else with 0.

    Parameters with ``requires_grad=False`` are left out; tied parameters appear once. Both groups
    are always returned (an empty one is harmless) so group 0 is always the decayed one.
    """
    weight_decay = _check_weight("weight_decay", weight_decay)
    decay_ids = {id(p) for p in decay_weights(model)}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields each tied tensor once
        if p.requires_grad:
            (decay if id(p) in decay_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def check_l2_mode(l2_mode: str) -> str:
    """``l2_mode`` if it is one of ``L2_MODES``, else the unknown-name error."""
    if l2_mode not in L2_MODES:
        raise unknown_name("l2 mode", l2_mode, L2_MODES)
    return l2_mode
