"""Each named schedule against the torch class built by hand or the closed form, and resume from state."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sched

from gradhealth.errors import ConfigError
from gradhealth.remedies import SCHEDULES, create_scheduler
from gradhealth.remedies.schedules import default_milestones, default_warmup_steps


def _optimizer(lr=0.1, momentum=0.9):
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=lr, momentum=momentum)


def _lrs(optimizer, scheduler, steps):
    """The lr each optimizer step runs at, stepping the scheduler once per optimizer step."""
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _oracle(build, steps):
    optimizer = _optimizer()
    return _lrs(optimizer, build(optimizer), steps)


def _named(name, total, steps=None, **kw):
    optimizer = _optimizer()
    return _lrs(optimizer, create_scheduler(name, optimizer, total, **kw), total if steps is None else steps)


T = 64  # a scaled-down run: He et al.'s 64k iterations / 1000


@pytest.mark.parametrize(
    "name, kw, build",
    [
        ("constant", {}, lambda o: sched.ConstantLR(o, factor=1.0, total_iters=T)),
        ("step", {}, lambda o: sched.StepLR(o, step_size=T // 3, gamma=0.1)),
        ("step", {"step_size": 10, "gamma": 0.5}, lambda o: sched.StepLR(o, step_size=10, gamma=0.5)),
        ("multistep", {}, lambda o: sched.MultiStepLR(o, milestones=[32, 48], gamma=0.1)),
        ("multistep", {"milestones": [10, 40], "gamma": 0.2}, lambda o: sched.MultiStepLR(o, [10, 40], gamma=0.2)),
        ("exponential", {"gamma": 0.95}, lambda o: sched.ExponentialLR(o, gamma=0.95)),
        ("cosine", {"min_lr": 0.001}, lambda o: sched.CosineAnnealingLR(o, T_max=T, eta_min=0.001)),
        ("onecycle", {"max_lr": 0.5}, lambda o: sched.OneCycleLR(o, max_lr=0.5, total_steps=T)),
    ],
)
def test_named_schedule_equals_the_torch_class_built_by_hand(name, kw, build):
    assert _named(name, T, **kw) == _oracle(build, T)


def test_multistep_defaults_are_he_et_al_32k_and_48k_of_64k():
    assert default_milestones(64_000) == [32_000, 48_000]
    lrs = _named("multistep", 640)  # the same run scaled down 100x
    assert lrs[319] == pytest.approx(0.1) and lrs[320] == pytest.approx(0.01)
    assert lrs[479] == pytest.approx(0.01) and lrs[480] == pytest.approx(0.001)
    assert lrs[-1] == pytest.approx(0.001)
    assert lrs == _oracle(lambda o: sched.MultiStepLR(o, milestones=[320, 480], gamma=0.1), 640)


def test_constant_stays_at_the_base_lr_and_exponential_ends_at_one_percent():
    assert _named("constant", T) == [0.1] * T
    optimizer = _optimizer()
    scheduler = create_scheduler("exponential", optimizer, T)
    _lrs(optimizer, scheduler, T)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.01, rel=1e-9)


def test_warmup_cosine_matches_the_closed_form():
    total, warmup, base, floor = 100, 5, 0.1, 0.002  # default warm-up: 5% of 100
    lrs = _named("warmup_cosine", total, min_lr=floor)
    expected = [
        base * (k + 1) / (warmup + 1) if k < warmup
        else floor + (base - floor) * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))) / 2
        for k in range(total)
    ]
    for got, want in zip(lrs, expected):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert lrs[0] == pytest.approx(base / 6)
    assert max(lrs) == pytest.approx(base) and lrs.index(max(lrs)) == warmup
    optimizer = _optimizer()
    scheduler = create_scheduler("warmup_cosine", optimizer, total, min_lr=floor)
    _lrs(optimizer, scheduler, total)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(floor, rel=1e-9)  # after the last step


def test_warmup_cosine_starts_near_zero_on_a_long_run():
    assert default_warmup_steps(2000) == 100 and default_warmup_steps(2) == 1 and default_warmup_steps(1) == 0
    lrs = _named("warmup_cosine", 2000, steps=101)
    assert lrs[0] == pytest.approx(0.1 / 101) and lrs[100] == pytest.approx(0.1)


@pytest.mark.parametrize("name", SCHEDULES)
def test_state_dict_round_trip_resumes_the_same_sequence(name):
    total, cut = 40, 17
    straight = _named(name, total)
    optimizer = _optimizer()
    scheduler = create_scheduler(name, optimizer, total)
    first = _lrs(optimizer, scheduler, cut)
    states = optimizer.state_dict(), scheduler.state_dict()

    resumed_opt = _optimizer()
    resumed = create_scheduler(name, resumed_opt, total)
    resumed_opt.load_state_dict(states[0])
    resumed.load_state_dict(states[1])
    assert first + _lrs(resumed_opt, resumed, total - cut) == straight


def test_onecycle_does_not_invent_momentum_for_plain_sgd():
    optimizer = _optimizer(momentum=0.0)
    create_scheduler("onecycle", optimizer, T)
    assert optimizer.param_groups[0]["momentum"] == 0.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 25)  # default peak: the optimizer's lr


@pytest.mark.parametrize(
    "name, total, kw, match",
    [
        ("cosine", 0, {}, "total_steps"),
        ("cosine", 10.5, {}, "total_steps"),
        ("step", 10, {"gamma": 0.0}, "gamma"),
        ("step", 10, {"gamma": -0.1}, "gamma"),
        ("exponential", 10, {"gamma": math.nan}, "gamma"),
        ("step", 10, {"step_size": 0}, "step_size"),
        ("multistep", 10, {"milestones": [5, 3]}, "increasing"),
        ("multistep", 10, {"milestones": [5, 5]}, "increasing"),
        ("multistep", 10, {"milestones": [5, 10]}, "milestone"),
        ("multistep", 10, {"milestones": [0, 5]}, "milestone"),
        ("warmup_cosine", 10, {"warmup_steps": 10}, "warmup_steps"),
        ("warmup_cosine", 10, {"warmup_steps": -1}, "warmup_steps"),
        ("cosine", 10, {"min_lr": -0.1}, "min_lr"),
        ("cosine", 10, {"min_lr": 1.0}, "above"),
        ("onecycle", 10, {"max_lr": 0.0}, "max_lr"),
        ("cosine", 10, {"gamma": 0.5}, "not used"),
        ("step", 10, {"milestones": [3]}, "not used"),
        ("constant", 10, {"warmup_steps": 2}, "not used"),
        ("step", 10, {"min_lr": 0.01}, "not used"),
        ("linear", 10, {}, "choose one of"),
    ],
)
def test_bad_options_are_refused_with_a_config_error(name, total, kw, match):
    with pytest.raises(ConfigError, match=match):
        create_scheduler(name, _optimizer(), total, **kw)
