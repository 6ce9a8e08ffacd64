"""Initialization schemes by name, applied to a whole model.

``apply_init(model, "he")`` re-initializes every Linear and Conv weight (biases to zero) and
leaves normalization layers at weight 1, bias 0. A scheme may carry one number in brackets:
``constant(5)`` (the value), ``normal(0.02)`` (the std), ``uniform(0.1)`` (the bound),
``xavier_normal(2)`` / ``orthogonal(1.5)`` (the gain), ``kaiming_normal(0.5)`` (a multiplier).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.layers.activations import rule_for_module
from gradhealth.vocabulary import INIT_DEFAULT_ARG, INIT_SCHEMES, nonlinearity_gain, parse_init

__all__ = ["INIT_SCHEMES", "parse_init", "apply_init", "weight_layers", "zero_init_last", "infer_nonlinearity"]

# LSUV (Mishkin & Matas 2016): rescale until the output variance is within this of 1.
_LSUV_TOLERANCE = 0.1
_LSUV_MAX_ITERS = 10


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Linear and convolution layers in definition order: the layers an init scheme sets."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]


def infer_nonlinearity(model: nn.Module) -> tuple[str, float]:
    """The gain name (and leaky slope) of the model's first activation, for He/orthogonal gains."""
    for module in model.modules():
        rule = rule_for_module(module)
        if rule is None:
            continue
        if isinstance(module, nn.LeakyReLU):
            return "leaky_relu", float(module.negative_slope)
        if isinstance(module, nn.PReLU):
            return "leaky_relu", float(module.weight.detach().mean())
        return rule.gain, 0.0
    return "linear", 0.0


def _recurrent_weight_blocks(model: nn.Module) -> list[Tensor]:
    """Each gate's (hidden, in) block of every RNN/LSTM/GRU weight matrix, as views to set in place.

    torch stacks the gates' matrices in one parameter; a scheme's fan-in and orthogonality are
    those of one gate's matrix, not of the stack.
    """
    gates = {"LSTM": 4, "GRU": 3}
    blocks: list[Tensor] = []
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            for pname, param in module.named_parameters():
                if pname.startswith("weight"):
                    blocks += list(param.data.chunk(gates.get(module.mode, 1), dim=0))
    return blocks


def zero_init_last(model: nn.Module) -> int:
    """Zero the last layer (or last norm's scale) of every residual branch; returns the count.

    A block whose branch starts at zero is the identity (pre-activation) or act(x) (post-activation),
    so a deep net starts as a shallow one (Goyal et al. 2017; timm's ``zero_init_last``).
    """
    count = 0
    for module in model.modules():
        if getattr(module, "residual", False) and callable(getattr(module, "zero_init_last", None)):
            module.zero_init_last()
            count += 1
    return count


# apply_init's flag of the same name hides the function inside it
_zero_init_last = zero_init_last


def _residual_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if getattr(m, "residual", False) and hasattr(m, "branch_layers")]


def _classifier(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        return getter()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@torch.no_grad()
def _init_weight(weight: Tensor, name: str, arg: float | None, nonlinearity: str, slope: float) -> None:
    if name == "constant":
        nn.init.constant_(weight, INIT_DEFAULT_ARG["constant"] if arg is None else arg)
    elif name == "normal":
        nn.init.normal_(weight, 0.0, INIT_DEFAULT_ARG["normal"] if arg is None else arg)
    elif name == "uniform":
        bound = INIT_DEFAULT_ARG["uniform"] if arg is None else arg
        nn.init.uniform_(weight, -bound, bound)
    elif name in ("xavier_uniform", "xavier_normal"):
        gain = 1.0 if arg is None else arg
        getattr(nn.init, name + "_")(weight, gain=gain)
    elif name.startswith("kaiming"):
        init_fn = nn.init.kaiming_uniform_ if "uniform" in name else nn.init.kaiming_normal_
        mode = "fan_out" if name.endswith("fan_out") else "fan_in"
        init_fn(weight, a=slope, mode=mode, nonlinearity=nonlinearity)
        if arg is not None:
            weight.mul_(arg)
    elif name in ("orthogonal", "lsuv"):
        gain = nonlinearity_gain(nonlinearity, slope) if arg is None else arg
        nn.init.orthogonal_(weight, gain=gain if name == "orthogonal" else 1.0)
    else:  # pragma: no cover - parse_init only lets the names above through
        raise unknown_name("init", name, INIT_SCHEMES)


@torch.no_grad()
def _reset_norms(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


@torch.no_grad()
def _lsuv(model: nn.Module, data: Tensor) -> None:
    """Scale each layer, in forward order, so its output has unit variance on ``data``."""
    was_training = model.training
    # eval: BatchNorm uses its (fresh) running statistics and does not update them from this batch
    model.eval()
    try:
        for layer in weight_layers(model):
            captured: list[Tensor] = []
            handle = layer.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
            try:
                for _ in range(_LSUV_MAX_ITERS):
                    captured.clear()
                    model(data)
                    if not captured:  # the layer is not on the forward path
                        break
                    std = torch.cat([c.flatten() for c in captured]).float().std()
                    if not torch.isfinite(std) or std == 0:
                        break
                    if abs(float(std) ** 2 - 1.0) < _LSUV_TOLERANCE:
                        break
                    layer.weight.div_(std)
            finally:
                handle.remove()
    finally:
        model.train(was_training)


@torch.no_grad()
def _fixup(model: nn.Module, nonlinearity: str, slope: float) -> None:
    """Fixup (Zhang et al. 2019): He init scaled by L^(-1/(2m-2)) in each branch, last layer 0."""
    blocks = _residual_blocks(model)
    if not blocks:
        raise ConfigError("init 'fixup' is for residual networks: this model has no residual blocks.")
    for layer in weight_layers(model):
        nn.init.kaiming_normal_(layer.weight, a=slope, nonlinearity=nonlinearity)
    num_blocks = len(blocks)
    for block in blocks:
        branch = list(block.branch_layers())
        m = len(branch)
        scale = num_blocks ** (-1.0 / (2 * m - 2)) if m > 1 else 1.0
        for layer in branch[:-1]:
            layer.weight.mul_(scale)
        nn.init.zeros_(branch[-1].weight)
    head = _classifier(model)
    if head is not None:
        nn.init.zeros_(head.weight)


def apply_init(
    model: nn.Module,
    scheme: str,
    *,
    data: Tensor | None = None,
    zero_init_last: bool = False,
) -> nn.Module:
    """Re-initialize ``model`` in place by a named scheme and return it.

    ``lsuv`` needs ``data``, a batch of real inputs. ``fixup`` needs residual blocks.
    ``zero_init_last`` additionally zeroes the last layer of each residual branch.
    """
    name, arg = parse_init(scheme)
    if name == "lsuv" and data is None:
        raise ConfigError("init 'lsuv' is data-driven: give it a batch of inputs (create_model(..., init_data=x), "
                          "or data=x here; gradhealth train passes the first batch itself).")
    nonlinearity, slope = infer_nonlinearity(model)
    if name == "default":
        for module in model.modules():
            if module is not model and callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    elif name == "fixup":
        _reset_norms(model)
        _fixup(model, nonlinearity, slope)
    else:
        _reset_norms(model)
        for layer in weight_layers(model):
            _init_weight(layer.weight, name, arg, nonlinearity, slope)
        for weight in _recurrent_weight_blocks(model):
            _init_weight(weight, name, arg, "linear", 0.0)
    if name != "default":
        with torch.no_grad():
            for layer in weight_layers(model):
                if layer.bias is not None:
                    layer.bias.zero_()
            for module in model.modules():
                if isinstance(module, nn.RNNBase):
                    for pname, param in module.named_parameters():
                        if pname.startswith("bias"):
                            param.zero_()
    # a model whose recurrent weights follow their own rule (orthogonal, identity) sets them again
    for module in model.modules():
        if callable(getattr(module, "reset_recurrent", None)):
            module.reset_recurrent()
    if name == "lsuv":
        _lsuv(model, data)
    if zero_init_last:
        _zero_init_last(model)
    return model
