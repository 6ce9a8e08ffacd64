"""How each broken configuration is made, on a model already built (no torch-free part here).

The model options (depth, activation, residual, sequence length) are passed to the factory; what
is done to a built model lives here: multiplying the init scale, pushing ReLU biases far below
zero, and injecting a NaN into the output of a layer at one step.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from zoo.architectures import Architecture, matrices_of

# A unit's pre-activation is about N(0, 1) after BatchNorm or LayerNorm (and within 2 of that for
# the He/Xavier-initialized nets here): a bias of -5 keeps it below zero for every example.
DEAD_BIAS = -5.0
# Weight-bearing modules: the first one inside a unit is where "a NaN at layer k" is injected.
_WEIGHT_TYPES = (nn.Linear, nn.Conv2d, nn.MultiheadAttention, nn.RNNBase, nn.Embedding)


def scale_init(arch: Architecture, model: nn.Module, gain: float) -> None:
    """Multiply the init scale by ``gain``: the weight matrices (recurrent: the hidden-to-hidden
    ones) times ``gain``, or redrawn at ``gain`` times 1/sqrt(fan-in) where the architecture says so."""
    targets = arch.init_targets(model) if arch.init_targets else [(w, None) for w in matrices_of(model)]
    with torch.no_grad():
        for weight, fan_in in {id(w): (w, f) for w, f in targets}.values():  # a tied matrix once
            if fan_in is None:
                weight.mul_(gain)
            else:
                weight.normal_(0.0, gain / math.sqrt(fan_in))


def kill_relus(arch: Architecture, model: nn.Module) -> list[str]:
    """Set the bias feeding every ReLU of the model to DEAD_BIAS; returns the ReLUs' names."""
    if arch.relu_inputs is None:
        raise ValueError(f"{arch.name} has no ReLU biases to shift")
    names = []
    with torch.no_grad():
        for module, relu in arch.relu_inputs(model):
            module.bias.fill_(DEAD_BIAS)
            names.append(relu)
    return list(dict.fromkeys(names))


def _first_weight_module(model: nn.Module, unit: str) -> str:
    root = model.get_submodule(unit)
    if isinstance(root, _WEIGHT_TYPES) or type(root).__name__ == "Conv1D":
        return unit
    for name, module in root.named_modules():
        if isinstance(module, _WEIGHT_TYPES) or type(module).__name__ == "Conv1D":
            return f"{unit}.{name}"
    raise ValueError(f"{unit} holds no weight layer")


def inject_nan(model: nn.Module, unit: str, at_step: int) -> tuple[str, Callable[[], None]]:
    """From the ``at_step``-th training forward pass on (counted from 0), the output of the first
    weight layer in ``unit`` is NaN; returns that layer's name and the function that removes the hook."""
    target = _first_weight_module(model, unit)
    calls = [0]

    def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> Tensor | tuple | None:
        if not module.training:
            return None
        step = calls[0]
        calls[0] += 1
        if step != at_step:
            return None
        if isinstance(output, tuple):
            return (output[0] * float("nan"), *output[1:])
        return output * float("nan")

    handle = model.get_submodule(target).register_forward_hook(hook)
    return target, handle.remove
