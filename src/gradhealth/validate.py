"""Checks of numbers given by users, so every bad count or scale gets the same clear sentence.

Each check returns the value (a float for the number checks) or raises a ConfigError that names
it; ``bool`` is refused though Python counts it as an int (``steps=True`` is a mistake, not 1).
"""
from __future__ import annotations

import math
from typing import Any

from gradhealth.errors import ConfigError

__all__ = ["positive_int", "non_negative_int", "require_positive", "positive_number", "non_negative_number"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(name: str, value: Any) -> int:
    if not (_is_int(value) and value > 0):
        raise ConfigError(f"{name} must be a positive integer, not {value!r}.")
    return value


def non_negative_int(name: str, value: Any) -> int:
    if not (_is_int(value) and value >= 0):
        raise ConfigError(f"{name} must be a non-negative integer, not {value!r}.")
    return value


def require_positive(**values: Any) -> None:
    """``positive_int`` for each keyword, in order (the builders' sizes: ``depth=..., width=...``)."""
    for name, value in values.items():
        positive_int(name, value)


def positive_number(name: str, value: Any) -> float:
    if not (_is_finite_number(value) and value > 0):
        raise ConfigError(f"{name} must be a positive finite number, not {value!r}.")
    return float(value)


def non_negative_number(name: str, value: Any) -> float:
    if not (_is_finite_number(value) and value >= 0):
        raise ConfigError(f"{name} must be a non-negative finite number, not {value!r}.")
    return float(value)
