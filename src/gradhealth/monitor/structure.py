"""Which modules of a model the monitor measures, found once when it attaches."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from torch import Tensor, nn

from gradhealth.layers.activations import ACTIVATIONS, ActivationRule, looks_like_activation, rule_for_module
from gradhealth.monitor.records import LayerInfo, ParamInfo

__all__ = ["CalledActivation", "ModelLayout", "unwrap", "layout_of", "role_of", "features_last", "complete_order",
           "recurrent_layers", "repeated_blocks"]


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
    """Whether the units of an activation after this layer are its output's last dim.

    Besides torch's own types, any layer whose weight is a matrix (Hugging Face's ``Conv1D``, a
    user's own linear, MultiheadAttention, a recurrent layer) maps features to features.
    """
    if isinstance(module, _FEATURES_LAST_TYPES):
        return True
    if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        return False
    return any(p.dim() == 2 for p in module.parameters(recurse=False))


def _is_norm(module: nn.Module) -> bool:
    # other libraries' norms (LlamaRMSNorm, T5LayerNorm) by name: a "Norm" owning only vectors
    return isinstance(module, _NORM_TYPES) or (
        "Norm" in type(module).__name__ and all(p.dim() < 2 for p in module.parameters(recurse=False)))


class CalledActivation(nn.Module):
    """Stands for an activation a torch transformer layer calls as a function (``F.relu``), which
    no hook can see: it is measured as ``function(feeder's output)``, the same tensor the layer
    computes (``linear1`` feeds it; dropout comes after it). Not part of the user's model."""

    def __init__(self, function, feeder: nn.Module, rule: ActivationRule):
        super().__init__()
        self.function = function
        self.rule = rule
        # kept out of the module tree: the feeder is the user's, not a child of this stand-in
        self.__dict__["feeder"] = feeder

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x)


def role_of(module: nn.Module) -> str:
    """activation, weight (owns a parameter of 2 or more dims), norm, or other."""
    if isinstance(module, CalledActivation):
        return "activation"
    if rule_for_module(module) is not None:
        return "activation"
    if any(p.dim() >= 2 for p in _own_parameters(module)):
        return "weight"
    if _is_norm(module):
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
    # every parameter tensor, tied names included, and where it was counted
    parameters: list[ParamInfo] = field(default_factory=list)
    # per layer: the other modules that share its parameters
    tied: dict[str, list[str]] = field(default_factory=dict)
    # activations that are not measured, with the reason: modules that look like activations but
    # have no rule, and the functions torch's transformer layers call in place of a module
    unhooked: list[str] = field(default_factory=list)
    # the tensors of ``parameters``, in its order, so trainability can be read again when the
    # record of the run is written (a model frozen after the monitor attached)
    parameter_tensors: list[nn.Parameter] = field(default_factory=list)
    # recurrent modules (their gradient through time is measured on detailed steps)
    recurrent: list[tuple[str, nn.Module]] = field(default_factory=list)
    # repeated blocks (h.0, h.1, ...), checked once for a skip path
    blocks: list[tuple[str, nn.Module]] = field(default_factory=list)

    def parameters_now(self) -> list[ParamInfo]:
        """``parameters`` with ``trainable`` as it is now: a model frozen (or unfrozen) after the
        monitor attached, before its first step, is recorded as it trains."""
        return [replace(info, trainable=p.requires_grad, tied=list(info.tied))
                for info, p in zip(self.parameters, self.parameter_tensors)]

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
            LayerInfo(name=n, type=_type_name(modules[n]), role=role_of(modules[n]),
                      params=params.get(n, 0), activation=rules.get(n), tied=list(self.tied.get(n, [])))
            for n in ordered
        ]


def _type_name(module: nn.Module) -> str:
    if isinstance(module, CalledActivation):
        return f"{getattr(module.function, '__name__', 'activation')} (a function)"
    return type(module).__name__


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


def recurrent_layers(name: str, module: nn.RNNBase) -> list[tuple[str, list[str]]]:
    """The layers of an RNN/LSTM/GRU: per layer k and direction, the input-to-hidden and the
    hidden-to-hidden matrix, each with its bias (and an LSTM's projection with the latter),
    named ``<module>.weight_ih_l{k}[_reverse]``, in the order the recurrence uses them."""
    layers = []
    directions = ("", "_reverse") if module.bidirectional else ("",)
    for k in range(module.num_layers):
        for sfx in directions:
            for kind in ("ih", "hh"):
                names = [f"weight_{kind}_l{k}{sfx}", f"bias_{kind}_l{k}{sfx}"]
                if kind == "hh":
                    names.append(f"weight_hr_l{k}{sfx}")
                layers.append((f"{name}.weight_{kind}_l{k}{sfx}", names))
    return layers


_INDEX = re.compile(r"^\d+$")


def repeated_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Children of a ModuleList/Sequential named by an index, of one class, with children of
    their own, at least two of them: ``h.0 .. h.N``, ``layers.K``, ``encoder.layer.K``."""
    blocks = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        by_class: dict[type, list[tuple[str, nn.Module]]] = {}
        for child_name, child in module.named_children():
            if _INDEX.match(child_name) and next(child.children(), None) is not None:
                by_class.setdefault(type(child), []).append((f"{name}.{child_name}" if name else child_name, child))
        blocks += [b for group in by_class.values() if len(group) >= 2 for b in group]
    return blocks


def _add_layer(layout: ModelLayout, name: str, module: nn.Module, params: list[nn.Parameter]) -> None:
    layout.layer_names.append(name)
    layout.layer_modules.append(module)
    for p in params:
        layout.params.append(p)
        layout.param_layer.append(len(layout.layer_names) - 1)
    layout.module_order.append(name)


def layout_of(model: nn.Module) -> ModelLayout:
    layout = ModelLayout()
    seen: set[int] = set()
    for name, module in model.named_modules():
        name = name or "(root)"
        own = [p for p in _own_parameters(module) if id(p) not in seen]
        seen.update(id(p) for p in own)
        rule = rule_for_module(module)
        if isinstance(module, nn.RNNBase):
            layout.recurrent.append((name, module))
            by_name = dict(module.named_parameters(recurse=False))
            own_ids = {id(p) for p in own}
            for layer_name, names in recurrent_layers(name, module):
                params = [by_name[n] for n in names if n in by_name and id(by_name[n]) in own_ids]
                if params:
                    _add_layer(layout, layer_name, module, params)
                    own_ids -= {id(p) for p in params}
            own = [p for p in own if id(p) in own_ids]  # anything a subclass added
        if own:
            _add_layer(layout, name, module, own)
        if rule is not None:
            layout.activations.append((name, module, rule))
            if not own:
                layout.module_order.append(name)
        elif looks_like_activation(module):
            layout.unhooked.append(f"{name} ({type(module).__name__}: no saturation rule)")
        called = _called_activation(module)
        if isinstance(called, CalledActivation):
            layout.activations.append((f"{name}.activation", called, called.rule))
            layout.module_order.append(f"{name}.activation")
        elif called is not None:
            layout.unhooked.append(f"{name}.activation ({type(module).__name__}: {called} is called as a "
                                   "function with no saturation rule, so it is not measured)")
    layout.blocks = repeated_blocks(model)
    _account_parameters(model, layout)
    return layout


_TORCH_TRANSFORMER_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _called_activation(module: nn.Module) -> CalledActivation | str | None:
    """The activation function a torch transformer layer calls, where it is a function.

    ``TransformerEncoderLayer(activation="gelu")`` keeps ``F.gelu`` itself, which no hook can see;
    it is measured on ``linear1``'s output where a rule knows it (relu, gelu: a
    ``CalledActivation``), and only named otherwise (a str). Given a module
    (``activation=nn.GELU()``) it is a child like any other and measured as one (None here).
    """
    if not isinstance(module, _TORCH_TRANSFORMER_LAYERS):
        return None
    activation = getattr(module, "activation", None)
    if activation is None or isinstance(activation, nn.Module):
        return None
    name = getattr(activation, "__name__", type(activation).__name__)
    rule = ACTIVATIONS.get(name)
    feeder = getattr(module, "linear1", None)
    if rule is None or rule.name == "identity" or not isinstance(feeder, nn.Module):
        return name
    return CalledActivation(activation, feeder, rule)


def _module_of(param_name: str) -> str:
    return param_name.rpartition(".")[0] or "(root)"


def _account_parameters(model: nn.Module, layout: ModelLayout) -> None:
    """``parameters`` (every tensor, by every name it goes by) and ``tied`` (per layer)."""
    counted = {id(p): layout.layer_names[layer] for p, layer in zip(layout.params, layout.param_layer)}
    roles = {name: role_of(module) for name, module in zip(layout.layer_names, layout.layer_modules)}
    named = list(model.named_parameters(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}
    for name, p in named:
        names_of.setdefault(id(p), []).append(name)
    for name, p in named:
        layer = counted.get(id(p))
        tied = [n for n in names_of[id(p)] if n != name]
        layout.parameters.append(ParamInfo(name=name, shape=list(p.shape), layer=layer,
                                           role=roles[layer] if layer is not None else "unmeasured",
                                           trainable=p.requires_grad, tied=tied))
        layout.parameter_tensors.append(p)
        if layer is not None and tied:
            modules = layout.tied.setdefault(layer, [])
            for other in tied:
                module = _module_of(other)
                # the owner's own names (``x.weight`` of layer ``x``) are not another module
                if module != _module_of(names_of[id(p)][0]) and module not in modules:
                    modules.append(module)
