"""GradientMonitor on the kinds of model users bring: other dtypes, sparse and complex gradients,
parametrized layers, attention, (batch, sequence, features) activations, replaced parameters."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from gradhealth.errors import ConfigError
from gradhealth.monitor import GradientMonitor, read_jsonl


def _norm64(tensors) -> float:
    return float(torch.linalg.vector_norm(torch.cat([t.detach().reshape(-1) for t in tensors]).double()))


def test_a_float64_model_with_activations_is_measured_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    x = torch.randn(32, 8, dtype=torch.float64)
    with GradientMonitor(model, detail_every=1) as mon:
        model(x).pow(2).sum().backward()
        mon.step()
        record = mon.records[-1]
    hidden = torch.tanh(model[0](x)).detach()
    assert record.layers["0"].grad_norm == pytest.approx(_norm64([p.grad for p in model[0].parameters()]), rel=1e-12)
    assert record.activations["1"].mean == pytest.approx(float(hidden.mean()), rel=1e-12)
    assert record.activations["1"].std == pytest.approx(float(hidden.std(correction=0)), rel=1e-9)


@pytest.mark.parametrize("activation, inputs", [
    (nn.Sigmoid(), 6 + 1e-3 * torch.randn(64, 512, generator=torch.Generator().manual_seed(1))),
    (nn.Tanh(), 4 + 0.05 * torch.randn(128, 1024, generator=torch.Generator().manual_seed(2))),
    (nn.ReLU(), torch.randn(256, 2048, generator=torch.Generator().manual_seed(3))),
])
def test_activation_std_keeps_its_digits_when_the_units_saturate(activation, inputs):
    # saturated outputs sit near one value with a tiny spread: sum(x^2)/n - mean^2 in float32
    # would lose all of it (a sigmoid at 6 +- 1e-3 has a std of 2.5e-6 beside a mean of 0.9975)
    model = nn.Sequential(nn.Identity(), activation, nn.Linear(inputs.shape[1], 1))
    with GradientMonitor(model, detail_every=1) as mon:
        model(inputs).sum().backward()
        mon.step()
        stats = mon.records[-1].activations["1"]
    out = activation(inputs).double()
    assert stats.mean == pytest.approx(float(out.mean()), rel=1e-6)
    assert stats.std == pytest.approx(float(out.std(correction=0)), rel=1e-4)


def test_activation_std_pools_calls_of_different_centres():
    act = nn.Sigmoid()
    model = nn.Sequential(act)
    a = 3 + 0.01 * torch.randn(64, 64, generator=torch.Generator().manual_seed(4))
    b = -2 + 0.5 * torch.randn(32, 64, generator=torch.Generator().manual_seed(5))
    with GradientMonitor(model, detail_every=1) as mon:
        model(a)
        model(b)
        mon.step()
        stats = mon.records[-1].activations["0"]
    both = torch.cat([act(a), act(b)]).double()
    assert stats.mean == pytest.approx(float(both.mean()), rel=1e-6)
    assert stats.std == pytest.approx(float(both.std(correction=0)), rel=1e-5)


def test_sparse_embedding_gradients_are_measured_by_their_values():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(12, 1))
    tokens = torch.tensor([[1, 1, 2], [3, 1, 9]])  # index 1 repeats: its rows add up
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer=opt, detail_every=1) as mon:
        model(tokens).sum().backward()
        dense = model[0].weight.grad.to_dense()
        mon.step()
        opt.step()
        record = mon.records[-1]
    assert record.layers["0"].grad_norm == pytest.approx(_norm64([dense]), rel=1e-6)
    assert record.layers["0"].grad_max == pytest.approx(float(dense.abs().max()), rel=1e-6)
    assert record.global_grad_norm == pytest.approx(_norm64([dense, *[p.grad for p in model[2].parameters()]]), rel=1e-6)
    assert record.layers["0"].update_ratio > 0


def test_complex_parameters_are_measured_by_their_moduli():
    torch.manual_seed(0)
    model = nn.Linear(4, 4, dtype=torch.cfloat)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer=opt, detail_every=1, activations=False) as mon:
        model(torch.randn(2, 4, dtype=torch.cfloat)).abs().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        before = [p.detach().clone() for p in model.parameters()]
        mon.step()
        opt.step()
        record = mon.records[-1].layers["(root)"]
    assert record.grad_norm == pytest.approx(_norm64([torch.view_as_real(g) for g in grads]), rel=1e-6)
    assert record.grad_max == pytest.approx(max(float(g.abs().max()) for g in grads), rel=1e-6)
    update = _norm64([torch.view_as_real(b - p.detach()) for b, p in zip(before, model.parameters())])
    assert record.update_ratio == pytest.approx(update / _norm64([torch.view_as_real(b) for b in before]), rel=1e-5)


def test_a_parametrized_layer_is_one_layer_with_all_its_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(6, 5)), nn.Tanh(), nn.Linear(5, 2))
    with GradientMonitor(model, detail_every=1) as mon:
        model(torch.randn(8, 6)).sum().backward()
        mon.step()
        record = mon.records[-1]
        layers = [layer.name for layer in mon.meta.layers]
    assert layers == ["0", "1", "2"]
    assert record.layers["0"].grad_norm == pytest.approx(_norm64([p.grad for p in model[0].parameters()]), rel=1e-6)
    assert record.layers["0"].weight_norm == pytest.approx(_norm64(list(model[0].parameters())), rel=1e-6)


def _nan_gradient_at_output(model, x):
    out = model(x)
    out.register_hook(lambda g: torch.full_like(g, float("nan")))
    out.sum().backward()


def test_the_first_bad_gradient_is_the_layer_nearest_the_output_of_a_transformer_layer():
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
    with GradientMonitor(model, detail_every=1) as mon:
        _nan_gradient_at_output(model, torch.randn(2, 3, 8))
        mon.step()
        event = mon.first_nonfinite
        order = [layer.name for layer in mon.meta.layers if layer.role != "activation"]
    # out_proj's weight is used by its parent, never called as a module: it stays beside it
    assert order.index("self_attn.out_proj") == order.index("self_attn") + 1
    assert order[-1] == "norm2"
    assert (event.kind, event.layer) == ("gradient", "norm2")


def test_parameters_of_the_model_itself_take_the_place_where_its_forward_starts():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 1)

        def forward(self, x):
            return self.b(self.a(x * self.scale))

    model = Scaled()
    with GradientMonitor(model, detail_every=1) as mon:
        _nan_gradient_at_output(model, torch.randn(3, 4))
        mon.step()
        assert list(mon.records[-1].layers) == ["(root)", "a", "b"]
        assert mon.first_nonfinite.layer == "b"


def test_dead_units_of_sequence_activations_are_features_not_positions():
    # (batch, sequence, features) after a Linear: a unit is a feature, whatever the position
    lin = nn.Linear(8, 8)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([-1.0] * 4 + [1.0] * 4))  # features 0-3 always off
    model = nn.Sequential(lin, nn.ReLU())
    with GradientMonitor(model, detail_every=1) as mon:
        model(torch.randn(4, 5, 8)).sum().backward()
        mon.step()
        assert mon.records[-1].activations["1"].dead_fraction == 0.5
    # (batch, channels, length) after a convolution: a unit is a channel
    conv = nn.Conv1d(2, 4, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    model = nn.Sequential(conv, nn.ReLU())
    with GradientMonitor(model, detail_every=1) as mon:
        model(torch.randn(3, 2, 7)).sum().backward()
        mon.step()
        assert mon.records[-1].activations["1"].dead_fraction == 0.25


def test_relu6_and_hardtanh_saturate_at_both_bounds():
    x = torch.tensor([[-1.0, 0.5, 3.0, 7.0, 8.0, 2.0, -3.0, 6.5]])
    for act, expected in ((nn.ReLU6(), 5 / 8), (nn.Hardtanh(), 7 / 8)):
        model = nn.Sequential(nn.Identity(), act)
        with GradientMonitor(model, detail_every=1) as mon:
            model(x)
            mon.step()
            assert mon.records[-1].activations["1"].saturation == expected


def test_attached_again_the_monitor_appends_to_its_log(tmp_path):
    model = nn.Linear(3, 1)
    path = tmp_path / "run.jsonl"
    mon = GradientMonitor(model, jsonl=path)
    for _ in range(2):
        with mon:
            for _ in range(2):
                model(torch.randn(2, 3)).sum().backward()
                mon.step()
    assert [r.step for r in read_jsonl(path).records] == [0, 1, 2, 3]


def test_parameters_assigned_after_attach_are_the_ones_measured():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with GradientMonitor(model, every=1, detail_every=4) as mon:
        # a plain step, then new parameter objects: the next recorded step must follow them
        model(torch.randn(5, 4)).sum().backward()
        mon.step()
        model.zero_grad()
        model.load_state_dict({k: v * 2 for k, v in model.state_dict().items()}, assign=True)
        model(torch.randn(5, 4)).sum().backward()
        mon.step()
        record = mon.records[-1]
    assert record.layers["0"].grad_norm == pytest.approx(_norm64([p.grad for p in model[0].parameters()]), rel=1e-6)


def test_the_parameter_walk_finds_what_parameters_finds():
    from gradhealth.monitor.measure import parameter_ids

    torch.manual_seed(0)
    shared = nn.Linear(4, 4, bias=False)  # no bias: a None entry among the parameters
    model = nn.Sequential(shared, nn.ReLU(), shared, parametrizations.weight_norm(nn.Linear(4, 2)))
    model.add_module("alias", model[3])  # one module under two names
    assert parameter_ids(model) == {id(p) for p in model.parameters()}
    before = parameter_ids(model)
    model[3] = nn.Linear(4, 2)  # a replaced layer brings new parameters, and drops its old ones
    assert parameter_ids(model) == {id(p) for p in model.parameters()} != before


def test_attaching_to_a_model_still_on_the_meta_device_says_so():
    with torch.device("meta"):
        model = nn.Linear(3, 1)
    with pytest.raises(ConfigError, match="meta device"):
        GradientMonitor(model).attach()

