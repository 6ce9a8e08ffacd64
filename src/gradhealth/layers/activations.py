"""Activations by name, each with the rule that says where it stops passing gradient.

The monitor needs, for any activation module it meets, two masks:

* ``saturated``: elements in the flat region, where the derivative is below
  ``SATURATION_FRACTION`` of its maximum (sigmoid: sigma'(x) < 0.01 * 0.25);
* ``dead``: for the ReLU family, given each unit's largest output over a batch, whether the
  unit was on the zero (or leak) side for every example: *dead* for that batch.

Rules read the output where they can, because an ``inplace=True`` activation has already
overwritten its input when a forward hook runs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradhealth.errors import unknown_name
from gradhealth.layers.flat_regions import flat_intervals, gelu_slope, interval_mask, mish_slope, silu_slope
from gradhealth.vocabulary import ACTIVATION_NAMES, GAIN_NAMES, canonical_activation

__all__ = [
    "SATURATION_FRACTION",
    "ActivationRule",
    "ACTIVATIONS",
    "get_act",
    "create_act",
    "rule_for_module",
    "looks_like_activation",
]

# An element counts as saturated where the derivative is under 1 % of its maximum: at that
# point the layer passes less than a hundredth of the gradient it could.
SATURATION_FRACTION = 0.01

Mask = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ActivationRule:
    """How one activation is built and how its flat / dead regions are recognised."""

    name: str
    module: Callable[..., nn.Module]
    saturated: Mask | None = None
    dead: Callable[[Tensor], Tensor] | None = None
    # nonlinearity name understood by torch.nn.init.calculate_gain
    gain: str = "linear"
    # True where the rule must read the input, so an in-place variant cannot be measured
    uses_input: bool = False
    # True where the output is exactly 0 when the unit is off and nonzero otherwise (ReLU): both
    # rules can then be counted with count_nonzero, without a mask the size of the output
    zero_is_off: bool = False


def _sigmoid_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    # sigma'(x) = s (1 - s), at most 1/4
    return out * (1 - out) < SATURATION_FRACTION * 0.25


def _tanh_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    # tanh'(x) = 1 - t^2, at most 1
    return 1 - out * out < SATURATION_FRACTION


def _elu_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    # for x < 0: elu'(x) = alpha * exp(x) = out + alpha; the maximum slope is max(1, alpha)
    alpha = float(getattr(module, "alpha", 1.0))
    return (out < 0) & (out + alpha < SATURATION_FRACTION * max(1.0, alpha))


# Peak slopes: GELU's at x = sqrt(2), SiLU's at x ~ 2.40, Mish's at x ~ 1.22
GELU_MAX_SLOPE, SILU_MAX_SLOPE, MISH_MAX_SLOPE = 1.1289, 1.0998, 1.0886


def _gelu_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    # gelu'(x) = Phi(x) + x phi(x): flat far left and around its zero crossing near x = -0.75
    return interval_mask(inp, flat_intervals(gelu_slope, SATURATION_FRACTION * GELU_MAX_SLOPE))


def _silu_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    # silu'(x) = s (1 + x (1 - s)): flat far left and around its zero crossing near x = -1.28
    return interval_mask(inp, flat_intervals(silu_slope, SATURATION_FRACTION * SILU_MAX_SLOPE))


def _mish_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    # mish'(x) = tanh(sp) + x sech^2(sp) sigmoid(x), sp = softplus(x): as SiLU's, near x = -1.19
    return interval_mask(inp, flat_intervals(mish_slope, SATURATION_FRACTION * MISH_MAX_SLOPE))


def _softplus_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    # softplus'(x) = sigmoid(beta x) = 1 - exp(-beta out), at most 1: under the limit exactly
    # where out < -log(1 - limit) / beta, one comparison
    beta = float(getattr(module, "beta", 1.0))
    if beta <= 0:
        return 1 - torch.exp(-beta * out.float()) < SATURATION_FRACTION
    return interval_mask(out, ((-math.inf, -math.log1p(-SATURATION_FRACTION) / beta),))


def _selu_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    # for x < 0: selu'(x) = scale alpha exp(x) = out + scale alpha, also the largest slope
    scale_alpha = 1.0507009873554805 * 1.6732632423543772
    return (out < 0) & (out + scale_alpha < SATURATION_FRACTION * scale_alpha)


def _celu_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    # for x < 0: celu'(x) = exp(x / alpha) = (out + alpha) / alpha, at most 1
    alpha = float(getattr(module, "alpha", 1.0))
    return (out < 0) & (out + alpha < SATURATION_FRACTION * alpha)


def _relu_dead(unit_max: Tensor) -> Tensor:
    return unit_max <= 0


def _leaky_dead(unit_max: Tensor) -> Tensor:
    # a leaky unit keeps the sign of its input, so the output tells which side it is on
    return unit_max < 0


def _relu_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    return out <= 0


def _leaky_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    slope = getattr(module, "negative_slope", None)
    if slope is None:  # PReLU: the learned slope, one per channel or shared
        weight = module.weight.detach()
        shape = [1] * out.dim()
        if weight.numel() > 1 and out.dim() > 1:
            shape[1] = weight.numel()
        small = (weight.abs() < SATURATION_FRACTION).reshape(shape if weight.numel() > 1 else [])
        return (out < 0) & small
    return (out < 0) & (abs(float(slope)) < SATURATION_FRACTION)


def _hardtanh_flat(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    # Hardtanh (and ReLU6, its [0, 6] case) passes no gradient at or past either bound
    return (out <= float(module.min_val)) | (out >= float(module.max_val))


def _prelu(num_parameters: int = 1, init: float = 0.25) -> nn.Module:
    return nn.PReLU(num_parameters=num_parameters, init=init)


# how each named activation is built and measured; its name and init gain come from the vocabulary
_BUILD_AND_MASKS: dict[str, dict] = {
    "sigmoid": dict(module=nn.Sigmoid, saturated=_sigmoid_flat),
    "tanh": dict(module=nn.Tanh, saturated=_tanh_flat),
    "relu": dict(module=nn.ReLU, saturated=_relu_flat, dead=_relu_dead, zero_is_off=True),
    "leaky_relu": dict(module=nn.LeakyReLU, saturated=_leaky_flat, dead=_leaky_dead),
    "prelu": dict(module=_prelu, saturated=_leaky_flat, dead=_leaky_dead),
    "gelu": dict(module=nn.GELU, saturated=_gelu_flat, uses_input=True),
    "silu": dict(module=nn.SiLU, saturated=_silu_flat, uses_input=True),
    "elu": dict(module=nn.ELU, saturated=_elu_flat),
    "identity": dict(module=nn.Identity),
}
ACTIVATIONS: dict[str, ActivationRule] = {
    name: ActivationRule(name, gain=GAIN_NAMES[name], **_BUILD_AND_MASKS[name]) for name in ACTIVATION_NAMES
}

# Module types found in arbitrary user models, mapped to the rule that measures them (the
# bounded ones are not offered by name: no network of the material uses them).
_RULE_BY_TYPE: dict[type[nn.Module], ActivationRule] = {
    nn.Sigmoid: ACTIVATIONS["sigmoid"],
    nn.Tanh: ACTIVATIONS["tanh"],
    nn.ReLU: ACTIVATIONS["relu"],
    nn.ReLU6: ActivationRule("relu6", nn.ReLU6, saturated=_hardtanh_flat, dead=_relu_dead, gain="relu"),
    nn.Hardtanh: ActivationRule("hardtanh", nn.Hardtanh, saturated=_hardtanh_flat, gain="tanh"),
    nn.LeakyReLU: ACTIVATIONS["leaky_relu"],
    nn.PReLU: ACTIVATIONS["prelu"],
    nn.GELU: ACTIVATIONS["gelu"],
    nn.SiLU: ACTIVATIONS["silu"],
    nn.ELU: ACTIVATIONS["elu"],
    nn.Mish: ActivationRule("mish", nn.Mish, saturated=_mish_flat, gain="relu", uses_input=True),
    nn.Softplus: ActivationRule("softplus", nn.Softplus, saturated=_softplus_flat, gain="relu"),
    nn.SELU: ActivationRule("selu", nn.SELU, saturated=_selu_flat, gain="linear"),
    nn.CELU: ActivationRule("celu", nn.CELU, saturated=_celu_flat, gain="relu"),
}

# Activation classes of other libraries (Hugging Face Transformers, timm, a user's own) are known
# by the family their class name says, checked in this order (GELUTanh is a GELU, SELU not an ELU)
_RULE_BY_NAME_PART: tuple[tuple[str, ActivationRule], ...] = (
    ("gelu", ACTIVATIONS["gelu"]),
    ("relu", ACTIVATIONS["relu"]),
    ("silu", ACTIVATIONS["silu"]),
    ("swish", ACTIVATIONS["silu"]),
    ("mish", _RULE_BY_TYPE[nn.Mish]),
    ("softplus", _RULE_BY_TYPE[nn.Softplus]),
    ("selu", _RULE_BY_TYPE[nn.SELU]),
    ("celu", _RULE_BY_TYPE[nn.CELU]),
    ("elu", ACTIVATIONS["elu"]),
    ("tanh", ACTIVATIONS["tanh"]),
    ("sigmoid", ACTIVATIONS["sigmoid"]),
)
# what else in a class name says "activation" (Softmax, GLU, Hardshrink, LaplaceActivation ...)
_ACTIVATION_WORDS = tuple(part for part, _ in _RULE_BY_NAME_PART) + (
    "activation", "softmax", "softmin", "glu", "shrink", "softsign", "threshold", "hardswish")
# classes whose name is an identity, not a family
_IDENTITY_NAMES = frozenset({"linearactivation", "identityactivation"})
# names with a family's word in them whose curve is another (xIELU, sqrt(softplus)): no rule
_OTHER_CURVES = ("xielu", "sqrtsoftplus")


def get_act(name: str) -> ActivationRule:
    """The rule (constructor, masks, init gain) of an activation given by name."""
    key = canonical_activation(name)
    if key not in ACTIVATIONS:
        raise unknown_name("activation", name, ACTIVATIONS)
    return ACTIVATIONS[key]


def create_act(name: str | nn.Module, **kwargs) -> nn.Module:
    """A new activation module: ``create_act("leaky_relu", negative_slope=0.1)``."""
    if isinstance(name, nn.Module):
        return name
    return get_act(name).module(**kwargs)


def _elementwise(module: nn.Module) -> bool:
    """No children and no weight matrix: a candidate activation (MultiheadAttention is neither)."""
    return next(module.children(), None) is None and all(p.dim() < 2 for p in module.parameters(recurse=False))


def looks_like_activation(module: nn.Module) -> bool:
    """Whether the module's class says it is an activation (torch's own, or by its name)."""
    if not _elementwise(module):
        return False
    cls = type(module)
    if cls.__module__ == nn.modules.activation.__name__:
        return True
    name = cls.__name__.lower()
    return any(word in name for word in _ACTIVATION_WORDS)


def rule_for_module(module: nn.Module) -> ActivationRule | None:
    """The rule for an activation module of any model, or None when it is not an activation.

    torch's classes by type (one without a rule, such as Softmax or Hardswish, has none); other
    classes by the family their name says: ``NewGELUActivation`` is a GELU, ``SwishMe`` a SiLU.
    """
    for cls in type(module).__mro__:
        rule = _RULE_BY_TYPE.get(cls)
        if rule is not None:
            return rule
    if not _elementwise(module) or type(module).__module__.startswith("torch.nn"):
        return None
    name = type(module).__name__.lower()
    if name in _IDENTITY_NAMES:
        return ACTIVATIONS["identity"]
    if any(part in name for part in _OTHER_CURVES):
        return None
    if "leaky" in name:
        # the leak's side is read from the module's slope; without one it cannot be measured
        return ACTIVATIONS["leaky_relu"] if hasattr(module, "negative_slope") else None
    for part, rule in _RULE_BY_NAME_PART:
        if part in name:
            return rule
    return None
