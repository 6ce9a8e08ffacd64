"""Hand-computed gradient norms the monitor's are checked against."""
from __future__ import annotations

import torch
from torch import nn


def own_grad_norm(module: nn.Module) -> float:
    """L2 norm, in float64, over the gradients of ``module``'s own parameters (not its children's)."""
    grads = [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]).double()))
