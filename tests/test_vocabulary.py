"""The shared vocabulary: importable without torch, gains equal to torch's, the spec grammar."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from gradhealth.errors import ConfigError
from gradhealth.vocabulary import (
    ACTIVATION_NAMES,
    GAIN_NAMES,
    canonical_activation,
    canonical_norm,
    nonlinearity_gain,
    split_spec,
)


def test_the_vocabulary_and_the_theory_import_without_torch():
    # torch set to None in sys.modules makes any `import torch` raise ImportError
    code = ("import sys; sys.modules['torch'] = None; "
            "import gradhealth.vocabulary, gradhealth.diagnose.theory; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("nonlinearity, slope", [("linear", 0.0), ("sigmoid", 0.0), ("tanh", 0.0), ("relu", 0.0),
                                                 ("leaky_relu", 0.01), ("leaky_relu", 0.2)])
def test_gains_equal_torchs_calculate_gain(nonlinearity, slope):
    torch = pytest.importorskip("torch")
    assert nonlinearity_gain(nonlinearity, slope) == torch.nn.init.calculate_gain(nonlinearity, slope)


def test_every_activation_has_a_gain_and_aliases_resolve():
    assert set(GAIN_NAMES) == set(ACTIVATION_NAMES)
    assert canonical_activation("Leaky-ReLU") == "leaky_relu" and canonical_activation("swish") == "silu"
    assert canonical_norm(None) == "none" and canonical_norm("BN") == "batch"
    assert math.isclose(nonlinearity_gain("leaky_relu", 1.0), 1.0)


def test_split_spec_reads_the_grammar_only():
    assert split_spec("mlp:depth=3, init=normal(0.1),layers=(1,2)") == (
        "mlp", {"depth": "3", "init": "normal(0.1)", "layers": "(1,2)"})
    assert split_spec("anything:made_up=1") == ("anything", {"made_up": "1"})  # no registry lookup
    for bad, message in (("mlp:depth", "key=value"), ("mlp:a=1,a=2", "twice"), ("net.py", "model file")):
        with pytest.raises(ConfigError, match=message):
            split_spec(bad)
