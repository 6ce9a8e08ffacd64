"""Mean-field theory against scipy.quad oracles, exact cases, published values and wide real nets."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss
from scipy import integrate, optimize, special

from gradhealth.cli import main
from gradhealth.diagnose import theory as T
from gradhealth.errors import ConfigError
from gradhealth.vocabulary import INIT_ALIASES, INIT_SCHEMES

# independent reference activations (phi, phi') for the quadrature oracle
REFERENCE = {
    "sigmoid": (special.expit, lambda x: special.expit(x) * (1 - special.expit(x))),
    "tanh": (math.tanh, lambda x: 1 - math.tanh(x) ** 2),
    "relu": (lambda x: max(x, 0.0), lambda x: 1.0 if x > 0 else 0.0),
    "leaky_relu": (lambda x: x if x > 0 else 0.2 * x, lambda x: 1.0 if x > 0 else 0.2),
    "elu": (lambda x: x if x > 0 else math.expm1(x), lambda x: 1.0 if x > 0 else math.exp(x)),
    "gelu": (lambda x: x * special.ndtr(x),
             lambda x: special.ndtr(x) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "silu": (lambda x: x * special.expit(x),
             lambda x: special.expit(x) * (1 + x * (1 - special.expit(x)))),
    "identity": (lambda x: x, lambda x: 1.0),
}


def quad_expectation(f, q: float) -> float:
    """E[f(x)], x ~ N(0, q), by adaptive quadrature over x with breaks at the scales of f and of N."""
    s = math.sqrt(q)
    ends = {b for b in (s / 10, s, 4 * s, 0.5, 2.0, 8.0) if b < 14 * s} | {14 * s}
    breaks = sorted({0.0} | ends | {-b for b in ends})
    density = lambda x: f(x) * math.exp(-x * x / (2 * q)) / math.sqrt(2 * math.pi * q)  # noqa: E731
    return sum(integrate.quad(density, a, b, epsabs=1e-15, epsrel=1e-12, limit=200)[0]
               for a, b in zip(breaks[:-1], breaks[1:]))


@pytest.mark.parametrize("name", T.ACTIVATIONS)
def test_gaussian_expectations_match_quad(name):
    phi, dphi = REFERENCE[name]
    _, ours_phi, ours_dphi = T._activation(name, 0.2)
    for q in (1e-4, 0.3, 1.0, 4.0, 30.0, 1e3, 1e6):
        for ref, ours in ((lambda x: phi(x) ** 2, lambda x: ours_phi(x) ** 2),
                          (lambda x: dphi(x) ** 2, lambda x: ours_dphi(x) ** 2)):
            expected = quad_expectation(ref, q)
            assert T.gaussian_expectation(ours, q) == pytest.approx(expected, rel=1e-6, abs=1e-12), (name, q)


def test_length_map_closed_forms():
    # E[z^2] = 1 and E[relu(z)^2] = 1/2
    assert T.length_map(2.5, "identity", 0.7, 0.3) == pytest.approx(0.49 * 2.5 + 0.09, rel=1e-12)
    assert T.length_map(2.5, "relu", 1.2, 0.3) == pytest.approx(1.44 * 2.5 / 2 + 0.09, rel=1e-12)
    # below the divergence line q* = sigma_b^2 / (1 - sigma_w^2 E[phi^2]/q)
    assert T.fixed_point("identity", 0.5, 0.1) == pytest.approx(0.01 / 0.75, rel=1e-10)
    assert T.fixed_point("relu", 1.2, 0.3) == pytest.approx(0.09 / (1 - 0.72), rel=1e-10)


def test_relu_he_init_is_exactly_critical():
    sigma_w = T.sigma_w_of_init("he", "relu").sigma_w
    assert sigma_w == pytest.approx(math.sqrt(2), rel=1e-15)
    pred = T.predict("relu", sigma_w, 0.0, 40, q0=3.0)
    assert pred.chi_1 == pytest.approx(1.0, abs=1e-12)
    assert pred.q_star == pytest.approx(3.0, rel=1e-12)  # every q is a fixed point: q stays at q0
    assert pred.regime == "critical" and math.isinf(pred.depth_scale)
    assert pred.profile == pytest.approx([1.0] * 40, abs=1e-10)
    # leaky ReLU: chi_1 = sigma_w^2 (1 + a^2) / 2, critical at He's leaky gain
    leaky = T.predict("leaky_relu", T.sigma_w_of_init("he", "leaky_relu", negative_slope=0.2).sigma_w, 0.0, 10,
                      negative_slope=0.2)
    assert leaky.chi_1 == pytest.approx(1.0, abs=1e-12)


def test_relu_above_he_grows_without_bound():
    pred = T.predict("relu", math.sqrt(3), 0.1, 10)
    assert math.isinf(pred.q_star) and "without bound" in pred.explanation
    assert pred.chi_1 == pytest.approx(1.5, rel=1e-10)
    assert pred.regime == "exploding"
    assert math.isinf(T.fixed_point("relu", math.sqrt(2), 0.1))  # critical with a bias: q grows linearly


@pytest.mark.parametrize("sigma_w", [0.5, 1.0, 1.7])
def test_linear_net_chi_is_sigma_w_squared(sigma_w):
    pred = T.predict("identity", sigma_w, 0.0, 11)
    assert pred.chi_1 == pytest.approx(sigma_w**2, rel=1e-12)
    assert pred.per_layer_factor == pytest.approx(sigma_w, rel=1e-12)
    assert pred.first_last_ratio == pytest.approx(sigma_w**10, rel=1e-10)


def test_tanh_at_the_origin_is_critical():
    pred = T.predict("tanh", 1.0, 0.0, 10)
    assert pred.q_star == 0.0
    assert pred.chi_1 == pytest.approx(1.0, abs=1e-9)
    assert pred.regime == "critical"


def test_profile_is_chi_power():
    pred = T.predict("tanh", 0.9, 0.1, 25)
    chi = pred.chi_1
    assert pred.profile == pytest.approx([chi ** ((25 - l) / 2) for l in range(1, 26)], rel=1e-12)
    assert pred.first_last_ratio == pytest.approx(chi**12, rel=1e-12)
    assert pred.regime == "vanishing" and pred.depth_scale == pytest.approx(-1 / math.log(chi))


@pytest.mark.parametrize("sigma_b", [0.0, 0.5])
def test_sigmoid_bound(sigma_b):
    # sigma'(x) <= 1/4 everywhere, so chi_1 <= sigma_w^2 / 16 at any q*
    for sigma_w in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0):
        assert T.predict("sigmoid", sigma_w, sigma_b, 5).chi_1 <= sigma_w**2 / 16 + 1e-12
    xavier = T.predict("sigmoid", 1.0, sigma_b, 20)
    assert xavier.per_layer_factor <= 0.25 and xavier.regime == "vanishing"
    assert xavier.first_last_ratio <= 0.25**19
    assert "1/4" in xavier.explanation


def _tanh_q_star_oracle(sigma_w: float, sigma_b: float) -> float:
    # tanh^2 <= 1, so the fixed point lies in [sigma_b^2, sigma_w^2 + sigma_b^2]
    gap = lambda q: sigma_w**2 * quad_expectation(lambda x: math.tanh(x) ** 2, q) + sigma_b**2 - q  # noqa: E731
    return optimize.brentq(gap, sigma_b**2, sigma_w**2 + sigma_b**2, xtol=1e-12)


def test_tanh_critical_line():
    assert T.critical_sigma_w("tanh", 0.0) == pytest.approx(1.0, abs=1e-6)
    grid = [T.critical_sigma_w("tanh", b) for b in (0.0, 0.05, 0.1, 0.2, 0.3)]
    assert all(a < b for a, b in zip(grid, grid[1:]))
    # Schoenholz et al. 2017 (Fig. 1, sigma_b^2 = 0.05): the transition is at sigma_w^2 ~ 1.76
    assert T.critical_sigma_w("tanh", math.sqrt(0.05)) ** 2 == pytest.approx(1.76, abs=0.01)

    def chi(sigma_w: float) -> float:
        return sigma_w**2 * quad_expectation(lambda x: (1 - math.tanh(x) ** 2) ** 2, _tanh_q_star_oracle(sigma_w, 0.3))

    # independent of the module: scipy.quad expectations, brentq for q* and for chi_1 = 1
    assert grid[-1] == pytest.approx(optimize.brentq(lambda w: chi(w) - 1, 1.0, 2.0, xtol=1e-10), abs=1e-6)


def test_relu_and_sigmoid_critical_sigma_w():
    assert T.critical_sigma_w("relu", 0.2) == pytest.approx(math.sqrt(2), rel=1e-9)
    assert T.critical_sigma_w("sigmoid", 0.0) > 4.0


def test_correlation_fixed_point():
    ordered = T.predict("tanh", 0.9, 0.1, 10)
    assert ordered.c_star == 1.0 and ordered.correlation_depth_scale == pytest.approx(ordered.depth_scale)
    odd = T.predict("tanh", 2.0, 0.0, 10)  # chaotic, odd phi, no bias: inputs decorrelate fully
    assert odd.c_star == pytest.approx(0.0, abs=1e-9)
    # chaotic with bias: c* against a product Gauss-Hermite oracle of the correlation map
    sigma_w, sigma_b = 2.5, 0.3
    pred = T.predict("tanh", sigma_w, sigma_b, 10)
    x, w = hermegauss(240)
    w = w / w.sum()
    z1, z2, ww, root_q = x[:, None], x[None, :], w[:, None] * w[None, :], math.sqrt(pred.q_star)
    gap = lambda c: (sigma_w**2 * np.sum(ww * np.tanh(root_q * z1)  # noqa: E731
                                         * np.tanh(root_q * (c * z1 + math.sqrt(1 - c * c) * z2)))
                     + sigma_b**2) / pred.q_star - c
    assert 0 < pred.c_star < 1
    assert pred.c_star == pytest.approx(optimize.brentq(gap, 0.0, 0.9, xtol=1e-12), abs=1e-6)
    assert 0 < pred.correlation_depth_scale < math.inf


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "gelu"])
def test_residual_profile_never_vanishes(activation):
    plain = T.predict(activation, 1.0, 0.0, 30)
    res = T.predict(activation, 1.0, 0.0, 30, residual=True)
    assert all(a >= b for a, b in zip(res.profile, res.profile[1:]))  # non-decreasing toward the input
    assert res.first_last_ratio >= 1 and res.regime != "vanishing"
    assert math.isinf(res.q_star)
    if plain.regime == "vanishing":
        assert res.first_last_ratio > plain.first_last_ratio


def test_residual_branch_scale():
    # relu branch: chi_branch = sigma_w^2 / 2 at any q, so each He block doubles the squared norm
    unscaled = T.predict("relu", math.sqrt(2), 0.0, 20, residual=True)
    assert unscaled.chi_1 == pytest.approx(2.0, rel=1e-12)
    assert unscaled.first_last_ratio == pytest.approx(2 ** (19 / 2), rel=1e-10)
    # alpha = 1/sqrt(L): prod (1 + 1/L) <= e, the gradient grows at most sqrt(e) at any depth
    for depth in (10, 100, 1000):
        scaled = T.predict("relu", math.sqrt(2), 0.0, depth, residual=True, branch_scale=1 / math.sqrt(depth))
        assert 1 < scaled.first_last_ratio <= math.sqrt(math.e)
    rezero = T.predict("tanh", 3.0, 0.1, 15, residual=True, branch_scale=0.0)
    assert rezero.profile == [1.0] * 15 and rezero.regime == "critical"


def test_prediction_json_round_trip():
    pred = T.predict("relu", 2.0, 0.1, 12)
    text = pred.to_json()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["q_star"] == "inf" and data["regime"] == "exploding"
    assert T.Prediction.from_json(text) == pred
    res = T.predict("tanh", 1.0, 0.0, 5, residual=True, branch_scale=0.5)
    assert T.Prediction.from_json(res.to_json()) == res


def test_predict_rejects_bad_values():
    for kwargs in ({"sigma_w": -1.0}, {"sigma_w": 0.0}, {"sigma_b": -0.1}, {"depth": 0}, {"depth": 2.5},
                   {"sigma_w": math.nan}, {"q0": 0.0}):
        args = {"activation": "tanh", "sigma_w": 1.0, "sigma_b": 0.0, "depth": 10, **kwargs}
        with pytest.raises(ConfigError):
            T.predict(**args)
    with pytest.raises(ConfigError, match="choose one of"):
        T.predict("softsign", 1.0, 0.0, 10)


def test_sigma_w_of_init_formulas():
    assert T.sigma_w_of_init("normal(0.05)", "tanh", fan_in=400).sigma_w == pytest.approx(1.0)
    assert T.sigma_w_of_init("normal", "tanh", 0.05, fan_in=400).sigma_w == pytest.approx(1.0)
    assert T.sigma_w_of_init("glorot", "tanh").sigma_w == pytest.approx(1.0)
    assert T.sigma_w_of_init("xavier_normal(2)", "tanh").sigma_w == pytest.approx(2.0)
    assert T.sigma_w_of_init("kaiming_uniform(0.5)", "relu").sigma_w == pytest.approx(math.sqrt(2) / 2)
    assert T.sigma_w_of_init("orthogonal", "tanh").sigma_w == pytest.approx(5 / 3)
    default = T.sigma_w_of_init("default", "relu", fan_in=300)
    assert default.sigma_w == pytest.approx(math.sqrt(1 / 3)) and default.sigma_b == pytest.approx(1 / 30)
    lsuv = T.sigma_w_of_init("lsuv", "tanh").sigma_w
    assert lsuv**2 * quad_expectation(lambda x: math.tanh(x) ** 2, 1.0) == pytest.approx(1.0, rel=1e-8)
    for scheme in ("constant(0.1)", "fixup"):
        scale = T.sigma_w_of_init(scheme, "relu")
        assert scale.sigma_w is None and scale.note
    with pytest.raises(ConfigError, match="fan_in"):
        T.sigma_w_of_init("normal(0.02)", "relu")
    with pytest.raises(ConfigError, match="choose one of"):
        T.sigma_w_of_init("lecun", "relu")


@pytest.mark.parametrize("name", [*INIT_SCHEMES, *INIT_ALIASES])
def test_every_init_name_has_a_sigma_w_or_says_why_not(name):
    scale = T.sigma_w_of_init(name, "relu", fan_in=64)
    assert scale == T.sigma_w_of_init(INIT_ALIASES.get(name, name), "relu", fan_in=64)
    assert (scale.sigma_w is not None and scale.sigma_w > 0) or (scale.sigma_w is None and scale.note)


def test_sigma_w_of_init_matches_torch_inits():
    torch = pytest.importorskip("torch")
    from gradhealth.layers import apply_init

    torch.manual_seed(0)
    fan_in = 256
    for act, module in (("tanh", torch.nn.Tanh()), ("relu", torch.nn.ReLU())):
        for scheme in ("normal(0.03)", "uniform(0.1)", "xavier_normal", "xavier_uniform(1.5)", "he", "he_uniform",
                       "orthogonal", "default"):
            model = torch.nn.Sequential(torch.nn.Linear(fan_in, fan_in), module)
            apply_init(model, scheme)
            layer = model[0]
            measured = float(layer.weight.detach().pow(2).mean().sqrt()) * math.sqrt(fan_in)
            scale = T.sigma_w_of_init(scheme, act, fan_in=fan_in)
            assert measured == pytest.approx(scale.sigma_w, rel=0.02), (act, scheme)
            assert float(layer.bias.detach().pow(2).mean().sqrt()) == pytest.approx(scale.sigma_b, rel=0.1, abs=1e-12)


def test_compare_with_measured():
    pred = T.predict("tanh", 0.8, 0.0, 10)
    exact = [0.8 ** (9 - l) for l in range(10)]
    result = T.compare_with_measured(pred, exact)
    assert result["measured_factor"] == pytest.approx(0.8, rel=1e-10) and result["agree"]
    assert result["measured_first_last"] == pytest.approx(0.8**9)
    growing = T.compare_with_measured(pred, [1.2 ** (9 - l) for l in range(10)])
    assert growing["measured_regime"] == "exploding" and not growing["agree"]
    for bad in ([1.0], [1.0, 0.0], [1.0, math.inf]):
        with pytest.raises(ConfigError):
            T.compare_with_measured(pred, bad)


@pytest.mark.parametrize("sigma_w", [0.8, 2.0])  # tanh, sigma_b = 0: critical at 1 (chi_1 0.64 and 1.36)
def test_prediction_matches_wide_tanh_net(sigma_w):
    torch = pytest.importorskip("torch")
    import gradhealth

    torch.manual_seed(0)
    width = 512
    # normal(std) with std = sigma_w / sqrt(fan_in); apply_init zeroes the biases, so sigma_b = 0
    model = gradhealth.create_model(f"mlp:depth=20,width={width},in_features={width},activation=tanh,norm=none",
                                    init=f"normal({sigma_w / math.sqrt(width)})")
    hidden = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][:-1]  # the head narrows to 10
    pre_activations = []

    def keep(module, inputs, output):
        output.retain_grad()
        pre_activations.append(output)

    handles = [layer.register_forward_hook(keep) for layer in hidden]
    x = torch.randn(256, width)
    out = model(x)
    (out * torch.randn_like(out)).sum().backward()
    for handle in handles:
        handle.remove()
    norms = [float(h.grad.norm()) for h in pre_activations]
    # the first pre-activations have variance sigma_w^2 * E[x^2] = sigma_w^2
    pred = T.predict("tanh", sigma_w, 0.0, len(norms), q0=sigma_w**2)
    result = T.compare_with_measured(pred, norms)
    assert result["relative_error"] < 0.10, result
    assert result["measured_regime"] == pred.regime == ("vanishing" if sigma_w < 1 else "exploding")
    assert result["agree"]


def test_cli_table_and_json(capsys):
    assert main(["theory", "--activation", "tanh", "--sigma-w", "1.5", "--sigma-b", "0.05", "--depth", "100"]) == 0
    out = capsys.readouterr().out
    assert "exploding" in out and "chi_1" in out and "first/last" in out and "chain rule" in out
    assert main(["theory", "--activation", "sigmoid", "--sigma-w", "1", "--depth", "30", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["regime"] == "vanishing" and len(data["profile"]) == 30
    assert main(["theory", "--activation", "relu", "--init", "he", "--depth", "50", "--residual",
                 "--branch-scale", "1/sqrt(L)", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["residual"] and data["branch_scale"] == pytest.approx(1 / math.sqrt(50))
    assert data["first_last_ratio"] >= 1


@pytest.mark.parametrize("argv, message", [
    (["--sigma-w", "-1"], "sigma_w"),
    (["--sigma-w", "1", "--sigma-b", "-0.1"], "sigma_b"),
    (["--sigma-w", "1", "--depth", "0"], "depth"),
    (["--sigma-w", "1", "--activation", "softsign"], "unknown activation"),
    (["--sigma-w", "1", "--residual", "--branch-scale", "big"], "branch-scale"),
    (["--activation", "relu"], "--sigma-w"),
    (["--init", "constant(1)"], "not random"),
])
def test_cli_errors(capsys, argv, message):
    assert main(["theory", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_theory_does_not_import_torch():
    code = "import gradhealth.diagnose.theory, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
