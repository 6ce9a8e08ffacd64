"""Number checks: what each accepts, what it refuses, and the sentence it says."""
from __future__ import annotations

import math

import pytest

from gradhealth.errors import ConfigError
from gradhealth.validate import non_negative_int, non_negative_number, positive_int, positive_number, require_positive


def test_integer_checks():
    assert positive_int("steps", 3) == 3 and non_negative_int("seed", 0) == 0
    for bad in (0, -1, 2.0, True, None, "3"):
        with pytest.raises(ConfigError, match=r"^steps must be a positive integer, not .*\.$"):
            positive_int("steps", bad)
    for bad in (-1, 1.0, False):
        with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
            non_negative_int("seed", bad)


def test_number_checks():
    assert positive_number("lr", 1) == 1.0 and isinstance(positive_number("lr", 1), float)
    assert non_negative_number("l1", 0) == 0.0
    for bad in (0, -0.1, math.nan, math.inf, True, "0.1", None):
        with pytest.raises(ConfigError, match="lr must be a positive finite number"):
            positive_number("lr", bad)
    for bad in (-1e-9, math.nan, -math.inf, True):
        with pytest.raises(ConfigError, match="l1 must be a non-negative finite number"):
            non_negative_number("l1", bad)


def test_require_positive_names_the_first_bad_size():
    require_positive(depth=3, width=8)
    with pytest.raises(ConfigError, match="^width must be a positive integer, not 0.$"):
        require_positive(depth=3, width=0, num_classes=-1)
