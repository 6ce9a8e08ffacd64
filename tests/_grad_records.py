"""Records of a short real training run, measured directly in torch, for the diagnosis tests.

A small stand-in for the live monitor: plain SGD for a few steps, and at every step the L2 norm of
each module's own parameters' gradients, its weight norm and update ratio, and the saturation and
dead fraction of every activation (by the activation's own rule). Modules are taken in definition
order, which is forward order for the sequential models these tests build.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gradhealth.layers import rule_for_module
from gradhealth.monitor.records import (
    ActivationStats,
    LayerInfo,
    LayerStats,
    NonFiniteEvent,
    RunLog,
    RunMeta,
    StepRecord,
)

_WEIGHT_TYPES = (nn.Linear, nn.modules.conv._ConvNd)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _role(module: nn.Module) -> str:
    if isinstance(module, _WEIGHT_TYPES):
        return "weight"
    if isinstance(module, _NORM_TYPES):
        return "norm"
    if rule_for_module(module) is not None:
        return "activation"
    return "other"


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


def _norm(tensors: list[Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])))


def records_from_model(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float,
                       spec: str | None = None, config: dict | None = None) -> RunLog:
    """Train ``model`` with SGD on the full batch ``(x, y)`` for ``steps`` steps and record each step.

    Stops after the first step whose loss is not finite, as a loop with the stop policy would.
    """
    named = [(name, m) for name, m in model.named_modules() if name]
    owners = [(name, m) for name, m in named if _own_params(m)]
    acts = [(name, m, rule_for_module(m)) for name, m in named if rule_for_module(m) is not None]
    meta = RunMeta(
        layers=[
            LayerInfo(name, type(m).__name__, _role(m), sum(p.numel() for p in _own_params(m)),
                      rule_for_module(m).name if rule_for_module(m) is not None else None)
            for name, m in named if _own_params(m) or rule_for_module(m) is not None
        ],
        model=spec,
        data="digits",
        config=dict(config or {}),
    )
    measured: dict[str, ActivationStats] = {}

    def hook_for(name: str, rule):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
            out = out.detach()
            sat = rule.saturated(module, inputs[0].detach(), out).float().mean() if rule.saturated else None
            dead = None
            if rule.off is not None:
                off = rule.off(module, inputs[0].detach(), out)
                # a unit (feature/channel) is dead when it is off for every example of the batch
                reduce = [0, *range(2, off.dim())]
                dead = off.all(dim=0) if off.dim() == 2 else off.permute(1, *reduce).flatten(1).all(dim=1)
                dead = dead.float().mean()
            measured[name] = ActivationStats(
                mean=float(out.mean()), std=float(out.std()),
                saturation=None if sat is None else float(sat),
                dead_fraction=None if dead is None else float(dead),
                nonfinite=int((~torch.isfinite(out)).sum()),
            )
        return hook

    handles = [m.register_forward_hook(hook_for(name, rule)) for name, m, rule in acts]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    records: list[StepRecord] = []
    try:
        for step in range(steps):
            measured.clear()
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            layers: dict[str, LayerStats] = {}
            before: dict[str, list[Tensor]] = {}
            for name, m in owners:
                params = _own_params(m)
                grads = [p.grad for p in params if p.grad is not None]
                before[name] = [p.detach().clone() for p in params]
                layers[name] = LayerStats(
                    grad_norm=_norm(grads) if grads else None,
                    weight_norm=_norm(before[name]),
                    grad_nonfinite=sum(int((~torch.isfinite(g)).sum()) for g in grads),
                )
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            global_norm = _norm(grads)
            optimizer.step()
            for name, m in owners:
                old = before[name]
                delta = _norm([p.detach() - b for p, b in zip(_own_params(m), old)])
                weight = layers[name].weight_norm
                layers[name].update_ratio = delta / weight if weight else None
            event = None
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                event = NonFiniteEvent("loss", None, step, step)
            records.append(StepRecord(
                step=step, loss=loss_value, lr=lr, global_grad_norm=global_norm, batch=step,
                layers=layers, activations=dict(measured), first_nonfinite=event,
            ))
            if event is not None:
                break
    finally:
        for handle in handles:
            handle.remove()
    return RunLog(meta, records)


def digits(n: int = 512) -> tuple[Tensor, Tensor]:
    """The first ``n`` images of sklearn's bundled digits, standardised per feature (64 features)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data[:n], dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(data.target[:n], dtype=torch.long)
