"""The remedy catalogue: complete, keyed uniquely, every remedy naming its cause and how to apply it."""
from __future__ import annotations

import pytest

from gradhealth.diagnose import catalogue
from gradhealth.diagnose.catalogue import REMEDIES, get_remedy, remedies_for
from gradhealth.diagnose.findings import FINDING_KINDS
from gradhealth.errors import ConfigError


def _keys(kind: str, **context) -> list[str]:
    return [r.key for r in remedies_for(kind, context)]


@pytest.mark.parametrize("kind", FINDING_KINDS)
def test_every_finding_kind_has_remedies_from_the_catalogue(kind):
    keys = _keys(kind)
    assert keys and len(keys) == len(set(keys)) and set(keys) <= set(REMEDIES)


def test_keys_are_unique_and_every_remedy_names_a_cause_and_how():
    assert len(catalogue._CATALOGUE) == len(REMEDIES)
    for key, remedy in REMEDIES.items():
        assert remedy.key == key and remedy.title
        assert len(remedy.why) > 40 and remedy.how, key


def test_the_remedies_of_the_material_are_all_there():
    assert {"relu", "leaky_relu", "he_init", "xavier_init", "batchnorm", "layernorm", "residual", "preact",
            "zero_init_last", "fixup", "clip_norm", "clip_agc", "l2", "lower_lr", "higher_lr", "warmup",
            "lsuv"} <= set(REMEDIES)
    assert "--clip norm" in REMEDIES["clip_norm"].how and "residual=true" in REMEDIES["residual"].how
    assert "0.25" in REMEDIES["relu"].why and "He et al. 2015" in REMEDIES["residual"].why


def test_vanishing_ranking_depends_on_the_activation():
    assert _keys("vanishing_gradient", activation="sigmoid")[:4] == ["relu", "preact", "residual", "he_init"]
    relu = _keys("vanishing_gradient", activation="relu")
    assert relu[:3] == ["residual", "batchnorm", "he_init"] and "relu" not in relu


def test_remedies_the_run_already_uses_are_left_out():
    keys = _keys("vanishing_gradient", activation="relu", residual=True, norm="batch", init="he")
    assert not {"residual", "batchnorm", "he_init", "relu"} & set(keys) and keys
    # exploding in a residual net: zero-init of the branches replaces "add skip connections"
    residual = _keys("exploding_gradient", residual=True)
    assert residual[:3] == ["clip_norm", "lower_lr", "zero_init_last"] and "residual" not in residual
    # He init treats an init scale that is too large; a calibrated init is not that
    assert "he_init" in _keys("exploding_gradient", init="normal(1)")
    assert "he_init" not in _keys("exploding_gradient", init="xavier")


def test_rankings_of_the_other_kinds():
    assert _keys("exploding_gradient")[:5] == ["clip_norm", "lower_lr", "he_init", "batchnorm", "residual"]
    assert _keys("nonfinite")[:3] == ["lower_lr", "clip_norm", "warmup"]
    assert _keys("saturation", activation="tanh")[:3] == ["relu", "xavier_init", "he_init"]
    assert _keys("dead_units", activation="relu")[:3] == ["leaky_relu", "lower_lr", "he_init"]
    assert _keys("lr_too_high") == ["lower_lr", "warmup", "clip_norm"]
    assert _keys("lr_too_low")[0] == "higher_lr"
    assert _keys("degradation")[:2] == ["residual", "batchnorm"]


def test_all_applied_still_lists_something():
    assert _keys("lr_too_low", norm="batch") == ["higher_lr"]
    assert _keys("degradation", residual=True, norm="batch", block="preact", zero_init_last=True) == [
        "residual", "batchnorm", "preact", "zero_init_last"]


def test_remedies_are_copies_and_unknown_names_say_the_choices():
    remedies_for("nonfinite")[0].how = "changed"
    assert REMEDIES["lower_lr"].how != "changed"
    with pytest.raises(ConfigError, match="choose one of"):
        remedies_for("vanishing")
    with pytest.raises(ConfigError, match="residual"):
        get_remedy("skip")


def test_remedies_that_fit_the_model_come_first():
    # a post-LN transformer: warm-up, then the norm inside each branch (Xiong et al. 2020)
    assert _keys("vanishing_gradient", norm="layer", norm_placement="post")[:2] == ["warmup", "pre_ln"]
    assert _keys("exploding_gradient", norm="layer", norm_placement="post")[:2] == ["warmup", "pre_ln"]
    # already pre-LN and warming up: neither is offered again
    pre = _keys("vanishing_gradient", norm="layer", norm_placement="pre", warmup=True)
    assert not {"pre_ln", "warmup", "layernorm"} & set(pre)
    # Adam at a rate too high: warm-up first, unless it warms up already
    assert _keys("lr_too_high", optimizer="AdamW")[:2] == ["warmup", "lower_lr"]
    assert _keys("lr_too_high", optimizer="AdamW", warmup=True)[0] == "lower_lr"
    # a run that already clips is not told to clip
    assert "clip_norm" not in _keys("exploding_gradient", clip="norm")


def test_recurrent_remedies_depend_on_the_cell():
    assert _keys("vanishing_through_time", recurrent=["RNN"]) == ["lstm_gru", "orthogonal_recurrent_init",
                                                                   "truncated_bptt"]
    assert _keys("vanishing_through_time", recurrent=["LSTM"])[:2] == ["forget_bias", "orthogonal_recurrent_init"]
    assert _keys("vanishing_through_time", recurrent=["GRU"])[0] == "orthogonal_recurrent_init"
    assert _keys("exploding_through_time", recurrent=["GRU"])[:2] == ["clip_norm", "orthogonal_recurrent_init"]
    assert "Bengio et al. 1994" in REMEDIES["lstm_gru"].why and "detach" in REMEDIES["truncated_bptt"].how
