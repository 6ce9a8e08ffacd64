"""The names the torch side and the torch-free side share: activations, inits, norms, the spec grammar.

``layers`` builds modules from these names and ``diagnose`` reasons about them from a log, so both
read them here, once. Nothing in this module imports torch: ``gradhealth diagnose --from-log`` and
``gradhealth theory`` run without it.
"""
from __future__ import annotations

import math
import re
from typing import Any

from gradhealth.errors import ConfigError, unknown_name

__all__ = [
    "ACTIVATION_NAMES", "ACTIVATION_ALIASES", "GAIN_NAMES", "canonical_activation", "nonlinearity_gain",
    "INIT_SCHEMES", "INIT_ALIASES", "INIT_DEFAULT_ARG", "parse_init",
    "NORMS", "NORM_ALIASES", "canonical_norm",
    "TRUE_WORDS", "FALSE_WORDS", "FILE_SPEC", "split_top_level", "parse_value", "split_spec", "is_file_spec",
]

# ---- activations ---------------------------------------------------------------------------------

ACTIVATION_NAMES = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "gelu", "silu", "elu", "identity")
ACTIVATION_ALIASES = {"swish": "silu", "leakyrelu": "leaky_relu", "none": "identity", "linear": "identity"}
# the nonlinearity each activation's weights are scaled for, in torch.nn.init.calculate_gain's words;
# gelu, silu and elu behave like relu for x > 0, which is where the variance comes from
GAIN_NAMES = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "leaky_relu": "leaky_relu",
              "prelu": "leaky_relu", "gelu": "relu", "silu": "relu", "elu": "relu", "identity": "linear"}


def canonical_activation(name: str) -> str:
    """The activation's own name for any spelling (``Leaky-ReLU`` -> ``leaky_relu``); not validated."""
    key = str(name).lower().replace("-", "_")
    return ACTIVATION_ALIASES.get(key, key)


def nonlinearity_gain(nonlinearity: str, negative_slope: float = 0.0) -> float:
    """The gain of torch.nn.init.calculate_gain: He et al.'s sqrt(2 / (1 + a^2)) for (leaky) ReLU,
    Saxe et al.'s 5/3 for tanh, 1 for sigmoid and linear layers."""
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1 + negative_slope**2))
    gains = {"linear": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0)}
    if nonlinearity not in gains:
        raise unknown_name("nonlinearity", nonlinearity, (*gains, "leaky_relu"))
    return gains[nonlinearity]


# ---- initialization schemes ----------------------------------------------------------------------

INIT_SCHEMES = (
    "default",
    "constant",
    "normal",
    "uniform",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "kaiming_uniform_fan_out",
    "kaiming_normal_fan_out",
    "orthogonal",
    "lsuv",
    "fixup",
)
INIT_ALIASES = {
    "xavier": "xavier_uniform",
    "glorot": "xavier_uniform",
    "glorot_uniform": "xavier_uniform",
    "glorot_normal": "xavier_normal",
    "he": "kaiming_normal",
    "kaiming": "kaiming_normal",
    "he_normal": "kaiming_normal",
    "he_uniform": "kaiming_uniform",
    "he_fan_out": "kaiming_normal_fan_out",
    "torch": "default",
    "pytorch": "default",
}
# The defaults of torch.nn.init where it has one (normal_ std=1, constant needs a value: 1).
INIT_DEFAULT_ARG = {"constant": 1.0, "normal": 1.0, "uniform": 1.0}

_INIT_SPEC = re.compile(r"^\s*([A-Za-z_]+)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")


def parse_init(spec: str) -> tuple[str, float | None]:
    """``"constant(5)"`` -> ``("constant", 5.0)``; ``"he"`` -> ``("kaiming_normal", None)``."""
    match = _INIT_SPEC.match(str(spec))
    if not match:
        raise ConfigError(f"cannot read init {spec!r}; write a name, optionally with one number: 'normal(0.02)'.")
    name = match.group(1).lower()
    name = INIT_ALIASES.get(name, name)
    if name not in INIT_SCHEMES:
        raise unknown_name("init", match.group(1), INIT_SCHEMES + tuple(INIT_ALIASES))
    arg = match.group(2)
    if arg in (None, ""):
        return name, None
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(f"the number in init {spec!r} is not a number.") from None
    if not math.isfinite(value):
        raise ConfigError(f"the number in init {spec!r} must be finite.")
    if name in ("normal", "uniform") and value <= 0:
        raise ConfigError(f"init {name} needs a positive scale, not {value}.")
    return name, value


# ---- normalizations ------------------------------------------------------------------------------

NORMS = ("none", "batch", "layer", "group")
NORM_ALIASES = {"bn": "batch", "batchnorm": "batch", "ln": "layer", "layernorm": "layer",
                "gn": "group", "groupnorm": "group", "identity": "none"}


def canonical_norm(name: str | None) -> str:
    """The normalization's own name for any spelling (None and ``identity`` are ``none``); not validated."""
    key = "none" if name is None else str(name).lower()
    return NORM_ALIASES.get(key, key)


# ---- the model-spec grammar: "name:key=value,..." or "path/to/file.py:factory" ------------------

TRUE_WORDS = frozenset({"true", "yes", "1", "on"})
FALSE_WORDS = frozenset({"false", "no", "0", "off"})
FILE_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets, so ``init=normal(0.1),depth=3`` keeps ``normal(0.1)``."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_value(key: str, raw: str, default: Any) -> Any:
    """Convert ``raw`` to the type of ``default`` (bool, int, float, tuple of ints or str)."""
    text = raw.strip()
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low in TRUE_WORDS:
                return True
            if low in FALSE_WORDS:
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, (tuple, list)):
            inner = text.strip("()[]")
            return tuple(int(v) for v in re.split(r"[\s,x\-]+", inner) if v)
    except ValueError:
        kind = type(default).__name__
        raise ConfigError(f"option {key}={raw!r} is not a valid {kind}.") from None
    if default is None and text.lower() in TRUE_WORDS | FALSE_WORDS:
        return text.lower() in TRUE_WORDS
    return text


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"name:key=value,..."`` -> ``(name, {key: value text})``: the grammar only, no model looked up."""
    name, _, rest = str(spec).partition(":")
    name = name.strip()
    if name.endswith(".py"):
        # a model file whose factory part is missing or malformed, not a registered name
        raise ConfigError(f"{spec!r} names a model file; write path/to/file.py:factory, where factory is the "
                          "name of a function in the file that returns an nn.Module.")
    options: dict[str, str] = {}
    for item in split_top_level(rest):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"cannot read {item!r} in model spec {spec!r}; write key=value pairs separated by commas.")
        if key in options:
            raise ConfigError(f"model spec {spec!r} sets {key} twice; give it once.")
        options[key] = raw.strip()
    return name, options


def is_file_spec(spec: str) -> bool:
    """Whether ``spec`` is ``path/to/file.py:factory`` rather than a registered name."""
    return bool(FILE_SPEC.match(str(spec)))
