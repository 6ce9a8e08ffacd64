"""SGD, Adam and AdamW by name, with weight decay kept off biases and norms.

Weight decay and ``l2_mode`` (see ``gradhealth.remedies.regularize`` for when the two differ):

* ``"decoupled"`` (default): the optimizer applies ``weight_decay`` to Linear/conv weights only
  (``param_groups_for_decay``). SGD uses its ``weight_decay``; Adam and AdamW use decoupled decay
  (Loshchilov & Hutter 2019), so ``adam`` with weight decay steps exactly as ``adamw``.
* ``"penalty"``: the optimizer gets ``weight_decay=0`` and the training loop adds
  ``l2_penalty(model, weight_decay)`` to the loss. This is classic L2; with Adam it is what
  ``torch.optim.Adam(weight_decay=...)`` does, and it is *not* weight decay.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.remedies.regularize import check_l2_mode, param_groups_for_decay

__all__ = ["OPTIMIZERS", "create_optimizer"]

OPTIMIZERS = ("sgd", "adam", "adamw")


def _number(what: str, value: object, low: float, high: float = math.inf, high_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = low <= value and (value < high if high_open else value <= high)
    if not ok:
        bounds = f"in [{low:g}, {high:g})" if high_open else f">= {low:g}"
        raise ConfigError(f"{what} must be a finite number {bounds}, not {value!r}.")
    return float(value)


def _params(model_or_param_groups: nn.Module | Iterable[Any], weight_decay: float) -> list[Any]:
    if isinstance(model_or_param_groups, nn.Module):
        trainable = [p for p in model_or_param_groups.parameters() if p.requires_grad]
        if trainable and weight_decay > 0:
            return param_groups_for_decay(model_or_param_groups, weight_decay)
    else:
        trainable = list(model_or_param_groups)
    if not trainable:
        raise ConfigError("the optimizer got no parameters to train; pass a model with trainable parameters "
                          "or a non-empty list of parameters or groups.")
    return trainable


def create_optimizer(
    name: str,
    model_or_param_groups: nn.Module | Iterable[Any],
    lr: float,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    l2_mode: str = "decoupled",
    betas: tuple[float, float] | None = None,
) -> torch.optim.Optimizer:
    """An optimizer ``name`` over a model (split by ``param_groups_for_decay`` when decaying) or
    over parameters / param groups you pass (used as given; a group's own keys win).

    ``momentum`` and ``nesterov`` are for ``sgd`` (nesterov needs momentum > 0), ``betas`` for
    ``adam``/``adamw`` (None: torch's (0.9, 0.999)). With ``l2_mode="penalty"`` the optimizer
    gets ``weight_decay=0`` and the caller must add ``l2_penalty(model, weight_decay)`` to the
    loss every step; with ``"decoupled"`` the optimizer decays the weights itself.
    """
    if name not in OPTIMIZERS:
        raise unknown_name("optimizer", name, OPTIMIZERS)
    lr = _number("the learning rate", lr, 0.0)
    momentum = _number("momentum", momentum, 0.0, 1.0, high_open=True)
    weight_decay = _number("weight_decay", weight_decay, 0.0)
    check_l2_mode(l2_mode)
    if name == "sgd":
        if betas is not None:
            raise ConfigError("betas are for adam and adamw; sgd takes momentum= instead.")
        if nesterov and momentum == 0:
            raise ConfigError("nesterov momentum needs momentum > 0; set momentum (e.g. 0.9) or drop nesterov.")
    else:
        if momentum or nesterov:
            raise ConfigError(f"momentum and nesterov are for sgd; {name} takes betas= instead.")
        if betas is not None:
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise ConfigError(f"betas must be two numbers (beta1, beta2), not {betas!r}.")
            betas = (_number("beta1", betas[0], 0.0, 1.0, True), _number("beta2", betas[1], 0.0, 1.0, True))

    # in penalty mode the decay travels in the loss, so the optimizer must not decay a second time
    decay = weight_decay if l2_mode == "decoupled" else 0.0
    params = _params(model_or_param_groups, decay)
    if l2_mode == "penalty" and any(isinstance(g, dict) and g.get("weight_decay", 0) for g in params):
        raise ConfigError(
            "a param group sets weight_decay but l2_mode='penalty' adds L2 to the loss; drop one of the two."
        )
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=decay)
    adam_kw: dict[str, Any] = {} if betas is None else {"betas": betas}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay,
                                decoupled_weight_decay=l2_mode == "decoupled", **adam_kw)
    return torch.optim.AdamW(params, lr=lr, weight_decay=decay, **adam_kw)
