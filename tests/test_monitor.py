"""GradientMonitor against oracles: torch's own norms, clip_grad_norm_, hand-computed fractions."""
from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _grads import own_grad_norm

import gradhealth
from gradhealth.errors import ConfigError
from gradhealth.monitor import GradientMonitor, read_jsonl

CUDA_IF_ANY = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))


def _batch(n=16, features=64, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def _train_step(model, opt, x, y, mon, clip=None):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    mon.step(loss=loss)
    total = None
    if clip is not None:
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        mon.after_clip()
    opt.step()
    opt.zero_grad()
    return loss, total


def test_layer_norms_equal_vector_norm_and_total_equals_clip_grad_norm():
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=6,width=32,activation=tanh,norm=layer")
    x, y = _batch()
    with GradientMonitor(model) as mon:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss=loss)
        expected = {name: own_grad_norm(m) for name, m in model.named_modules()
                    if any(True for _ in m.parameters(recurse=False))}
        max_abs = {name: max(float(p.grad.abs().max()) for p in m.parameters(recurse=False))
                   for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
        weights = {name: float(torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in m.parameters(recurse=False)]).double()))
                   for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
        total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
        record = mon.records[-1]
    assert set(record.layers) == set(expected)
    for name, stats in record.layers.items():
        assert stats.grad_norm == pytest.approx(expected[name], rel=1e-6)
        assert stats.grad_max == pytest.approx(max_abs[name], rel=1e-6)
        assert stats.weight_norm == pytest.approx(weights[name], rel=1e-6)
    assert record.global_grad_norm == pytest.approx(total, rel=1e-6)
    assert record.loss == pytest.approx(float(loss.detach()))


def test_post_clip_norms_and_update_ratio_from_the_real_step():
    torch.manual_seed(1)
    model = gradhealth.create_model("mlp:depth=4,width=16")
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = _batch()
    with GradientMonitor(model, optimizer=opt) as mon:
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss=loss)
        pre = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05))
        post_layer = {"head": own_grad_norm(model.head)}
        mon.after_clip()
        opt.step()
        record = mon.records[-1]
    assert record.global_grad_norm == pytest.approx(pre, rel=1e-6)
    assert record.global_grad_norm_post_clip == pytest.approx(0.05, rel=1e-4)
    assert record.layers["head"].grad_norm_post_clip == pytest.approx(post_layer["head"], rel=1e-6)
    with torch.no_grad():
        delta = torch.cat([(model.head.weight - before["head.weight"]).flatten(), (model.head.bias - before["head.bias"]).flatten()])
        w0 = torch.cat([before["head.weight"].flatten(), before["head.bias"].flatten()])
    expected_ratio = float(delta.norm() / w0.norm())
    assert record.layers["head"].update_ratio == pytest.approx(expected_ratio, rel=1e-5)
    assert record.lr == 0.5
    assert record.skipped is False


def test_saturation_and_dead_fractions_equal_hand_computed_values():
    lin = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3))
    model = nn.Sequential(lin, nn.Sigmoid(), nn.Linear(3, 4, bias=False), nn.ReLU())
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 0, 0], [0, 1.0, 0]]))
    # sigmoid saturates where s(1-s) < 0.0025: |x| > ~5.99
    x = torch.tensor([[0.0, 7.0, -8.0], [1.0, 2.0, 10.0]], requires_grad=False)
    with GradientMonitor(model) as mon:
        model(x).sum().backward()
        mon.step()
        acts = mon.records[-1].activations
    s = torch.sigmoid(x)
    assert acts["1"].saturation == pytest.approx(3 / 6)
    assert acts["1"].mean == pytest.approx(float(s.mean()))
    assert acts["1"].std == pytest.approx(float(s.std(unbiased=False)), rel=1e-6)
    assert acts["1"].dead_fraction is None
    # relu units: [s0, -s0, 0, s1]: unit 1 (always negative) and unit 2 (always zero) are dead
    assert acts["3"].dead_fraction == pytest.approx(2 / 4)
    assert acts["3"].saturation == pytest.approx(4 / 8)


def test_inplace_relu_is_measured_from_its_output():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    x = torch.randn(10, 4)
    with GradientMonitor(model) as mon:
        model(x).sum().backward()
        mon.step()
        act = mon.records[-1].activations["1"]
    with torch.no_grad():
        out = torch.relu(model[0](x))
    assert act.mean == pytest.approx(float(out.mean()), rel=1e-6)
    assert act.saturation == pytest.approx(float((out <= 0).float().mean()))
    assert act.dead_fraction == pytest.approx(float((out <= 0).all(0).float().mean()))


def test_a_module_called_twice_is_pooled_over_both_calls():
    # one ReLU object used twice (as torchvision's blocks do), a conv ReLU whose units are
    # channels, and a LeakyReLU whose dead rule is a mask: every fraction against a direct count
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
            self.relu = nn.ReLU()
            self.leaky = nn.LeakyReLU(0.1)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            a = self.relu(self.conv1(x))
            b = self.relu(self.conv2(a))
            return self.head(self.leaky(b.mean((2, 3)) - 0.2))

    torch.manual_seed(0)
    model = Twice()
    with torch.no_grad():
        model.conv2.bias[1] = -100.0  # a channel that is off for every example: dead
    x = torch.randn(4, 2, 5, 5)
    with GradientMonitor(model) as mon:
        model(x).sum().backward()
        mon.step()
        acts = mon.records[-1].activations
    with torch.no_grad():
        a = torch.relu(model.conv1(x))
        b = torch.relu(model.conv2(a))
        c = F.leaky_relu(b.mean((2, 3)) - 0.2, 0.1)
    both = torch.cat([a.reshape(-1), b.reshape(-1)])
    assert acts["relu"].mean == pytest.approx(float(both.mean()), rel=1e-6)
    assert acts["relu"].std == pytest.approx(float(both.std(unbiased=False)), rel=1e-5)
    assert acts["relu"].saturation == pytest.approx(float((both <= 0).float().mean()))
    dead = int((a.amax((0, 2, 3)) <= 0).sum() + (b.amax((0, 2, 3)) <= 0).sum())
    assert 0 < dead < 6
    assert acts["relu"].dead_fraction == pytest.approx(dead / 6)
    assert acts["leaky"].dead_fraction == pytest.approx(float((c.amax(0) < 0).float().mean()))
    assert acts["leaky"].saturation == 0.0  # a slope of 0.1 passes 10 % of the gradient: never flat


def test_an_inplace_activation_whose_rule_needs_the_input_reports_no_saturation():
    model = nn.Sequential(nn.Linear(4, 4), nn.SiLU(inplace=True), nn.Linear(4, 1))
    with GradientMonitor(model) as mon:
        model(torch.randn(8, 4)).sum().backward()
        mon.step()
        act = mon.records[-1].activations["1"]
    assert act.saturation is None and act.mean is not None


def test_update_ratios_cover_every_optimizer_of_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    first, second = (torch.optim.SGD(model[i].parameters(), lr=0.1) for i in (0, 2))
    x = torch.randn(8, 4)
    before = {name: [p.detach().clone() for p in model[int(name)].parameters()] for name in ("0", "2")}
    with GradientMonitor(model, optimizer=[first, second]) as mon:
        model(x).square().sum().backward()
        mon.step()
        first.step()
        second.step()
        record = mon.records[-1]
    for name, old in before.items():
        new = list(model[int(name)].parameters())
        delta = math.sqrt(sum(float((n.detach() - o).square().sum()) for n, o in zip(new, old)))
        weight = math.sqrt(sum(float(o.square().sum()) for o in old))
        assert record.layers[name].update_ratio == pytest.approx(delta / weight, rel=1e-5)
        assert delta > 0


def test_gelu_and_silu_saturation_read_the_input():
    x = torch.tensor([[-10.0, -6.0, 0.0, 3.0]])
    for module, deriv_max in ((nn.GELU(), 1.1289), (nn.SiLU(), 1.0998)):
        model = nn.Sequential(nn.Linear(4, 4, bias=False), module)
        with torch.no_grad():
            model[0].weight.copy_(torch.eye(4))
        xr = x.clone().requires_grad_(True)
        with GradientMonitor(model) as mon:
            model(xr).sum().backward()
            mon.step()
            sat = mon.records[-1].activations["1"].saturation
        # oracle: autograd derivative of the activation itself
        xi = x.clone().requires_grad_(True)
        module(xi).sum().backward()
        expected = float((xi.grad.abs() < 0.01 * deriv_max).float().mean())
        assert sat == pytest.approx(expected)


def test_frozen_and_unused_parameters_have_no_gradient_norm():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen = nn.Linear(8, 8)
            self.used = nn.Linear(8, 3)
            self.unused = nn.Linear(8, 3)
            self.frozen.requires_grad_(False)

        def forward(self, x):
            return self.used(torch.relu(self.frozen(x)))

    model = Net()
    with GradientMonitor(model) as mon:
        model(torch.randn(4, 8)).sum().backward()
        mon.step()
        total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
        record = mon.records[-1]
    assert record.layers["frozen"].grad_norm is None
    assert record.layers["unused"].grad_norm is None
    assert record.layers["frozen"].weight_norm > 0
    assert record.global_grad_norm == pytest.approx(total, rel=1e-6)
    # forward order: frozen, used; unused (never called) last
    assert list(record.layers) == ["frozen", "used", "unused"]


def test_tied_weights_are_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(5, 5, bias=False)
            self.out = nn.Linear(5, 5, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, x):
            return self.out(torch.tanh(self.embed(x)))

    model = Tied()
    with GradientMonitor(model) as mon:
        model(torch.randn(3, 5)).pow(2).sum().backward()
        mon.step()
        record = mon.records[-1]
    total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
    assert list(record.layers) == ["embed"]
    assert record.global_grad_norm == pytest.approx(total, rel=1e-6)
    assert record.layers["embed"].grad_norm == pytest.approx(float(model.embed.weight.grad.norm()), rel=1e-6)


def test_gradient_accumulation_measures_once_per_optimizer_step():
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=3,width=8,in_features=4,num_classes=2")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(4, 4), torch.randint(0, 2, (4,))) for _ in range(6)]
    with GradientMonitor(model, optimizer=opt) as mon:
        for i, (x, y) in enumerate(data):
            (F.cross_entropy(model(x), y) / 3).backward()
            if i % 3 == 2:
                total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
                mon.step()
                opt.step()
                opt.zero_grad()
                assert mon.records[-1].global_grad_norm == pytest.approx(total, rel=1e-6)
    assert [r.step for r in mon.records] == [0, 1]
    assert [r.batch for r in mon.records] == [2, 5]


def test_every_n_records_every_nth_step_and_jsonl_sink_matches(tmp_path):
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=4,width=16")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _batch()
    path = tmp_path / "metrics.jsonl"
    with GradientMonitor(model, optimizer=opt, every=3, detail_every=3, jsonl=path, config={"lr": 0.05}) as mon:
        for _ in range(7):
            _train_step(model, opt, x, y, mon)
    assert [r.step for r in mon.records] == [0, 3, 6]
    log = read_jsonl(path)
    assert [r.step for r in log.records] == [0, 3, 6]
    assert log.records[-1].layers["head"].grad_norm == mon.records[-1].layers["head"].grad_norm
    assert [layer.name for layer in log.meta.layers if layer.role == "weight"][0] == "stem.fc1"
    assert log.meta.config == {"lr": 0.05, "optimizer": "SGD"}  # the optimizer class: added, not overwriting


def test_bf16_autocast_norms_are_those_of_the_fp32_gradients():
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=5,width=32,activation=gelu")
    x, y = _batch()
    with GradientMonitor(model) as mon:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss=loss)
        record = mon.records[-1]
        assert record.layers["head"].grad_norm == pytest.approx(own_grad_norm(model.head), rel=1e-6)
    assert all(a.mean is not None and math.isfinite(a.mean) for a in record.activations.values())


@pytest.mark.parametrize("device", ["cpu", CUDA_IF_ANY])
def test_fp16_grad_scaler_skipped_step_is_recorded_and_norms_are_unscaled(device):
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=4,width=16").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**12)
    x, y = (t.to(device) for t in _batch())
    with GradientMonitor(model, optimizer=opt, detail_every=1) as mon:
        for inject in (False, True, False):
            with torch.autocast(device, dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            if inject:
                model.blocks[0].fc1.weight.grad[0, 0] = float("inf")
            scaler.unscale_(opt)
            expected = own_grad_norm(model.head)
            mon.step(loss=loss)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            mon.end_step()
            record = mon.records[-1]
            assert record.skipped is inject
            assert record.layers["head"].grad_norm == pytest.approx(expected, rel=1e-6)
            # fp16 activations still give finite statistics (summed in float32)
            assert all(a.mean is not None and math.isfinite(a.mean) for a in record.activations.values())
    bad = mon.records[1]
    assert bad.first_nonfinite.kind == "gradient"
    assert bad.first_nonfinite.layer == "blocks.0.fc1"
    assert bad.layers["blocks.0.fc1"].grad_nonfinite == 1


def test_scaled_gradients_can_be_unscaled_by_the_monitor():
    model = nn.Linear(4, 2)
    model(torch.randn(3, 4)).sum().mul(1024.0).backward()
    with GradientMonitor(model) as mon:
        mon.step(grad_scale=1024.0)
        record = mon.records[-1]
    assert record.global_grad_norm == pytest.approx(float(torch.cat([model.weight.grad.flatten(), model.bias.grad]).norm()) / 1024, rel=1e-6)


@pytest.mark.parametrize("device", ["cpu", CUDA_IF_ANY])
def test_first_nonfinite_names_the_input_batch_and_the_first_bad_layer(device):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).to(device)
    with GradientMonitor(model) as mon:
        for batch in range(3):
            x = torch.randn(2, 4, device=device)
            if batch == 1:
                x[0, 0] = float("nan")
            model(x)
        mon.step()
        event = mon.records[-1].first_nonfinite
    assert (event.kind, event.batch) == ("input", 1)

    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    with GradientMonitor(model) as mon:
        model(torch.randn(2, 4, device=device)).sum().backward()
        mon.step()
        event = mon.records[-1].first_nonfinite
    assert (event.kind, event.layer) == ("forward", "2")


def test_loss_nan_is_the_first_nonfinite_when_the_forward_is_clean():
    model = nn.Linear(3, 1)
    with GradientMonitor(model) as mon:
        out = model(torch.randn(2, 3))
        loss = (out * float("nan")).sum()
        mon.step(loss=loss)
        assert mon.records[-1].first_nonfinite.kind == "loss"
        assert math.isnan(mon.records[-1].loss)


def test_capture_records_a_forward_that_every_would_skip():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid())
    with GradientMonitor(model, every=100) as mon:
        model(torch.randn(2, 3)).sum().backward()
        mon.step()
        with mon.capture():
            model(torch.randn(2, 3)).sum().backward()
        mon.step()
        assert [r.step for r in mon.records] == [0, 1]
        assert "1" in mon.records[-1].activations


def test_eval_forwards_do_not_pollute_the_training_statistics():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    x = torch.randn(5, 3)
    with GradientMonitor(model) as mon:
        model(x).sum().backward()
        model.eval()
        model(x * 100)
        model.train()
        mon.step()
        mean = mon.records[-1].activations["1"].mean
    with torch.no_grad():
        expected = float(torch.relu(model[0](x)).mean())
    assert mean == pytest.approx(expected, rel=1e-5)


def test_hooks_are_removed_and_nothing_is_kept_alive():
    model = gradhealth.create_model("mlp:depth=4,width=8")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = GradientMonitor(model, optimizer=opt)
    with mon:
        _train_step(model, opt, *_batch(), mon)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    model_ref = weakref.ref(model)
    del model, opt
    gc.collect()
    assert model_ref() is None, "the monitor keeps the model alive"
    assert len(mon.records) == 1


def test_monitor_works_on_a_torch_compiled_model_without_graph_breaks():
    torch._dynamo.reset()
    model = gradhealth.create_model("mlp:depth=4,width=16,activation=tanh")
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x, y = _batch()
    with GradientMonitor(compiled) as mon:
        loss = F.cross_entropy(compiled(x), y)  # fullgraph=True raises on any graph break
        loss.backward()
        mon.step(loss=loss)
        record = mon.records[-1]
    assert record.layers["head"].grad_norm == pytest.approx(own_grad_norm(model.head), rel=1e-6)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0
    torch._dynamo.reset()


def test_bad_arguments_raise_config_errors():
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="every"):
        GradientMonitor(model, every=0)
    with pytest.raises(ConfigError, match="not attached"):
        GradientMonitor(model).step()


def test_state_dict_resumes_the_step_counter():
    model = nn.Linear(2, 2)
    with GradientMonitor(model, every=2) as mon:
        for _ in range(3):
            model(torch.randn(1, 2)).sum().backward()
            mon.step()
        state = mon.state_dict()
    assert state == {"step": 3, "batch": 2}
    resumed = GradientMonitor(model, every=2)
    resumed.load_state_dict(state)
    with resumed:
        for _ in range(2):
            model(torch.randn(1, 2)).sum().backward()
            resumed.step()
        assert [r.step for r in resumed.records] == [4]


def test_detail_every_adds_weights_updates_and_activations_on_its_steps_only():
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=4,width=16,activation=tanh")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _batch()
    with GradientMonitor(model, optimizer=opt, every=2, detail_every=4) as mon:
        for _ in range(9):
            _train_step(model, opt, x, y, mon)
    records = {r.step: r for r in mon.records}
    assert sorted(records) == [0, 2, 4, 6, 8]
    for step, record in records.items():
        detailed = step % 4 == 0
        assert record.layers["head"].grad_norm is not None
        assert (record.layers["head"].weight_norm is not None) is detailed
        assert (record.layers["head"].update_ratio is not None) is detailed
        assert bool(record.activations) is detailed
    with pytest.raises(ConfigError, match="detail_every"):
        GradientMonitor(model, detail_every=0)


@pytest.mark.parametrize("every", [1, 3])
def test_by_default_one_recorded_step_in_ten_is_detailed(every):
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=3,width=8")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _batch()
    with GradientMonitor(model, optimizer=opt, every=every) as mon:
        for _ in range(21 * every):
            _train_step(model, opt, x, y, mon)
    detailed = [r.step for r in mon.records if r.layers["head"].weight_norm is not None]
    assert len(mon.records) == 21
    assert detailed == [0, 10 * every, 20 * every]


def test_post_clip_norms_are_read_at_the_optimizer_step_when_after_clip_is_not_called():
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=4,width=16")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer=opt) as mon:
        F.cross_entropy(model(_batch()[0]), _batch()[1]).backward()
        mon.step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)  # e.g. a framework clips on its own
        opt.step()
        record = mon.records[-1]
    assert record.global_grad_norm_post_clip == pytest.approx(0.01, rel=1e-4)
    assert record.global_grad_norm > 0.01


def test_finite_but_huge_outputs_are_not_called_nonfinite():
    # fp16 sums of a conv output overflow long before any element does; exploding float32
    # activations (weights of 5, depth 60) overflow a float32 sum while every value is finite
    torch.manual_seed(0)
    model = gradhealth.create_model("resnet20")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    with GradientMonitor(model, detail_every=1) as mon:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss=loss)
        assert mon.records[-1].first_nonfinite is None

    # each layer multiplies by 5 (16 inputs of weight 5/16): the last of 54 outputs 5^54 = 5.6e37
    # per element, finite, while the float32 sum of its 64 elements is past 3.4e38
    deep = nn.Sequential(*[m for _ in range(54) for m in (nn.Linear(16, 16), nn.ReLU())])
    with torch.no_grad():
        for p in deep.parameters():
            p.fill_(5.0 / 16 if p.dim() > 1 else 0.0)
    with GradientMonitor(deep, detail_every=1) as mon:
        out = deep(torch.ones(4, 16))
        assert torch.isfinite(out).all() and out.float().sum().isinf()
        mon.step()
        record = mon.records[-1]
    assert record.first_nonfinite is None
    assert not any(a.nonfinite for a in record.activations.values())


def test_forwards_without_a_step_stop_adding_statistics_after_a_bound():
    from gradhealth.monitor.hooks import MAX_FORWARDS_PER_STEP

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    x = torch.randn(4, 2)
    with GradientMonitor(model, detail_every=1) as mon:
        with pytest.warns(RuntimeWarning, match="without a step"):
            for _ in range(MAX_FORWARDS_PER_STEP + 50):
                model(x)
        # one call of each module per forward, kept for the first MAX_FORWARDS_PER_STEP only
        assert len(mon._hooks.tally.calls) == 2 * MAX_FORWARDS_PER_STEP
        model(x).sum().backward()
        mon.step()
        record = mon.records[-1]
        assert record.activations["1"].mean is not None
        assert len(mon._hooks.tally.calls) == 0
        model(x).sum().backward()  # the next step measures again
        mon.step()
        assert mon.records[-1].activations["1"].mean is not None


def test_post_clip_norms_reuse_the_gradient_norms_only_while_nothing_touched_the_gradients(monkeypatch):
    from gradhealth.monitor.measure import LayerMeasures

    remeasured = []
    real = LayerMeasures.post_clip_norms
    monkeypatch.setattr(LayerMeasures, "post_clip_norms", lambda self: remeasured.append(1) or real(self))
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=4,width=16")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    with GradientMonitor(model, optimizer=opt, detail_every=1) as mon:
        # untouched: the post-clip norms are the gradient norms, read without a second pass
        _train_step(model, opt, x, y, mon)
        untouched = mon.records[-1]
        assert remeasured == []
        # scaled in place (clip_grad_norm_'s mul_): measured again
        F.cross_entropy(model(x), y).backward()
        mon.step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        opt.step()
        opt.zero_grad()
        clipped = mon.records[-1]
        assert remeasured == [1]
        # a replaced .grad (same values, a new tensor) is measured again too
        F.cross_entropy(model(x), y).backward()
        mon.step()
        model.head.weight.grad = model.head.weight.grad * 0.5
        expected_head = own_grad_norm(model.head)
        opt.step()
        opt.zero_grad()
        replaced = mon.records[-1]
        assert remeasured == [1, 1]
    for stats in untouched.layers.values():
        assert stats.grad_norm_post_clip == stats.grad_norm
    assert clipped.global_grad_norm_post_clip == pytest.approx(0.01, rel=1e-4)
    assert replaced.layers["head"].grad_norm_post_clip == pytest.approx(expected_head, rel=1e-6)
    assert replaced.layers["head"].grad_norm_post_clip < replaced.layers["head"].grad_norm


def test_forward_tally_keeps_each_rule_apart_and_names_the_bad_calls(tally_path):
    # ReLU calls (counted from their units' counts, reduced once per step) mixed with sigmoid,
    # leaky ReLU and weight layers, whose extremes (where taken) and counts are kept per call:
    # every call's numbers must land on that call
    from gradhealth.layers.activations import ACTIVATIONS
    from gradhealth.monitor.forward_tally import ForwardTally, summarize_calls

    g = torch.Generator().manual_seed(0)
    relu_a = torch.relu(torch.randn(8, 5, generator=g))
    relu_a[:, 1] = 0.0  # a dead unit
    relu_bad = torch.relu(torch.randn(8, 5, generator=g))
    relu_bad[3, 2] = float("inf")
    relu_nan = torch.relu(torch.randn(8, 3, 4, generator=g))  # conv layout: units in dim 1
    relu_nan[0, 1, 2] = float("nan")
    sig = torch.sigmoid(torch.randn(8, 5, generator=g) * 8)
    leaky_in = torch.randn(8, 5, generator=g)
    leaky_in[:, 4] = -1.0
    leaky = F.leaky_relu(leaky_in, 0.01)
    layer_bad = torch.randn(8, 5, generator=g)
    layer_bad[0, 0] = -float("inf")
    tally = ForwardTally()
    tally.add_layer("fc1", torch.randn(8, 5, generator=g), features_last=True)
    tally.add_activation("relu_a", ACTIVATIONS["relu"], nn.ReLU(), None, relu_a)
    tally.add_activation("sig", ACTIVATIONS["sigmoid"], nn.Sigmoid(), None, sig)
    tally.add_layer("fc2", layer_bad, features_last=True)
    tally.add_activation("relu_bad", ACTIVATIONS["relu"], nn.ReLU(), None, relu_bad)
    tally.add_activation("leaky", ACTIVATIONS["leaky_relu"], nn.LeakyReLU(0.01), leaky_in, leaky)
    tally.add_layer("conv", torch.randn(8, 3, 4, generator=g), features_last=False)
    tally.add_activation("relu_nan", ACTIVATIONS["relu"], nn.ReLU(), None, relu_nan)
    # after a NaN step every weight is NaN: a unit whose maximum is NaN is not "dead"
    relu_all_nan = torch.full((8, 5), float("nan"))
    tally.add_layer("fc3", relu_all_nan, features_last=True)
    tally.add_activation("relu_all_nan", ACTIVATIONS["relu"], nn.ReLU(), None, relu_all_nan)
    pieces = {k: v.tolist() for k, v in tally.pieces(torch.device("cpu"), torch.float64).items()}
    stats, bad = summarize_calls(tally.calls, pieces.get("fwd_extremes", []), pieces["act_moments"],
                                 pieces.get("act_counts", []))
    assert bad == ["fc2", "relu_bad", "relu_nan", "fc3", "relu_all_nan"]
    assert stats["relu_all_nan"]["nonfinite"] == 1 and stats["relu_all_nan"]["dead_fraction"] == 0.0
    assert stats["relu_a"]["dead_fraction"] == pytest.approx(float((relu_a <= 0).all(0).float().mean()))
    assert stats["relu_a"]["dead_fraction"] >= 1 / 5
    assert stats["relu_a"]["saturation"] == pytest.approx(float((relu_a == 0).float().mean()))
    assert stats["relu_a"]["mean"] == pytest.approx(float(relu_a.mean()), rel=1e-6)
    assert stats["relu_a"]["std"] == pytest.approx(float(relu_a.std(unbiased=False)), rel=1e-5)
    assert stats["relu_bad"]["nonfinite"] == 1 and stats["relu_nan"]["nonfinite"] == 1
    assert stats["relu_a"]["nonfinite"] == 0 and stats["sig"]["nonfinite"] == 0
    assert stats["relu_bad"]["dead_fraction"] == pytest.approx(float((relu_bad <= 0).all(0).float().mean()))
    assert stats["sig"]["saturation"] == pytest.approx(float((sig * (1 - sig) < 0.0025).float().mean()))
    assert stats["sig"]["dead_fraction"] is None
    assert stats["sig"]["mean"] == pytest.approx(float(sig.mean()), rel=1e-6)
    assert stats["leaky"]["dead_fraction"] == pytest.approx(1 / 5)


def _param_sized_allocations(run, min_bytes: int) -> list[str]:
    """The ops inside ``run()`` that made a new tensor of at least ``min_bytes`` (views excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    made: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = [a for a in args if isinstance(a, torch.Tensor)]
            inputs += [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
            known = {t.untyped_storage().data_ptr() for t in inputs}
            for o in out if isinstance(out, (list, tuple)) else [out]:
                if isinstance(o, torch.Tensor) and o.untyped_storage().nbytes() >= min_bytes \
                        and o.untyped_storage().data_ptr() not in known:
                    made.append(str(func))
            return out

    with Watch():
        run()
    return made


@pytest.mark.parametrize("update_ratio", [True, False])
def test_update_ratio_off_allocates_no_copy_of_the_parameters(update_ratio):
    # one large weight (256 KiB) beside small activations: a copy of it is the only tensor that big
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 256), torch.randint(0, 10, (4,))
    weight_bytes = model[0].weight.numel() * 4
    with GradientMonitor(model, optimizer=opt, detail_every=1, update_ratio=update_ratio) as mon:
        made = []
        for _ in range(3):
            # the forward and backward passes make tensors that big of their own (the weight's
            # gradient): watched are the monitor's step and the optimizer's, with its hooks
            loss = F.cross_entropy(model(x), y)
            loss.backward()

            def step():
                mon.step(loss=loss)
                opt.step()
            made.append(_param_sized_allocations(step, weight_bytes))
            opt.zero_grad()
        record = mon.records[-1]
    if update_ratio:
        # the weights' copy, made once and kept (CPU): one big tensor on the first step only
        assert [len(m) for m in made] == [1, 0, 0], made
        assert record.layers["0"].update_ratio > 0
    else:
        assert made == [[], [], []]
        assert record.layers["0"].update_ratio is None


@pytest.mark.parametrize("elements", [4096, 1 << 18])
def test_a_tight_spread_about_a_large_mean_keeps_its_digits(elements):
    # a saturated sigmoid: outputs near 1 with a spread of 1e-4, where sum(x^2)/n - mean^2 in
    # float32 would cancel every digit; the deviations about a centre near the mean keep them
    from gradhealth.layers.activations import ACTIVATIONS
    from gradhealth.monitor.forward_tally import ForwardTally, summarize_calls

    g = torch.Generator().manual_seed(0)
    x = (1 - 1e-3 + 1e-4 * torch.randn(elements // 64, 64, generator=g)).float()
    tally = ForwardTally()
    tally.add_activation("sig", ACTIVATIONS["sigmoid"], nn.Sigmoid(), None, x)
    pieces = {k: v.tolist() for k, v in tally.pieces(torch.device("cpu"), torch.float64).items()}
    stats, _ = summarize_calls(tally.calls, pieces.get("fwd_extremes", []), pieces["act_moments"],
                                 pieces.get("act_counts", []))
    oracle = x.double()
    assert pieces["act_moments"][2] != 0.0  # measured about a centre, not about zero
    assert stats["sig"]["mean"] == pytest.approx(float(oracle.mean()), rel=1e-7)
    assert stats["sig"]["std"] == pytest.approx(float(oracle.std(unbiased=False)), rel=1e-4)


@pytest.mark.parametrize("shift", [0.0, 2.0])
def test_relu_moments_taken_about_zero_on_the_cpu_are_within_the_stated_bound(shift):
    # a ReLU output's own sum and L2 norm (no centre, no deviations) where the spread is not
    # dwarfed by the mean: the std to 1e-4 of the float64 oracle on 2^21 elements
    from gradhealth.layers.activations import ACTIVATIONS
    from gradhealth.monitor.forward_tally import ForwardTally, summarize_calls

    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(128, 16, 32, 32, generator=g) + shift)
    tally = ForwardTally()
    tally.add_activation("relu", ACTIVATIONS["relu"], nn.ReLU(), None, x)
    pieces = {k: v.tolist() for k, v in tally.pieces(torch.device("cpu"), torch.float64).items()}
    stats, _ = summarize_calls(tally.calls, pieces.get("fwd_extremes", []), pieces["act_moments"],
                                 pieces.get("act_counts", []))
    oracle = x.double()
    assert pieces["act_moments"][2] == 0.0  # about zero
    assert stats["relu"]["mean"] == pytest.approx(float(oracle.mean()), rel=1e-6)
    assert stats["relu"]["std"] == pytest.approx(float(oracle.std(unbiased=False)), rel=1e-4)
    assert stats["relu"]["saturation"] == pytest.approx(float((x == 0).double().mean()), abs=1e-7)


def _tally_stats(calls):
    """Run (name, rule, module, output, features_last) calls through one ForwardTally; its stats and bad calls."""
    from gradhealth.monitor.forward_tally import ForwardTally, summarize_calls

    tally = ForwardTally()
    for name, rule, module, out, features_last in calls:
        if rule is None:
            tally.add_layer(name, out, features_last=features_last)
        else:
            tally.add_activation(name, rule, module, None, out)
    pieces = {k: v.tolist() for k, v in tally.pieces(torch.device("cpu"), torch.float64).items()}
    return summarize_calls(tally.calls, pieces.get("fwd_extremes", []), pieces.get("act_moments", []),
                           pieces.get("act_counts", []))


@pytest.fixture(params=["cpu path", "device path"])
def tally_path(request, monkeypatch):
    """Runs a test on the CPU's way (sums read on the host) and on a device's (no host reads:
    extremes for every call, moments about a centre), both on CPU tensors."""
    if request.param == "device path":
        from gradhealth.monitor import forward_tally
        monkeypatch.setattr(forward_tally, "_reads_cost_no_wait", lambda x: False)
    return request.param


@pytest.mark.parametrize("shape", [(8, 5), (6, 3, 4, 4), (7,)])
def test_relu_counts_follow_the_relu_rule_on_any_output(shape, tally_path):
    # saturated is out <= 0 and dead is a unit whose largest output is <= 0, read from one mask
    # summed per unit: -0.0 is off, a NaN neither off nor dead, and a ReLU-named module whose
    # outputs go negative is counted by the same two rules
    from gradhealth.layers.activations import ACTIVATIONS

    relu = ACTIVATIONS["relu"]
    g = torch.Generator().manual_seed(0)
    cases = {}
    cases["plain"] = torch.relu(torch.randn(*shape, generator=g))
    signed_zero = torch.relu(torch.randn(*shape, generator=g))
    signed_zero[signed_zero == 0] = -0.0
    cases["negative zero"] = signed_zero
    with_nan = torch.relu(torch.randn(*shape, generator=g))
    with_nan.view(-1)[[0, 3]] = float("nan")
    cases["nan"] = with_nan
    cases["negative outputs"] = torch.randn(*shape, generator=g) - 0.5
    if len(shape) > 1:
        dead_unit = torch.relu(torch.randn(*shape, generator=g))
        dead_unit[:, 1] = 0.0
        cases["dead unit"] = dead_unit
    for name, out in cases.items():
        stats, bad = _tally_stats([(name, relu, nn.ReLU(), out, False)])
        assert stats[name]["saturation"] == pytest.approx(float(relu.saturated(None, None, out).double().mean()))
        if len(shape) > 1:
            unit_max = out.amax(dim=[d for d in range(out.dim()) if d != 1])
            assert stats[name]["dead_fraction"] == pytest.approx(float(relu.dead(unit_max).double().mean()))
        else:
            assert stats[name]["dead_fraction"] is None
        assert stats[name]["nonfinite"] == int(name == "nan")
        assert bad == ([name] if name == "nan" else [])


def test_relu_counts_stay_exact_past_float32_integers(monkeypatch, tally_path):
    # a unit with more outputs than float32 counts exactly is counted in float64 (the bound is
    # lowered here so a small output takes that path)
    from gradhealth.layers.activations import ACTIVATIONS
    from gradhealth.monitor import forward_tally

    monkeypatch.setattr(forward_tally, "_FLOAT32_EXACT", 4)
    g = torch.Generator().manual_seed(0)
    out = torch.relu(torch.randn(64, 3, generator=g))
    out[:, 2] = 0.0
    stats, _ = _tally_stats([("act", ACTIVATIONS["relu"], nn.ReLU(), out, True)])
    assert stats["act"]["saturation"] == float((out <= 0).double().mean())
    assert stats["act"]["dead_fraction"] == pytest.approx(1 / 3)


def test_on_the_cpu_a_finite_sum_stands_for_the_extremes(tally_path):
    # a finite sum says every element is finite, so nothing is kept; a sum that is not finite is
    # followed by the extremes, which tell an Inf from finite outputs that overflowed the sum
    from gradhealth.layers.activations import ACTIVATIONS
    from gradhealth.monitor.forward_tally import ForwardTally

    g = torch.Generator().manual_seed(0)
    tanh = ACTIVATIONS["tanh"]
    tally = ForwardTally()
    tally.add_layer("fc", torch.randn(8, 5, generator=g), features_last=True)
    tally.add_activation("tanh", tanh, nn.Tanh(), None, torch.tanh(torch.randn(8, 5, generator=g)))
    # on a device, where a read waits, the extremes are kept for every call
    assert ("fwd_extremes" in tally.pieces(torch.device("cpu"), torch.float64)) == (tally_path == "device path")

    huge = torch.full((8, 5), 3e37)  # finite, but its float32 sum is past 3.4e38
    infinite = torch.randn(8, 5, generator=g)
    infinite[2, 3] = -float("inf")
    nan = torch.randn(8, 5, generator=g)
    nan[0, 0] = float("nan")
    stats, bad = _tally_stats([("huge", None, None, huge, True), ("inf", None, None, infinite, True),
                               ("act_huge", tanh, nn.Tanh(), huge, True), ("act_nan", tanh, nn.Tanh(), nan, True),
                               ("fine", None, None, torch.randn(8, 5, generator=g), True)])
    assert bad == ["inf", "act_nan"]
    assert stats["act_huge"]["nonfinite"] == 0 and stats["act_nan"]["nonfinite"] == 1


def test_kept_scratch_views_give_the_same_counts_across_shapes():
    # the scratch keeps one view per output shape and grows to the largest output: a small, a
    # larger, then the small shape again are each counted as a fresh tally counts them
    from gradhealth.layers.activations import ACTIVATIONS
    from gradhealth.monitor.forward_tally import ForwardTally, Scratch, summarize_calls

    relu = ACTIVATIONS["relu"]
    g = torch.Generator().manual_seed(0)
    outputs = [torch.relu(torch.randn(*s, generator=g)) for s in [(4, 6), (16, 8, 3), (4, 6), (2, 6)]]
    scratch = Scratch()
    for out in outputs:
        tally = ForwardTally(scratch)
        tally.add_activation("act", relu, nn.ReLU(), None, out)
        pieces = {k: v.tolist() for k, v in tally.pieces(torch.device("cpu"), torch.float64).items()}
        stats, _ = summarize_calls(tally.calls, [], pieces["act_moments"], pieces["act_counts"])
        assert stats["act"]["saturation"] == pytest.approx(float((out <= 0).double().mean()))
        assert stats["act"]["dead_fraction"] == pytest.approx(float((out.amax(0) <= 0).double().mean()))
        assert stats["act"]["std"] == pytest.approx(float(out.double().std(unbiased=False)), rel=1e-5)
    assert scratch._flat[torch.float32].numel() == 16 * 8 * 3
    scratch.release()
    assert not scratch._flat and not scratch._views


@pytest.mark.parametrize("kind", ["sigmoid", "saturated sigmoid", "tanh", "saturated tanh", "relu", "gelu",
                                  "relu float16"])
def test_activation_moments_are_within_the_stated_bound_of_float64(kind, tally_path):
    # mean and std of 2^19 outputs against float64, whichever way the tally takes them (about
    # zero or about a centre): the std to 1e-4 (the module's bound), the mean to 1e-6 of the std
    from gradhealth.layers.activations import ACTIVATIONS

    g = torch.Generator().manual_seed(0)
    z = torch.randn(128, 64, 8, 8, generator=g)
    out, module = {
        "sigmoid": (torch.sigmoid(z), nn.Sigmoid()),
        "saturated sigmoid": (torch.sigmoid(z * 1e-3 + 9.0), nn.Sigmoid()),
        "tanh": (torch.tanh(z), nn.Tanh()),
        "saturated tanh": (torch.tanh(z * 1e-2 - 4.0), nn.Tanh()),
        "relu": (torch.relu(z + 1.0), nn.ReLU()),
        "gelu": (F.gelu(z), nn.GELU()),
        "relu float16": (torch.relu(z).half(), nn.ReLU()),
    }[kind]
    rule = ACTIVATIONS[kind.split()[-1] if kind != "relu float16" else "relu"]
    stats, bad = _tally_stats([("act", rule, module, out, False)])
    oracle = out.double()
    std = float(oracle.std(unbiased=False))
    assert bad == []
    assert stats["act"]["std"] == pytest.approx(std, rel=1e-4)
    assert stats["act"]["mean"] == pytest.approx(float(oracle.mean()), abs=1e-6 * std)


def test_a_module_measured_about_a_centre_starts_there_next_time():
    # on the CPU a saturated layer's next output skips the raw sums, gives the same numbers, and
    # its deviations still say whether it is finite; a layer that spreads out goes back to them
    from gradhealth.layers.activations import ACTIVATIONS
    from gradhealth.monitor.forward_tally import ForwardTally, Scratch, summarize_calls

    sigmoid = ACTIVATIONS["sigmoid"]
    g = torch.Generator().manual_seed(0)
    saturated = torch.sigmoid(torch.randn(64, 32, generator=g) * 1e-2 + 6.0)
    spread = torch.sigmoid(torch.randn(64, 32, generator=g))
    with_nan = saturated.clone()
    with_nan[5, 7] = float("nan")
    scratch = Scratch()

    def measure(out):
        tally = ForwardTally(scratch)
        tally.add_activation("sig", sigmoid, nn.Sigmoid(), None, out)
        pieces = {k: v.tolist() for k, v in tally.pieces(torch.device("cpu"), torch.float64).items()}
        stats, bad = summarize_calls(tally.calls, pieces.get("fwd_extremes", []), pieces["act_moments"],
                                     pieces["act_counts"])
        return stats["sig"], bad, pieces["act_moments"][2], "sig" in scratch.centred

    first, _, first_centre, kept = measure(saturated)
    assert first_centre != 0.0 and kept
    again, bad, centre, kept = measure(saturated)
    assert again == first and bad == [] and centre == first_centre and kept
    _, bad, _, kept = measure(with_nan)
    assert bad == ["sig"] and kept
    huge = torch.full((64, 32), -3e37)
    huge[0] = 3e37  # the centre: every other deviation is -6e37, finite, and their sum is not
    stats, bad, _, kept = measure(huge)
    assert bad == [] and stats["nonfinite"] == 0 and kept
    stats, _, centre, kept = measure(spread)
    assert stats["std"] == pytest.approx(float(spread.double().std(unbiased=False)), rel=1e-5) and not kept
    _, _, centre, _ = measure(spread)
    assert centre == 0.0  # about zero again
