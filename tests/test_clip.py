"""Clipping against oracles: clip_grad_norm_, torch.clamp, a per-row AGC loop, numpy.percentile."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradhealth
from gradhealth.errors import CheckpointError, ConfigError
from gradhealth.remedies import CLIP_MODES, ClipResult, create_clipper, create_optimizer

# norms are summed in float32 where float32 holds them (see tensor_norms.fused_norms): the
# manual float64 norms agree to float32's summation error, not to the last bit
NORM_REL = 1e-6


def _params_with_grads(seed: int = 0, scale: float = 1.0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 4), (5,), (3, 2, 3, 3), (3,), ()]
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * scale
    return params


def _copy(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Parameters with their gradients (deepcopy drops .grad)."""
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    for c, p in zip(copies, params):
        c.grad = p.grad.clone()
    return copies


def _manual_norm(tensors) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def _grads(params):
    return [p.grad.clone() for p in params]


def _assert_result_on_device(result: ClipResult) -> None:
    assert result.pre_norm.dim() == 0 and result.post_norm.dim() == 0 and result.clipped.dim() == 0
    assert result.pre_norm.dtype == torch.float64 and result.clipped.dtype == torch.bool


# ---- norm -----------------------------------------------------------------------------------

@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_norm_clip_matches_clip_grad_norm_and_a_manual_computation(max_norm):
    ours, theirs = _params_with_grads(), _params_with_grads()
    before = _grads(ours)
    result = create_clipper("norm", max_norm)(ours)
    total = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    _assert_result_on_device(result)

    pre = _manual_norm(before)
    coef = min(1.0, max_norm / (pre + 1e-6))
    assert float(result.pre_norm) == pytest.approx(pre, rel=NORM_REL)
    assert float(result.pre_norm) == pytest.approx(float(total), rel=1e-6)
    for p, q, g in zip(ours, theirs, before):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
        torch.testing.assert_close(p.grad, g * coef, rtol=1e-6, atol=0)
    assert float(result.post_norm) == pytest.approx(_manual_norm(_grads(ours)), rel=1e-6)
    assert bool(result.clipped) is (pre > max_norm)


def test_norm_clip_skips_parameters_without_gradients():
    params = _params_with_grads()
    params[1].grad = None
    expected = _manual_norm([p.grad for p in params if p.grad is not None])
    result = create_clipper("norm", 0.1)(params)
    assert params[1].grad is None
    assert float(result.pre_norm) == pytest.approx(expected, rel=NORM_REL)
    assert float(result.post_norm) == pytest.approx(0.1, rel=1e-5)


def test_norm_of_float32_gradients_too_large_to_square_in_float32_is_still_clipped_not_zeroed():
    p = nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 1e20)  # (1e20)^2 overflows float32
    result = create_clipper("norm", 1.0)(p)
    assert float(result.pre_norm) == pytest.approx(2e20, rel=1e-6)
    torch.testing.assert_close(p.grad, torch.full((4,), 0.5), rtol=1e-5, atol=0)


# ---- value ----------------------------------------------------------------------------------

def test_value_clip_matches_torch_clamp():
    params = _params_with_grads(scale=2.0)
    before = _grads(params)
    result = create_clipper("value", 1.5)(params)
    for p, g in zip(params, before):
        assert torch.equal(p.grad, torch.clamp(g, -1.5, 1.5))
    assert float(result.pre_norm) == pytest.approx(_manual_norm(before), rel=NORM_REL)
    assert float(result.post_norm) == pytest.approx(_manual_norm(_grads(params)), rel=NORM_REL)
    assert bool(result.clipped)
    unclipped = create_clipper("value", 100.0)(params)
    assert not bool(unclipped.clipped) and float(unclipped.post_norm) == float(unclipped.pre_norm)


# ---- agc ------------------------------------------------------------------------------------

class HeadFirst(nn.Module):
    """The classifier is registered first, so the last parameters are not the head's."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.gain = nn.Parameter(torch.tensor(0.5))
        self.fc = nn.Linear(6, 6)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x):
        x = F.relu(self.norm(self.conv(x))).mean(dim=(2, 3))
        return self.head(self.gain * self.fc(x))


def _agc_reference(model, head, clip, eps=1e-3):
    """Per-row loop in float64, after the NFNet reference."""
    head_ids = {id(p) for p in head.parameters()}
    out = {}
    for name, p in model.named_parameters():
        g = p.grad.double().clone()
        if id(p) not in head_ids:
            w = p.detach().double()
            units = [(Ellipsis,)] if g.dim() <= 1 else [(i,) for i in range(g.shape[0])]
            for u in units:
                max_norm = clip * max(float(w[u].norm()), eps)
                g_norm = float(g[u].norm())
                if g_norm > max_norm:
                    g[u] = g[u] * (max_norm / g_norm)
        out[name] = g
    return out


def _spread_grads(model, seed=0):
    """Gradients whose rows span five decades, so some units are clipped and some are not."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        rows = p.shape[0] if p.dim() else 1
        scale = torch.logspace(-4, 1, rows).reshape((rows,) + (1,) * max(p.dim() - 1, 0)) if p.dim() else 1e-3
        p.grad = torch.randn(p.shape, generator=gen) * scale


@pytest.mark.parametrize("head_arg", [None, "head"])
def test_agc_matches_a_per_row_reference_and_leaves_the_head_alone(head_arg):
    torch.manual_seed(0)
    model = HeadFirst()
    _spread_grads(model)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    expected = _agc_reference(model, model.head, clip=0.05)
    result = create_clipper("agc", 0.05, model=model, head=head_arg)(model.parameters())

    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad.double(), expected[name], rtol=1e-5, atol=1e-9)
    assert torch.equal(model.head.weight.grad, before["head.weight"])
    assert torch.equal(model.head.bias.grad, before["head.bias"])
    # the last-registered layer is not the head: it is clipped
    assert not torch.equal(model.fc.weight.grad, before["fc.weight"])
    changed_rows = (model.conv.weight.grad != before["conv.weight"]).flatten(1).any(1)
    assert changed_rows.any() and not changed_rows.all()  # both branches of the rule were exercised
    assert float(result.pre_norm) == pytest.approx(_manual_norm(before.values()), rel=1e-10)
    assert float(result.post_norm) == pytest.approx(_manual_norm(expected.values()), rel=1e-6)
    assert bool(result.clipped)


def test_agc_takes_the_head_of_a_registered_model_from_get_classifier():
    torch.manual_seed(1)
    model = gradhealth.create_model("mlp:depth=4,width=16,in_features=8,num_classes=3")
    F.cross_entropy(model(torch.randn(32, 8)), torch.randint(0, 3, (32,))).mul(1e3).backward()
    before = model.head.weight.grad.clone()
    expected = _agc_reference(model, model.get_classifier(), clip=0.01)
    create_clipper("agc", model=model)(model.parameters())
    assert torch.equal(model.head.weight.grad, before)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad.double(), expected[name], rtol=1e-5, atol=1e-9)


def test_agc_refuses_to_guess_the_head():
    plain = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="pass head="):
        create_clipper("agc", model=plain)
    with pytest.raises(ConfigError, match="model="):
        create_clipper("agc")
    with pytest.raises(ConfigError, match="no submodule"):
        create_clipper("agc", model=plain, head="classifier")
    with pytest.raises(ConfigError, match="not part of the model"):
        create_clipper("agc", model=plain, head=nn.Linear(4, 2))
    assert create_clipper("agc", model=plain, head="1").head is plain[1]


# ---- autoclip -------------------------------------------------------------------------------

def test_autoclip_threshold_is_numpy_percentile_of_the_history_including_the_current_norm():
    clipper = create_clipper("autoclip", percentile=25)
    seen = []
    for step in range(12):
        params = _params_with_grads(seed=step, scale=float(1 + (step * 7) % 5))
        before = _grads(params)
        result = clipper(params)
        pre = float(result.pre_norm)
        assert pre == pytest.approx(_manual_norm(before), rel=NORM_REL)
        seen.append(pre)
        threshold = np.percentile(seen, 25)
        assert float(clipper.threshold) == pytest.approx(threshold, rel=1e-12)
        coef = min(1.0, threshold / (pre + 1e-6))
        for p, g in zip(params, before):
            torch.testing.assert_close(p.grad, g * coef, rtol=1e-6, atol=0)
        assert float(result.post_norm) == pytest.approx(_manual_norm(_grads(params)), rel=1e-6)
        assert bool(result.clipped) is (pre > float(clipper.threshold))
    np.testing.assert_allclose(clipper.history().numpy(), seen, rtol=1e-12)


def test_autoclip_history_is_bounded_to_the_newest_finite_norms():
    clipper = create_clipper("autoclip", 50.0, history=4)
    seen = []
    for step in range(7):
        params = _params_with_grads(seed=step, scale=step + 1.0)
        seen.append(_manual_norm(_grads(params)))
        clipper(params)
    np.testing.assert_allclose(clipper.history().numpy(), seen[-4:], rtol=NORM_REL)
    assert float(clipper.threshold) == pytest.approx(np.percentile(seen[-4:], 50), rel=NORM_REL)


def test_autoclip_resumes_bit_exactly_from_a_weights_only_checkpoint():
    steps = [_params_with_grads(seed=s, scale=1.0 + s % 3) for s in range(18)]
    uninterrupted = create_clipper("autoclip", history=5)
    first = create_clipper("autoclip", history=5)
    for params in steps[:12]:
        uninterrupted(_copy(params))
        first(_copy(params))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = create_clipper("autoclip", history=5)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for params in steps[12:]:
        a, b = _copy(params), _copy(params)
        ra, rb = uninterrupted(a), resumed(b)
        assert torch.equal(uninterrupted.threshold, resumed.threshold)
        assert torch.equal(ra.post_norm, rb.post_norm)
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(a, b))
    with pytest.raises(CheckpointError):
        resumed.load_state_dict({})
    with pytest.raises(CheckpointError, match="percentile"):
        create_clipper("autoclip", 20.0).load_state_dict(first.state_dict())


# ---- every mode -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", CLIP_MODES)
@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_gradients_are_reported_and_left_untouched(mode, bad):
    model = HeadFirst()
    _spread_grads(model)
    model.fc.weight.grad[0, 0] = bad
    before = [p.grad.clone() for p in model.parameters()]
    clipper = create_clipper(mode, model=model)
    if mode == "autoclip":
        clipper(_params_with_grads())  # a finite history that a non-finite step must not join
    result = clipper(model.parameters())
    assert not math.isfinite(float(result.pre_norm))
    assert torch.equal(result.post_norm, result.pre_norm) or (result.post_norm.isnan() and result.pre_norm.isnan())
    assert not bool(result.clipped)
    for p, g in zip(model.parameters(), before):
        assert torch.equal(p.grad.nan_to_num(), g.nan_to_num())  # bit-for-bit, NaN and Inf included
    if mode == "autoclip":
        assert clipper.history().numel() == 1


@pytest.mark.parametrize("mode", ["none", "norm", "value", "agc"])
def test_stateless_clippers_have_an_empty_state(mode):
    clipper = create_clipper(mode, model=HeadFirst())
    assert clipper.state_dict() == {} and clipper.mode == mode
    clipper.load_state_dict({})
    with pytest.raises(CheckpointError):
        clipper.load_state_dict({"history": torch.zeros(3)})


def test_defaults_follow_the_papers():
    assert create_clipper("norm").value == 1.0
    assert create_clipper("value").value == 1.0
    assert create_clipper("agc", model=HeadFirst()).value == 0.01
    assert create_clipper("autoclip").value == 10.0
    none = create_clipper("none")(_params_with_grads())
    assert torch.equal(none.pre_norm, none.post_norm) and not bool(none.clipped)


@pytest.mark.parametrize("mode", ["norm", "value", "agc", "autoclip"])
@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "1", True])
def test_bad_values_are_refused_with_a_config_error(mode, bad):
    with pytest.raises(ConfigError):
        create_clipper(mode, bad, model=HeadFirst())


def test_bad_options_are_refused_with_a_config_error():
    with pytest.raises(ConfigError, match="choose one of: agc, autoclip, none, norm, value"):
        create_clipper("adaptive")
    with pytest.raises(ConfigError, match="no value"):
        create_clipper("none", 1.0)
    with pytest.raises(ConfigError, match=r"\(0, 100\]"):
        create_clipper("autoclip", percentile=150)
    with pytest.raises(ConfigError, match="history"):
        create_clipper("autoclip", history=0)
    with pytest.raises(ConfigError, match="agc"):
        create_clipper("norm", 1.0, head="head")
    with pytest.raises(ConfigError, match="autoclip"):
        create_clipper("norm", 1.0, percentile=10)


# ---- in training ----------------------------------------------------------------------------

def test_a_small_net_trained_with_norm_clipping_at_one_learns():
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=3,width=32,in_features=8,num_classes=3")
    x = torch.randn(128, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    optimizer = create_optimizer("sgd", model, lr=0.1, momentum=0.9)
    clipper = create_clipper("norm", 1.0)
    losses, post_norms = [], []
    for _ in range(40):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        post_norms.append(clipper(model.parameters()).post_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert max(float(n) for n in post_norms) <= 1.0 + 1e-6
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]
