"""fit(): the remedies in the right order, skipped steps, non-finite policies, bit-exact resume."""
from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch

import gradhealth
from gradhealth.errors import ConfigError, Interrupted, NonFiniteError
from gradhealth.monitor.records import read_jsonl
from gradhealth.train.checkpoint import load_checkpoint
from gradhealth.train.config import TrainConfig
from gradhealth.train.loop import fit

SMALL = dict(model="mlp:depth=4,width=32", data="synthetic:in=16,classes=4,n=512", batch_size=32,
             lr=0.05, progress=False)


def test_training_with_norm_clipping_lowers_the_loss_and_writes_the_run(tmp_path):
    result = fit(**{**SMALL, "progress": None, "data": "digits"}, steps=40, clip="norm", clip_value=1.0, eval_every=20,
                 out=str(tmp_path))
    losses = [r.loss for r in result.records]
    assert losses[-1] < 0.8 * losses[0]
    assert all(r.global_grad_norm_post_clip <= 1.0 + 1e-6 for r in result.records)
    # the record says whether clipping fired: exactly when the pre-clip norm was over the bound
    assert all(r.metrics["clipped"] == float(r.global_grad_norm > 1.0) for r in result.records)
    for name in ("metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / name).exists(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["final_val_acc"] is not None
    log = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r.step for r in log.records] == list(range(40))
    assert log.meta.config["clip"] == "norm"
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 40


def test_epochs_are_converted_to_steps():
    # 512 * 0.8 = 409 training examples, batch 32 (last partial batch dropped): 12 steps per epoch
    result = fit(**SMALL, epochs=2)
    assert result.summary["steps"] == 24


@pytest.mark.parametrize("clip", ["none", "norm", "value", "agc", "autoclip"])
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_every_clip_mode_and_amp_train(clip, amp):
    result = fit(**SMALL, steps=6, clip=clip, amp=amp)
    assert result.summary["steps"] == 6
    assert all(math.isfinite(r.loss) for r in result.records)


def test_interrupted_run_resumes_bit_exact(tmp_path):
    """N steps in one run == interrupted after k (Ctrl-C) + resume to N, every tensor equal."""
    common = dict(SMALL, model="mlp:depth=6,width=32,norm=batch", steps=12, schedule="multistep",
                  clip="autoclip", momentum=0.9, weight_decay=1e-3)
    whole = fit(**common, out=str(tmp_path / "whole"))

    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=6,width=32,norm=batch,in_features=16,num_classes=4")
    forwards = {"n": 0}

    def ctrl_c_during_step_5(module, inputs):
        forwards["n"] += 1
        if forwards["n"] == 6 and module.training:
            os.kill(os.getpid(), signal.SIGINT)

    handle = model.register_forward_pre_hook(ctrl_c_during_step_5)
    with pytest.raises(Interrupted, match="interrupted at step 6; checkpoint written"):
        config = TrainConfig(**{k: v for k, v in common.items() if k != "progress"}, out=str(tmp_path / "part"))
        fit(config, model=model, progress=False)
    handle.remove()
    assert load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["step"] == 6
    fit(**common, out=str(tmp_path / "part"), resume=str(tmp_path / "part" / "checkpoints" / "last.pt"))
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for va, vb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(va["momentum_buffer"], vb["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["clipper"]["history"], b["clipper"]["history"])
    log = read_jsonl(tmp_path / "part" / "metrics.jsonl")
    assert [r.step for r in log.records] == list(range(12))
    assert [r.loss for r in log.records] == [r.loss for r in whole.records]


def _fit_module(model, **overrides):
    """fit() on a model object, the rest of the run as SMALL says."""
    fields = {k: v for k, v in {**SMALL, **overrides}.items() if k != "progress"}
    return fit(TrainConfig(**{**fields, "model": "custom"}), model=model, progress=False)


def _poison(step_to_break: int):
    """A model whose first layer's gradient turns to inf on one optimizer step."""
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=4,width=16,in_features=16,num_classes=4")
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * math.inf if calls["n"] == step_to_break + 1 else grad

    model.stem.fc1.weight.register_hook(hook)
    return model


def test_skip_policy_records_the_skipped_step_and_holds_the_schedule():
    result = _fit_module(_poison(3), steps=8, on_nonfinite="skip",
                 schedule="step", lr=0.1)
    skipped = [r.step for r in result.records if r.skipped]
    assert skipped == [3]
    bad = result.records[3]
    assert bad.first_nonfinite.kind == "gradient" and bad.first_nonfinite.layer == "stem.fc1"
    # step schedule: /10 every 8//3 = 2 scheduler steps; the skipped step does not advance it
    lrs = [r.lr for r in result.records]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.0001])


def test_fp16_grad_scaler_skip_is_recorded_and_the_scheduler_does_not_step():
    result = _fit_module(_poison(2), steps=5, amp="fp16", schedule="exponential")
    assert [r.skipped for r in result.records] == [False, False, True, False, False]
    lrs = [r.lr for r in result.records]
    assert lrs[3] == lrs[2] and lrs[2] < lrs[1]


def test_stop_policy_saves_and_names_the_first_bad_layer(tmp_path):
    result = _fit_module(_poison(4), steps=10, on_nonfinite="stop", out=str(tmp_path))
    assert result.stopped == "nonfinite"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["first_nonfinite"]["layer"] == "stem.fc1" and summary["first_nonfinite"]["step"] == 4
    assert "stem.fc1" in summary["stop_reason"] and "batch" in summary["stop_reason"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 4


def test_raise_policy_raises_one_sentence():
    with pytest.raises(NonFiniteError, match="NaN/Inf at step 1: first in the gradient of layer stem.fc1"):
        _fit_module(_poison(1), steps=5, on_nonfinite="raise")


def test_a_nan_in_the_forward_pass_is_located_even_on_an_undetailed_step():
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=4,width=16,in_features=16,num_classes=4,activation=tanh")
    calls = {"n": 0}

    def poison_output(module, inputs, output):
        calls["n"] += 1
        # the 4th forward and its replay (the loop re-runs a bad batch with the hooks on)
        return output * math.nan if calls["n"] in (4, 5) else output

    model.blocks[0].fc2.register_forward_hook(poison_output)
    result = _fit_module(model, steps=6, on_nonfinite="stop", detail_every=10)
    event = result.records[-1].first_nonfinite
    assert result.stopped == "nonfinite" and result.records[-1].step == 3
    assert (event.kind, event.layer) == ("forward", "blocks.0.fc2")


def test_gradient_accumulation_counts_optimizer_steps_and_batches():
    result = fit(**SMALL, steps=3, accumulate=4)
    assert [r.step for r in result.records] == [0, 1, 2]
    assert [r.batch for r in result.records] == [3, 7, 11]


def test_lsuv_init_uses_a_training_batch():
    result = fit(**{**SMALL, "model": "mlp:depth=6,width=32,activation=tanh"}, init="lsuv", steps=2)
    assert result.summary["steps"] == 2


@pytest.mark.parametrize("overrides, message", [
    ({"lr": -1.0}, "learning rate"), ({"lr": float("nan")}, "learning rate"), ({"steps": 0}, "steps"),
    ({"clip": "sometimes"}, "unknown clip mode"), ({"clip": "norm", "clip_value": -1.0}, "clip"),
    ({"schedule": "wavy"}, "unknown lr schedule"), ({"optimizer": "lbfgs"}, "unknown optimizer"),
    ({"amp": "fp8"}, "AMP mode"), ({"on_nonfinite": "pray"}, "non-finite policy"),
    ({"data": "imagenet"}, "unknown data set"), ({"model": "mlp:depth=0"}, "depth"),
    ({"detail_every": 0}, "detail_every"), ({"monitor_every": 0}, "monitor_every"),
])
def test_bad_configurations_raise_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        fit(**{**SMALL, "steps": 2, **overrides})


def test_config_round_trips_through_json():
    config = TrainConfig(model="resnet20", steps=5, clip="norm")
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
