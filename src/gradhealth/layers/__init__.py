"""Building blocks by name: activations, normalizations and initialization schemes (torch only)."""
from gradhealth.layers.activations import (
    ACTIVATIONS,
    ActivationRule,
    create_act,
    get_act,
    rule_for_module,
)
from gradhealth.layers.init import INIT_SCHEMES, apply_init, parse_init
from gradhealth.layers.norms import NORMS, create_norm

__all__ = [
    "ACTIVATIONS",
    "ActivationRule",
    "create_act",
    "get_act",
    "rule_for_module",
    "NORMS",
    "create_norm",
    "INIT_SCHEMES",
    "apply_init",
    "parse_init",
]
