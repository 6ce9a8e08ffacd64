"""Checks that builders share, so every bad size gets the same clear sentence."""
from __future__ import annotations

from gradhealth.errors import ConfigError


def require_positive(**values: int) -> None:
    """Raise ConfigError for the first value that is not a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, not {value!r}.")
