"""Normalization layers by name for Linear (dims=0), Conv1d (dims=1) and Conv2d (dims=2) features."""
from __future__ import annotations

from torch import nn

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.vocabulary import NORMS, canonical_norm

__all__ = ["NORMS", "create_norm", "default_groups"]


def default_groups(channels: int, preferred: int = 32) -> int:
    """The largest group count <= ``preferred`` that divides ``channels`` (Wu & He use 32)."""
    for groups in range(min(preferred, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def create_norm(name: str | None, num_features: int, dims: int = 0, groups: int | None = None) -> nn.Module:
    """A normalization over ``num_features`` channels of a ``dims``-dimensional feature map.

    ``layer`` on a feature map normalizes each example over channels and positions together
    (GroupNorm with one group), which is what LayerNorm means for convolutions.
    """
    key = canonical_norm(name)
    if key not in NORMS:
        raise unknown_name("normalization", name, NORMS)
    if dims not in (0, 1, 2):
        raise ConfigError(f"dims must be 0 (Linear), 1 (Conv1d) or 2 (Conv2d), not {dims!r}.")
    if num_features <= 0:
        raise ConfigError(f"a normalization needs a positive number of features, not {num_features}.")
    if key == "none":
        return nn.Identity()
    if key == "batch":
        return nn.BatchNorm2d(num_features) if dims == 2 else nn.BatchNorm1d(num_features)
    if key == "layer":
        return nn.LayerNorm(num_features) if dims == 0 else nn.GroupNorm(1, num_features)
    groups = default_groups(num_features) if groups is None else groups
    if groups <= 0 or num_features % groups:
        raise ConfigError(f"group norm needs a group count that divides {num_features}, not {groups}.")
    return nn.GroupNorm(groups, num_features)
