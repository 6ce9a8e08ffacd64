"""Remedy trials: planned from the spec, forked from the same seed, deterministic, scored as declared."""
from __future__ import annotations

import math

import pytest

from gradhealth.trials import BASELINE, apply_trial, health_score, plan_trials, run_trials
from gradhealth.train.config import TrainConfig

DEEP_SIGMOID = TrainConfig(model="mlp:depth=16,width=32,activation=sigmoid,init=xavier", data="digits", steps=25)


def test_plan_offers_only_what_applies():
    keys = [t.key for t in plan_trials(DEEP_SIGMOID)]
    assert keys[0] == "baseline"
    assert {"relu", "residual", "batchnorm", "he_init", "clip_norm", "lower_lr", "warmup", "l2"} <= set(keys)
    assert "xavier_init" not in keys  # the spec already uses it
    healthy = TrainConfig(model="mlp:depth=8,activation=relu,norm=batch,residual=true", steps=5)
    assert not {"relu", "residual", "batchnorm"} & {t.key for t in plan_trials(healthy)}
    user = TrainConfig(model="some/file.py:build", steps=5)
    assert "residual" not in {t.key for t in plan_trials(user)}


def test_a_transformer_is_offered_pre_ln_not_a_kind_of_norm():
    post = {t.key: t for t in plan_trials(TrainConfig(model="transformer:depth=4,norm=post", data="text", steps=5))}
    assert "pre_ln" in post and not {"batchnorm", "layernorm", "relu"} & set(post)
    assert apply_trial(TrainConfig(model="transformer:depth=4,norm=post", steps=5), post["pre_ln"]).model == \
        "transformer:depth=4,norm=pre"
    pre = {t.key for t in plan_trials(TrainConfig(model="transformer:depth=4,norm=pre", data="text", steps=5))}
    assert "pre_ln" not in pre


def test_a_trial_rewrites_the_spec():
    residual = next(t for t in plan_trials(DEEP_SIGMOID) if t.key == "relu")
    config = apply_trial(DEEP_SIGMOID, residual)
    assert config.model == "mlp:depth=16,width=32,activation=relu,init=he"
    assert apply_trial(DEEP_SIGMOID, BASELINE) == DEEP_SIGMOID


def test_an_init_trial_changes_the_init_the_model_is_built_with():
    import torch

    import gradhealth

    he = next(t for t in plan_trials(DEEP_SIGMOID) if t.key == "he_init")
    config = apply_trial(DEEP_SIGMOID, he)
    assert config.model == "mlp:depth=16,width=32,activation=sigmoid,init=he" and config.init is None
    torch.manual_seed(0)
    baseline = gradhealth.create_model(DEEP_SIGMOID.model, in_features=64)
    torch.manual_seed(0)
    trial = gradhealth.create_model(config.model, in_features=64)
    # Xavier's std for the 32 -> 10 head is sqrt(2 / 42); He's (sigmoid gain 1) is sqrt(1 / 32)
    assert float(baseline.head.weight.detach().std()) == pytest.approx(math.sqrt(2 / 42), rel=0.2)
    assert float(trial.head.weight.detach().std()) == pytest.approx(math.sqrt(1 / 32), rel=0.2)
    assert not torch.equal(baseline.head.weight, trial.head.weight)


def test_health_score_is_the_declared_formula():
    assert health_score(1.0, 1.0, 10, False) == pytest.approx(math.log(math.log(10)))
    assert health_score(1.0, 1e-10, 10, False) == pytest.approx(math.log(math.log(10)) - 1.0)
    assert health_score(1.0, 1e-30, 10, False) == health_score(1.0, 1e-10, 10, False)  # capped
    assert health_score(0.5, 1.0, 10, True) == -math.inf


def test_trials_are_deterministic_whether_run_side_by_side_or_one_by_one():
    trials = [t for t in plan_trials(DEEP_SIGMOID) if t.key in ("baseline", "residual", "clip_norm")]
    sequential = run_trials(DEEP_SIGMOID, trials, workers=1)
    parallel = run_trials(DEEP_SIGMOID, trials, workers=2)
    assert [(r.trial.key, r.final_loss, r.first_last_ratio) for r in sequential] == \
           [(r.trial.key, r.final_loss, r.first_last_ratio) for r in parallel]
    by_key = {r.trial.key: r for r in sequential}
    assert by_key["residual"].first_last_ratio > 1e3 * by_key["baseline"].first_last_ratio
    assert by_key["baseline"].loss_vs_baseline == 1.0
