"""Which modules of a model the monitor measures, found once when it attaches."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from gradhealth.layers.activations import ActivationRule, rule_for_module
from gradhealth.monitor.records import LayerInfo

__all__ = ["ModelLayout", "unwrap", "layout_of", "role_of", "features_last", "complete_order"]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or (
            model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else None
        )
        if inner is None:
            return model
        model = inner


_NORM_TYPES = tuple(
    t for t in (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, getattr(nn, "RMSNorm", None)) if t
)


# Layers whose output keeps its features in the last dim, as in (batch, sequence, features); the
# others (convolutions, BatchNorm, GroupNorm) keep them in dim 1, as in (batch, channels, ...)
_FEATURES_LAST_TYPES = tuple(
    t for t in (nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, getattr(nn, "RMSNorm", None)) if t
)


def features_last(module: nn.Module) -> bool:
    """Whether the units of an activation after this layer are its output's last dim."""
    return isinstance(module, _FEATURES_LAST_TYPES)


def role_of(module: nn.Module) -> str:
    if rule_for_module(module) is not None:
        return "activation"
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear, nn.Embedding)):
        return "weight"
    if isinstance(module, _NORM_TYPES):
        return "norm"
    return "other"


@dataclass
class ModelLayout:
    """Parameter-owning modules (layers), their unique parameters, and the activation modules.

    A parameter shared by several modules (tied weights) belongs to the first that registers it,
    so it is counted once, as ``named_parameters`` does.
    """

    layer_names: list[str] = field(default_factory=list)
    layer_modules: list[nn.Module] = field(default_factory=list)
    params: list[nn.Parameter] = field(default_factory=list)
    param_layer: list[int] = field(default_factory=list)
    activations: list[tuple[str, nn.Module, ActivationRule]] = field(default_factory=list)
    # layers and activations together, in definition order (``named_modules``)
    module_order: list[str] = field(default_factory=list)

    def layer_info(self, order: list[str]) -> list[LayerInfo]:
        """LayerInfo for every measured module, in the order they ran (see ``complete_order``)."""
        modules = dict(zip(self.layer_names, self.layer_modules))
        modules.update({name: module for name, module, _ in self.activations})
        counts = [0] * len(self.layer_names)
        for p, layer in zip(self.params, self.param_layer):
            counts[layer] += p.numel()
        params = dict(zip(self.layer_names, counts))
        rules = {name: rule.name for name, _, rule in self.activations}
        ordered = complete_order(order, self.module_order)
        return [
            LayerInfo(name=n, type=type(modules[n]).__name__, role=role_of(modules[n]),
                      params=params.get(n, 0), activation=rules.get(n))
            for n in ordered
        ]


def complete_order(ran: list[str], defined: list[str]) -> list[str]:
    """Every name of ``defined``: those that ran in the order they ran, each of the others right
    after the module defined just before it (first, where none before it ran).

    A module that never runs as a module, such as ``MultiheadAttention.out_proj`` (its weight is
    used functionally by its parent), so stays beside its parent instead of going to the end,
    where it would pass for the layer nearest the output.
    """
    known = set(defined)
    ran = [n for n in ran if n in known]
    if not ran:
        return list(defined)
    did_run = set(ran)
    following: dict[str | None, list[str]] = {}
    anchor = None
    for name in defined:
        if name in did_run:
            anchor = name
        else:
            following.setdefault(anchor, []).append(name)
    order = list(following.get(None, []))
    for name in ran:
        order.append(name)
        order.extend(following.get(name, []))
    return order


def _own_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters a module owns; with ``torch.nn.utils.parametrize``, those of its
    parametrizations too (``weight.original0`` ...), so a weight-normed Linear stays one layer."""
    own = list(module.parameters(recurse=False))
    parametrizations = getattr(module, "parametrizations", None)
    if isinstance(parametrizations, nn.ModuleDict):
        own += list(parametrizations.parameters())
    return own


def layout_of(model: nn.Module) -> ModelLayout:
    layout = ModelLayout()
    seen: set[int] = set()
    for name, module in model.named_modules():
        own = [p for p in _own_parameters(module) if id(p) not in seen]
        if own:
            layout.layer_names.append(name or "(root)")
            layout.layer_modules.append(module)
            for p in own:
                seen.add(id(p))
                layout.params.append(p)
                layout.param_layer.append(len(layout.layer_names) - 1)
        rule = rule_for_module(module)
        if rule is not None:
            layout.activations.append((name or "(root)", module, rule))
        if own or rule is not None:
            layout.module_order.append(name or "(root)")
    return layout
