"""Mean-field signal propagation: will gradients vanish or explode with depth, before step 0?

For a wide fully-connected net h^l = W^l phi(h^{l-1}) + b^l with W_ij ~ N(0, sigma_w^2 / fan_in)
and b_i ~ N(0, sigma_b^2) (Poole et al. 2016; Schoenholz et al. 2017):

* length map   q^l = sigma_w^2 E_z[phi(sqrt(q^{l-1}) z)^2] + sigma_b^2,  z ~ N(0, 1);
  iterated from q0 it settles at a fixed point q* (or grows without bound for unbounded phi);
* chi_1 = sigma_w^2 E_z[phi'(sqrt(q*) z)^2]: backprop gives E||dL/dh^l||^2 = chi_1 E||dL/dh^{l+1}||^2,
  so over L layers the gradient norm changes by chi_1^(L/2): vanishing below 1, exploding above 1;
* depth scales xi = 1/|ln chi|: the number of layers over which a squared norm (gradient) or a
  correlation changes by a factor e (Schoenholz et al. sign it, -1/ln chi; here the regime says
  which way); infinite on the critical line chi_1 = 1.

Residual nets h^{l+1} = h^l + alpha (W phi(h^l) + b) (Yang & Schoenholz 2017) add the identity to
every block's Jacobian, so each block multiplies the squared gradient norm by 1 + alpha^2 chi_branch >= 1.

Expectations use composite Gauss-Legendre quadrature on each half-line of z, with panels refined
geometrically toward z = 0 and scaled by 1/sqrt(q). Plain Gauss-Hermite (hermite_e) with 100-300
nodes misses 1e-6 by orders of magnitude for kinked activations (ELU: 1e-3) and for wide inputs
(tanh' at q = 100: 3e-2), because its nodes are too coarse where phi bends; the panels put nodes there.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.polynomial.legendre import leggauss
from scipy import optimize, special

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.vocabulary import GAIN_NAMES, INIT_ALIASES, INIT_SCHEMES, canonical_activation, nonlinearity_gain

__all__ = [
    "ACTIVATIONS", "CRITICAL_TOLERANCE", "MEASURED_TOLERANCE", "Prediction", "InitScale",
    "gaussian_expectation", "length_map", "fixed_point", "chi_1", "critical_sigma_w",
    "predict", "sigma_w_of_init", "compare_with_measured",
]

# |chi_1 - 1| below this is "critical": over 100 layers the gradient norm then changes by less than
# e^(0.01 * 100 / 2) ~ 1.65x, inside what finite width and a training run's noise do anyway.
CRITICAL_TOLERANCE = 0.01
# A measured per-layer factor agrees with the predicted one within 15 %: at width 512 each layer's
# factor fluctuates by ~1/sqrt(width) ~ 4 %, and the first layers sit off q* while q settles.
MEASURED_TOLERANCE = 0.15
# Variances outside [Q_MIN, Q_MAX] are 0 or "grows without bound" for every purpose here.
Q_MIN, Q_MAX = 1e-12, 1e30
_TINY = 1e-300  # one-sided limits at 0 for kinked phi (relu'(0+) = 1, relu'(0-) = 0)

Fn = Callable[[np.ndarray], np.ndarray]


_sig = special.expit


def _activation(name: str, slope: float) -> tuple[str, Fn, Fn]:
    """(canonical name, phi, phi') with PyTorch's defaults: ELU alpha = 1, exact (erf) GELU."""
    key = canonical_activation(name)
    pdf = lambda x: np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    table: dict[str, tuple[Fn, Fn]] = {
        "sigmoid": (_sig, lambda x: _sig(x) * (1 - _sig(x))),
        "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
        "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0) * 1.0),
        "leaky_relu": (lambda x: np.where(x > 0, x, slope * x), lambda x: np.where(x > 0, 1.0, slope)),
        "elu": (lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
                lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))),
        "gelu": (lambda x: x * special.ndtr(x), lambda x: special.ndtr(x) + x * pdf(x)),
        "silu": (lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * (1 - _sig(x)))),
        "identity": (lambda x: x, lambda x: np.ones_like(x)),
    }
    if key not in table:
        raise unknown_name("activation", name, table)
    return (key, *table[key])


ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "identity")


@lru_cache(maxsize=256)
def _rule(level: int, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights N(z; 0, 1) dz on [-12, 12]; the finest panel is [0, 2^-level]."""
    geometric = [2.0 ** -k for k in range(level, 0, -1)]  # toward the kink / the scale of phi
    breaks = np.array([0.0, *geometric, *np.arange(1.0, 12.01, 0.5)])  # tail beyond 12: < 1e-32
    x, w = leggauss(points)
    a, b = breaks[:-1, None], breaks[1:, None]
    z = ((a + b) / 2 + (b - a) / 2 * x).ravel()
    wz = ((b - a) / 2 * w).ravel() * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return np.concatenate([-z, z]), np.concatenate([wz, wz])


def _nodes(q: float, points: int = 16) -> tuple[np.ndarray, np.ndarray]:
    # phi bends at |x| ~ 1, i.e. at |z| ~ 1/sqrt(q): the finest panel must be well below that
    level = max(6, math.ceil(math.log2(50 * max(1.0, math.sqrt(q)))))
    return _rule(level, points)


def gaussian_expectation(f: Fn, q: float) -> float:
    """E[f(sqrt(q) z)] for z ~ N(0, 1); at q = 0 the mean of f's one-sided limits at 0."""
    if q <= 0:
        return float(0.5 * (f(np.array(_TINY)) + f(np.array(-_TINY))))
    z, w = _nodes(q)
    return float(w @ f(math.sqrt(q) * z))


def _check(sigma_w: float, sigma_b: float) -> None:
    for label, value in (("sigma_w", sigma_w), ("sigma_b", sigma_b)):
        if not math.isfinite(value) or value < 0 or (label == "sigma_w" and value == 0):
            bound = "positive" if label == "sigma_w" else "zero or positive"
            raise ConfigError(f"{label} must be a finite {bound} number, not {value!r}.")


def length_map(q: float, activation: str, sigma_w: float, sigma_b: float, negative_slope: float = 0.01) -> float:
    """q^l from q^{l-1}: sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2."""
    _, phi, _ = _activation(activation, negative_slope)
    return sigma_w**2 * gaussian_expectation(lambda x: phi(x) ** 2, q) + sigma_b**2


def fixed_point(activation: str, sigma_w: float, sigma_b: float, q0: float = 1.0,
                negative_slope: float = 0.01) -> float:
    """q* reached by iterating the length map from q0; ``inf`` when q grows without bound."""
    _check(sigma_w, sigma_b)
    gap = lambda q: length_map(q, activation, sigma_w, sigma_b, negative_slope) - q  # noqa: E731
    q = q0
    for _ in range(50):  # iterate first: the fixed point meant is the one iteration from q0 reaches
        step = gap(q)
        if abs(step) <= 1e-13 * max(q, Q_MIN):
            return q + step
        q += step
        if q > Q_MAX:
            return math.inf
        if q < Q_MIN:
            return 0.0
    # slow (near the critical line): the map is increasing, so iteration goes to the first root in
    # the direction it moves; walk that way geometrically until the gap clearly changes sign, then
    # solve. "Clearly": beyond the quadrature's rounding, ~1e-15 q, which near the divergence line
    # (relu, sigma_w^2 = 2, sigma_b > 0) would otherwise fake a root at q ~ 1e15
    up = gap(q) > 0
    a = b = q  # a: the last point on the starting side
    while True:
        b = b * 1.5 if up else b / 1.5
        if b > Q_MAX:
            return math.inf
        if b < Q_MIN:
            return 0.0
        g = gap(b)
        if (g < -1e-12 * b) if up else (g > 1e-12 * b):
            return float(optimize.brentq(gap, min(a, b), max(a, b), xtol=1e-300, rtol=1e-13))
        if (g > 0) == up:
            a = b


def chi_1(activation: str, sigma_w: float, q: float, negative_slope: float = 0.01) -> float:
    """sigma_w^2 E[phi'(sqrt(q) z)^2]: squared-gradient multiplier per layer at variance q."""
    _, _, dphi = _activation(activation, negative_slope)
    # q = inf: unbounded phi are scale-free far out (phi(sqrt(q) z) / sqrt(q) -> relu-like), so the limit
    return sigma_w**2 * gaussian_expectation(lambda x: dphi(x) ** 2, min(q, Q_MAX))


def _correlation(activation: str, sigma_w: float, sigma_b: float, q: float, slope: float) -> tuple[float, float]:
    """(c*, slope of the correlation map at c*) for two inputs both at variance q*.

    c^l = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q* with u1 = sqrt(q*) z1,
    u2 = sqrt(q*) (c z1 + sqrt(1 - c^2) z2); its slope chi_c = sigma_w^2 E[phi'(u1) phi'(u2)].
    In the chaotic phase c = 1 is unstable and c* < 1. The 2-D product rule is accurate to ~1e-10
    for smooth phi and less (~1e-5) for kinked ones, whose kink line crosses the grid.
    """
    _, phi, dphi = _activation(activation, slope)
    z, w = _nodes(q, points=6)
    z1, z2, ww = z[:, None], z[None, :], w[:, None] * w[None, :]
    u1, s = math.sqrt(q) * z1, math.sqrt(q)
    pair = lambda f, c: float(np.sum(ww * f(u1) * f(s * (c * z1 + math.sqrt(1 - c * c) * z2))))  # noqa: E731
    gap = lambda c: (sigma_w**2 * pair(phi, c) + sigma_b**2) / q - c  # noqa: E731
    c_star = 0.0
    if gap(0.0) > 1e-12:
        for delta in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8):
            if gap(1 - delta) < 0:
                c_star = float(optimize.brentq(gap, 0.0, 1 - delta, xtol=1e-12))
                break
        else:  # barely chaotic: c* is indistinguishable from 1
            return 1.0, chi_1(activation, sigma_w, q, slope)
    return c_star, sigma_w**2 * pair(dphi, c_star)


def _depth_scale(chi: float) -> float:
    # layers per factor e of a squared norm; Schoenholz et al. sign it (-1/ln chi), the regime says which way
    if abs(chi - 1) <= 1e-12:  # exactly critical up to the quadrature's rounding (relu with He init)
        return math.inf
    return 1.0 / abs(math.log(chi)) if chi > 0 else 0.0


def _regime(chi: float) -> str:
    if abs(chi - 1) < CRITICAL_TOLERANCE:
        return "critical"
    return "vanishing" if chi < 1 else "exploding"


def critical_sigma_w(activation: str, sigma_b: float = 0.0, *, q0: float = 1.0,
                     negative_slope: float = 0.01) -> float:
    """The sigma_w on the order-to-chaos line chi_1(q*) = 1 for this sigma_b (root-finding)."""
    _check(1.0, sigma_b)

    def excess(sigma_w: float) -> float:
        q = fixed_point(activation, sigma_w, sigma_b, q0, negative_slope)
        return chi_1(activation, sigma_w, q, negative_slope) - 1

    lo = 1e-2
    if excess(lo) >= 0:
        raise ConfigError(f"{activation} has no critical sigma_w at sigma_b={sigma_b}: chi_1 >= 1 already at 0.01.")
    hi = lo * 2
    while excess(hi) < 0:  # chi_1 grows with sigma_w: walk up to the first crossing
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ConfigError(f"{activation} has no critical sigma_w below 1e4 at sigma_b={sigma_b}; "
                              "it vanishes at every init scale.")
    return float(optimize.brentq(excess, lo, hi, xtol=1e-13, rtol=1e-12))


@dataclass
class Prediction:
    """What mean-field theory predicts for a net at init; plain data, see ``to_json``."""

    activation: str
    sigma_w: float
    sigma_b: float
    depth: int
    residual: bool
    branch_scale: float | None
    q_star: float          # inf: q grows without bound (always for residual nets)
    chi_1: float           # squared-gradient multiplier per layer (per block, geometric mean, if residual)
    per_layer_factor: float  # sqrt(chi_1): gradient-norm multiplier per layer, output -> input
    depth_scale: float     # 1 / |ln chi_1| layers; inf when critical
    correlation_depth_scale: float | None  # xi_c = -1/ln(chi_c) (plain nets only)
    c_star: float | None
    regime: str            # vanishing | critical | exploding
    profile: list[float]   # gradient norm per layer relative to the last, input -> output
    first_last_ratio: float
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        # strict JSON has no infinity: write "inf" (float("inf") reads it back)
        fix = lambda v: v if not isinstance(v, float) or math.isfinite(v) else str(v)  # noqa: E731
        return {k: [fix(x) for x in v] if isinstance(v, list) else fix(v) for k, v in asdict(self).items()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Prediction:
        data = json.loads(text)
        num = lambda v: float(v) if isinstance(v, str) else v  # noqa: E731
        return cls(**{f.name: ([num(x) for x in data[f.name]] if f.name == "profile"
                               else data[f.name] if f.name in ("activation", "regime", "explanation")
                               else num(data[f.name])) for f in fields(cls)})


def predict(activation: str, sigma_w: float, sigma_b: float, depth: int, residual: bool = False, *,
            q0: float = 1.0, negative_slope: float = 0.01, branch_scale: float = 1.0) -> Prediction:
    """Predict q*, chi_1, depth scales, regime and the gradient-norm profile of a depth-``depth`` net.

    ``q0`` is the variance of the first pre-activations (sigma_w^2 * mean input^2 + sigma_b^2).
    Plain: the profile is chi_1^((L - l) / 2), the net taken at its fixed point q* throughout.
    Residual (``residual=True``, one-layer branch scaled by ``branch_scale``, e.g. 1/sqrt(L), or
    ReZero's 0): assumes wide layers, independent weights per block and the same width everywhere;
    q^{l+1} = q^l + alpha^2 (sigma_w^2 E[phi^2] + sigma_b^2) has no fixed point (it grows), so each
    block's factor 1 + alpha^2 chi_branch(q^l) is evaluated along the growing q^l.
    """
    name, _, _ = _activation(activation, negative_slope)
    _check(sigma_w, sigma_b)
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth <= 0:
        raise ConfigError(f"depth must be a positive whole number of layers, not {depth!r}.")
    if not (math.isfinite(q0) and q0 > 0):
        raise ConfigError(f"q0 (the input variance) must be a finite positive number, not {q0!r}.")
    if not (math.isfinite(branch_scale) and branch_scale >= 0):
        raise ConfigError(f"branch_scale must be a finite number >= 0, not {branch_scale!r}.")
    if not math.isfinite(negative_slope):
        raise ConfigError(f"negative_slope must be a finite number, not {negative_slope!r}.")
    depth = int(depth)
    c_star: float | None = None
    xi_c: float | None = None
    if residual:
        q, block_chi = q0, []
        for _ in range(depth):
            block_chi.append(1 + branch_scale**2 * chi_1(name, sigma_w, q, negative_slope))
            q = min(q + branch_scale**2 * (length_map(q, name, sigma_w, sigma_b, negative_slope)), Q_MAX)
        # block l's factor takes the gradient from its output to its input; profile[l] compares the
        # input of block l with that of the last block, so it is the product of factors l .. L-1
        used = np.log(block_chi[:-1] if depth > 1 else block_chi)
        log_sq = np.concatenate([np.cumsum(used[::-1])[::-1], [0.0]]) if depth > 1 else np.zeros(1)
        chi = float(np.exp(np.mean(used)))
        q_star = math.inf if branch_scale > 0 else q0
    else:
        q_star = fixed_point(name, sigma_w, sigma_b, q0, negative_slope)
        chi = chi_1(name, sigma_w, q_star, negative_slope)
        log_sq = (depth - np.arange(1, depth + 1)) * math.log(chi)
        if math.isinf(q_star):  # relu-like and scale-free: the normalised correlation map has slope 1 at c = 1
            c_star, chi_c = 1.0, 1.0
        elif chi <= 1:
            c_star, chi_c = 1.0, chi
        else:
            c_star, chi_c = _correlation(name, sigma_w, sigma_b, q_star, negative_slope)
        xi_c = _depth_scale(chi_c)
    with np.errstate(over="ignore"):
        profile = [float(v) for v in np.exp(0.5 * log_sq)]
    pred = Prediction(name, float(sigma_w), float(sigma_b), depth, bool(residual),
                      float(branch_scale) if residual else None, float(q_star), chi, math.sqrt(chi),
                      _depth_scale(chi), xi_c, c_star, _regime(chi), profile, profile[0], "")
    pred.explanation = _explain(pred, negative_slope, q0)
    return pred


def _explain(p: Prediction, slope: float, q0: float) -> str:
    where = f"{p.activation} with sigma_w={p.sigma_w:g}, sigma_b={p.sigma_b:g}"
    if p.residual:
        text = (f"In this residual net ({where}, branch scale {p.branch_scale:g}) every block adds the identity to "
                f"its Jacobian, so backprop multiplies the squared gradient norm by 1 + alpha^2 chi_branch >= 1 per "
                f"block: nothing can vanish. The branch's chi = sigma_w^2 E[phi'^2] is taken along the growing "
                f"variance q^l; the blocks multiply the norm by {p.per_layer_factor:.4g} on average, so the "
                f"first block's gradient is {p.first_last_ratio:.3g} times the last's over {p.depth} blocks.")
        if p.regime != "exploding":
            return text
        if p.branch_scale is not None and p.branch_scale < 1:
            return text + (f" The branch scale {p.branch_scale:g} keeps that growth modest; alpha = 1/sqrt(L) bounds "
                           "it at any depth, ReZero's alpha = 0 removes it.")
        return text + (" With a bounded phi, q grows linearly and E[phi'^2] shrinks like 1/sqrt(q), so the growth is "
                       "sub-exponential; relu-like phi keep chi_branch constant and grow exponentially unless the "
                       "branch is scaled down (alpha = 1/sqrt(L), or ReZero's alpha = 0).")
    state = ("q grows without bound (no fixed point), so chi_1 is its large-q limit" if math.isinf(p.q_star)
             else f"the pre-activation variance settles at q*={p.q_star:.4g}")
    text = (f"Backprop multiplies the gradient by one factor per layer (the chain rule). For {where}, {state}; "
            f"there each layer multiplies the squared gradient norm by chi_1 = sigma_w^2 E[phi'(h)^2] = {p.chi_1:.4g}, "
            f"the norm by {p.per_layer_factor:.4g}. ")
    if p.regime == "critical":
        text += f"That is within {CRITICAL_TOLERANCE} of 1 (critical): gradients keep their size over depth. "
    else:
        below = p.regime == "vanishing"
        text += (f"{'Below' if below else 'Above'} 1 the product {'shrinks' if below else 'grows'} geometrically: "
                 f"over {p.depth} layers the first layer's gradient is {p.first_last_ratio:.3g} times the last's "
                 f"({p.regime}; depth scale {p.depth_scale:.3g} layers). ")
    if p.activation == "sigmoid":
        text += "Sigmoid's slope is at most 1/4, so chi_1 <= sigma_w^2/16: it vanishes for every sigma_w below 4. "
    elif p.activation in ("relu", "leaky_relu"):
        text += ("A ReLU passes gradient through the units that are on, half of them: chi_1 = sigma_w^2 (1 + a^2)/2 "
                 "with leak a, so He init (sigma_w^2 = 2 / (1 + a^2)) is critical. ")
    try:
        crit = critical_sigma_w(p.activation, p.sigma_b, q0=q0, negative_slope=slope)
        text += f"The lever is the init scale: chi_1 = 1 at sigma_w = {crit:.4g} for this sigma_b."
    except ConfigError:
        text += "No init scale sigma_w makes chi_1 = 1 at this sigma_b; change the activation or add skips."
    return text


@dataclass(frozen=True)
class InitScale:
    """The mean-field sigma_w (and sigma_b) an init scheme gives; sigma_w None when theory does not apply."""

    sigma_w: float | None
    sigma_b: float
    note: str


@dataclass(frozen=True)
class _Layer:
    """What an init scheme's weight variance depends on: its number, the gain, the fans, phi."""

    arg: float | None
    gain: float
    n_in: float
    n_out: float
    activation: str
    phi: Fn

    def scale(self) -> float:
        return 1.0 if self.arg is None else self.arg


def _xavier(x: _Layer) -> InitScale:
    return InitScale(x.scale() * math.sqrt(2 * x.n_in / (x.n_in + x.n_out)), 0.0,
                     "xavier: Var = gain^2 2/(fan_in + fan_out).")


def _kaiming(x: _Layer) -> InitScale:
    return InitScale(x.scale() * x.gain, 0.0, f"kaiming: sigma_w = gain = {x.gain:.4g} for {x.activation}.")


def _kaiming_fan_out(x: _Layer) -> InitScale:
    return InitScale(x.scale() * x.gain * math.sqrt(x.n_in / x.n_out), 0.0,
                     f"kaiming: sigma_w = gain = {x.gain:.4g} for {x.activation}.")


# sigma_w = sqrt(fan_in Var(W)) per scheme of gradhealth.vocabulary.INIT_SCHEMES (see sigma_w_of_init)
_SIGMA_W: dict[str, Callable[[_Layer], InitScale]] = {
    "default": lambda x: InitScale(math.sqrt(1 / 3), math.sqrt(1 / (3 * x.n_in)),
                                   "PyTorch's default: kaiming_uniform with a=sqrt(5), biases U(+-1/sqrt(fan_in))."),
    "constant": lambda x: InitScale(None, 0.0, "constant weights are not random: every unit computes the same "
                                               "thing, so mean-field theory does not apply."),
    "normal": lambda x: InitScale(x.scale() * math.sqrt(x.n_in), 0.0, "normal(std): sigma_w = std sqrt(fan_in)."),
    "uniform": lambda x: InitScale(x.scale() * math.sqrt(x.n_in / 3), 0.0, "uniform(b): Var = b^2/3."),
    "xavier_uniform": _xavier,
    "xavier_normal": _xavier,
    "kaiming_uniform": _kaiming,
    "kaiming_normal": _kaiming,
    "kaiming_uniform_fan_out": _kaiming_fan_out,
    "kaiming_normal_fan_out": _kaiming_fan_out,
    "orthogonal": lambda x: InitScale(x.gain if x.arg is None else x.arg, 0.0, "orthogonal(gain): sigma_w = gain."),
    "lsuv": lambda x: InitScale(1 / math.sqrt(gaussian_expectation(lambda v: x.phi(v) ** 2, 1.0)), 0.0,
                                "LSUV rescales each layer to unit output variance."),
    "fixup": lambda x: InitScale(None, 0.0, "fixup scales residual branches by depth; predict a residual net with "
                                            "branch_scale instead."),
}


def sigma_w_of_init(init: str, activation: str, arg: float | None = None, *, fan_in: int | None = None,
                    fan_out: int | None = None, negative_slope: float = 0.01) -> InitScale:
    """sigma_w = sqrt(fan_in * Var(W)) for a scheme of ``gradhealth.layers.init`` (``"normal(0.02)"`` or name + arg).

    Var(W) by scheme, n_in = fan_in, n_out = fan_out (default fan_in):
      normal(std):            std^2                        -> sigma_w = std sqrt(n_in)
      uniform(b):             b^2 / 3                      -> sigma_w = b sqrt(n_in / 3)
      xavier_*(gain):         gain^2 2 / (n_in + n_out)    -> sigma_w^2 = gain^2 2 n_in / (n_in + n_out)
      kaiming_*(m) fan_in:    m^2 gain^2 / n_in            -> sigma_w = m gain (relu: sqrt 2)
      kaiming_*_fan_out(m):   m^2 gain^2 / n_out           -> sigma_w^2 = m^2 gain^2 n_in / n_out
      orthogonal(gain):       rows of norm gain            -> sigma_w = gain (same mean squared singular value)
      default (kaiming_uniform a=sqrt 5, PyTorch Linear):  1 / (3 n_in) -> sigma_w^2 = 1/3, and its biases
                              stay U(+-1/sqrt n_in): sigma_b^2 = 1 / (3 n_in); every other scheme zeroes biases
      lsuv:                   rescaled until q = 1 per layer -> sigma_w^2 = 1 / E[phi(z)^2]
    """
    text = str(init).strip().lower()
    if "(" in text and text.endswith(")"):
        text, _, raw = text[:-1].partition("(")
        try:
            arg = float(raw) if raw.strip() else arg
        except ValueError:
            raise ConfigError(f"the number in init {init!r} is not a number.") from None
    name = INIT_ALIASES.get(text.strip(), text.strip())
    if name not in INIT_SCHEMES:
        raise unknown_name("init", init, INIT_SCHEMES + tuple(INIT_ALIASES))
    act, phi, _ = _activation(activation, negative_slope)
    gain = nonlinearity_gain(GAIN_NAMES[act], negative_slope)
    if name in ("normal", "uniform", "default") and fan_in is None:
        raise ConfigError(f"init {name} depends on the layer size: give fan_in (the layer's input width, "
                          "--fan-in on the command line).")
    if fan_in is not None and fan_in <= 0:
        raise ConfigError(f"fan_in (the layer's input width) must be a positive integer, not {fan_in}.")
    if arg is not None and name != "constant" and not (math.isfinite(arg) and arg > 0):
        raise ConfigError(f"the scale in init {init!r} must be a finite positive number, not {arg:g}.")
    # xavier and fan_out modes only see the ratio fan_in / fan_out: 1 for a constant-width net
    n_in = float(fan_in or 1)
    return _SIGMA_W[name](_Layer(arg, gain, n_in, float(fan_out or n_in), act, phi))


def compare_with_measured(prediction: Prediction, measured_norms: list[float]) -> dict[str, Any]:
    """Fit log(norm) against layer index (least squares) and compare the slope with the prediction.

    ``measured_norms`` are gradient norms per layer, input -> output, like ``prediction.profile``.
    The fitted per-layer factor is exp(-slope) (backward, output -> input); it agrees when within
    MEASURED_TOLERANCE (relative) of the predicted factor and both name the same regime.
    """
    norms = np.asarray(measured_norms, dtype=float)
    if norms.ndim != 1 or norms.size < 2 or not np.all(np.isfinite(norms)) or np.any(norms <= 0):
        raise ConfigError("measured_norms must hold at least two finite, positive gradient norms.")
    slope = float(np.polyfit(np.arange(norms.size), np.log(norms), 1)[0])
    measured = math.exp(-slope)
    relative_error = abs(measured / prediction.per_layer_factor - 1)
    regime = _regime(measured**2)
    return {
        "predicted_factor": prediction.per_layer_factor,
        "measured_factor": measured,
        "relative_error": relative_error,
        "predicted_first_last": prediction.first_last_ratio,
        "measured_first_last": float(norms[0] / norms[-1]),
        "predicted_regime": prediction.regime,
        "measured_regime": regime,
        "tolerance": MEASURED_TOLERANCE,
        "agree": bool(relative_error <= MEASURED_TOLERANCE and regime == prediction.regime),
    }
