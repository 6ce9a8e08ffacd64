"""Numbers, layer lists and evidence as short text, the same in the HTML page and the terminal."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_value", "format_percent", "abbreviate_layers", "flatten_config"]


def format_value(value: Any, limit: int = 120) -> str:
    """Three significant digits for floats, NaN/Inf spelled out, "–" for nothing, JSON for containers."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Inf" if value > 0 else "-Inf"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str, allow_nan=True)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_percent(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return format_value(value)
    return f"{100 * value:.1f}%"


def abbreviate_layers(names: Sequence[str], limit: int = 3) -> str:
    """The first ``limit`` names and how many more: a finding can name hundreds of layers."""
    if not names:
        return "–"
    shown = ", ".join(names[:limit])
    rest = len(names) - limit
    return shown if rest <= 0 else f"{shown} … +{rest} more"


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys (``optimizer.lr``), in the order they were written."""
    rows: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(flatten_config(value, name + "."))
        else:
            rows.append((name, value))
    return rows
