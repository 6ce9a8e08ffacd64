"""Numbers, layer lists and evidence as short text, the same in the HTML page and the terminal."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_value", "format_percent", "abbreviate_layers", "flatten_config", "coverage_text", "not_run_lines"]


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


def coverage_text(coverage: Mapping[str, Any] | None) -> str:
    """How much of the model the diagnosis saw, in one line (the same words in the terminal and the page)."""
    if not coverage:
        return "Coverage: not computed."
    parts = []
    weights = coverage.get("weight_matrices")
    if not coverage.get("known") or not weights:
        parts.append("unknown (" + str(coverage.get("note") or "the log does not list the model's parameters") + ")")
    else:
        fraction = weights["fraction"]
        share = f" ({fraction:.0%})" if fraction is not None else ""
        low = ("" if coverage.get("complete_enough", True)
               else f", below the {coverage['threshold']:.0%} a verdict needs")
        parts.append(f"{weights['measured']} of {weights['total']} weight matrices measured{share}{low}")
        if weights.get("unmeasured"):
            parts.append("unmeasured: " + _some(weights["unmeasured"], weights["total"] - weights["measured"]
                                                - len(weights["unmeasured"]), 3))
        if weights.get("frozen"):
            parts.append(f"{weights['frozen']} frozen")
    acts = coverage.get("activations") or {}
    if acts.get("total"):
        parts.append(f"{acts['hooked']} of {acts['total']} activation modules hooked")
    if coverage.get("unclassified_count"):
        listed = coverage.get("unclassified") or []
        parts.append(f"{coverage['unclassified_count']} module(s) of no known role ("
                     + _some(listed, coverage["unclassified_count"] - len(listed), 2) + ")")
    if coverage.get("time_series"):
        parts.append("gradient through time of " + ", ".join(coverage["time_series"]))
    if coverage.get("time_unmeasured"):
        parts.append("gradient through time not measured: " + ", ".join(coverage["time_unmeasured"][:3]))
    return "Coverage: " + "; ".join(parts) + "."


def _some(names: Sequence[str], unlisted: int, limit: int) -> str:
    """``abbreviate_layers`` for a list the log already cut short: ``unlisted`` more exist than it names."""
    shown = ", ".join(names[:limit])
    rest = max(0, len(names) - limit) + max(0, unlisted)
    return shown if rest <= 0 else f"{shown} … +{rest} more"


def not_run_lines(not_run: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per rule that could not run: the rule, the finding kinds it gives, why."""
    return [f"{entry['rule']} ({', '.join(entry.get('kinds') or [])}): {entry['reason']}"
            + (" — the verdict cannot be healthy without it" if entry.get("blocks_verdict") else "")
            for entry in not_run]
