"""Vanishing gradients: backprop multiplies one factor w·σ'(x) per layer, and sigmoid's σ' is at most 1/4.

Plain MLPs with sigmoid, tanh and ReLU under several inits, their per-layer gradient norms
measured at step 0. The fitted per-layer factor is set beside σ'(x) <= 1/4 and beside
the mean-field prediction of :func:`gradhealth.diagnose.theory.predict` for the same init.
"""
from __future__ import annotations

import math
from typing import Any

from gradhealth.diagnose.theory import MEASURED_TOLERANCE, predict, sigma_w_of_init
from gradhealth.report.charts import bar_chart, line_chart
from gradhealth.report.html import Section, Table
from gradhealth.studies.charts import paired_chart
from gradhealth.studies.base import (Claim, StudyResult, decay_factor, first_last, grad_norms, mean_profile,
                                     pick_size, resolve_seeds, run_config, run_entry, show_spread, spread)

NAME = "vanishing"
TITLE = "Vanishing gradients"
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"depths": (20,), "inits": ("xavier", "he"), "width": 64},
    "quick": {"depths": (10, 20, 30, 50), "inits": ("normal(0.1)", "xavier", "he"), "width": 64},
    "full": {"depths": (10, 20, 30, 50, 75, 100), "inits": ("normal(0.1)", "xavier", "he"), "width": 128},
}
ACTIVATIONS = ("sigmoid", "tanh", "relu")
SIGMOID_SLOPE_MAX = 0.25
# the claim allows for the fit's noise and the layers that sit off the fixed point: 0.25 -> 0.3
SIGMOID_FACTOR_BOUND = 0.3
MIN_DECADES = 3.0
# the three pairings the figures compare with theory: sigmoid's and tanh's textbook init, ReLU's
HIGHLIGHT = (("sigmoid", "xavier"), ("tanh", "xavier"), ("relu", "he"))


def run(size: str = "quick", *, data: str | None = None, seeds: int | list[int] | None = None) -> StudyResult:
    p = pick_size(PRESETS, size)
    seeds, data = resolve_seeds(size, seeds), data or "digits"
    cells: dict[tuple[str, str, int], dict[str, Any]] = {}
    runs = []
    for depth in p["depths"]:
        for act in ACTIVATIONS:
            for init in p["inits"]:
                profiles = []
                for seed in seeds:
                    log, summary = run_config(model=f"mlp:depth={depth},width={p['width']},activation={act}",
                                              init=init, data=data, steps=1, seed=seed)
                    profiles.append(grad_norms(log))
                    runs.append(run_entry(f"{act} + {init}, depth {depth}", log, summary, seed=seed,
                                          decay_factor=decay_factor(profiles[-1])))
                scale = sigma_w_of_init(init, act, fan_in=p["width"], fan_out=p["width"])
                theory = predict(act, scale.sigma_w, scale.sigma_b, depth)
                cells[(act, init, depth)] = {
                    "activation": act, "init": init, "depth": depth, "profile": mean_profile(profiles),
                    "factor": spread([decay_factor(x) for x in profiles]),
                    "first_last": spread([first_last(x) for x in profiles], log=True),
                    "theory_factor": theory.per_layer_factor, "theory_first_last": theory.first_last_ratio,
                    "theory_profile": theory.profile, "sigma_w": scale.sigma_w}
    deepest = max(p["depths"])
    claims = _claims(cells, deepest)
    sections = _sections(cells, p, deepest, len(seeds))
    results = {"data": data, "size": size, "seeds": seeds, "width": p["width"], "measured_at": "step 0",
               "cells": [{k: v for k, v in c.items() if k != "theory_profile"} for c in cells.values()],
               "runs": runs}
    return StudyResult(NAME, TITLE, claims, sections, results, key_figure=sections[0].figures[0])


def _claims(cells: dict, depth: int) -> list[Claim]:
    sig, relu = cells[("sigmoid", "xavier", depth)], cells[("relu", "he", depth)]
    factor = sig["factor"]["mean"]
    ratio_sig, ratio_relu = sig["first_last"]["mean"], relu["first_last"]["mean"]
    decades = math.log10(ratio_relu / ratio_sig) if ratio_sig and ratio_relu else None
    errors = {f"{a} + {i}": abs(c["factor"]["mean"] / c["theory_factor"] - 1)
              for (a, i, d), c in cells.items() if d == depth and c["factor"]["mean"]}
    return [
        Claim(f"With sigmoid and Xavier init each layer multiplies the gradient norm by at most about "
              f"{SIGMOID_SLOPE_MAX} (σ'(x) <= 1/4): the fitted factor at depth {depth} is <= {SIGMOID_FACTOR_BOUND}.",
              factor is not None and factor <= SIGMOID_FACTOR_BOUND,
              {"measured_factor": factor, "sigmoid_slope_max": SIGMOID_SLOPE_MAX,
               "theory_factor": sig["theory_factor"], "depth": depth}),
        Claim(f"At depth {depth} the sigmoid net's first/last gradient ratio is at least {MIN_DECADES:g} orders of "
              f"magnitude below ReLU with He init.",
              decades is not None and decades >= MIN_DECADES,
              {"sigmoid_xavier_first_last": ratio_sig, "relu_he_first_last": ratio_relu, "decades_apart": decades}),
        Claim(f"Mean-field theory predicts the measured per-layer factor within {MEASURED_TOLERANCE:.0%} for every "
              f"activation and init at depth {depth}.",
              bool(errors) and max(errors.values()) <= MEASURED_TOLERANCE,
              {"worst_relative_error": max(errors.values(), default=None), "relative_error": errors,
               "tolerance": MEASURED_TOLERANCE}),
    ]


def _sections(cells: dict, p: dict, depth: int, n_seeds: int) -> list[Section]:
    deep = {k: c for k, c in cells.items() if k[2] == depth}
    layers = lambda ys: list(range(len(ys)))  # noqa: E731
    averaged = f" (geometric mean over {n_seeds} seeds)" if n_seeds > 1 else ""
    pairs = {}
    for act, init in HIGHLIGHT:
        c = deep[(act, init, depth)]
        # the prediction is relative to the last layer; anchor it at the last hidden layer measured
        anchor = c["profile"][-2] / c["theory_profile"][-2]
        pairs[f"{act} + {init}"] = (layers(c["profile"]), c["profile"], [v * anchor for v in c["theory_profile"]])
    sig = deep[("sigmoid", "xavier", depth)]["factor"]["mean"]
    theory = paired_chart(pairs, title=f"Gradient norm per layer at init, depth {depth}", logy=True,
                          xlabel="weight layer (0 = input side)", ylabel="gradient norm (log scale)",
                          caption=f"Measured at step 0{averaged} (solid) and predicted by mean-field theory (dashed, "
                                  "Poole et al. 2016; anchored at the last hidden layer). Toward the input (left) the "
                                  f"sigmoid net loses a factor {1 / sig:.1f} per layer; ReLU with He init stays flat.")
    shown = {k: c for k, c in deep.items() if k[1] in ("xavier", "he")}
    profile = line_chart({f"{a} + {i}": (layers(c["profile"]), c["profile"]) for (a, i, _), c in shown.items()},
                         title=f"Gradient norm per layer at init, every activation, depth {depth}",
                         xlabel="weight layer (0 = input side)", ylabel="gradient norm (log scale)", logy=True,
                         markers=False,
                         caption="Xavier and He init for each activation: for sigmoid both give the same slope, "
                                 "since its gain is 1; for ReLU only He keeps the line flat.")
    labels = [f"{a} + {i}" for a, i, _ in deep]
    factors = bar_chart(labels, {"measured": [c["factor"]["mean"] for c in deep.values()],
                                 "theory": [c["theory_factor"] for c in deep.values()]},
                        title=f"Per-layer gradient factor, depth {depth}", ylabel="factor per layer",
                        guides={"σ'(x) <= 1/4 bound for sigmoid": SIGMOID_SLOPE_MAX, "1 = no decay": 1.0},
                        caption="The fitted factor each hidden layer multiplies the gradient norm by: below 1 it "
                                "vanishes geometrically, and sigmoid stays under the 1/4 line for every init here.")
    figures = [theory, profile, factors]
    if len(p["depths"]) > 1:
        by_config: dict[str, tuple[list, list]] = {}
        for (a, i, d), c in cells.items():
            if i in ("xavier", "he"):
                xs, ys = by_config.setdefault(f"{a} + {i}", ([], []))
                xs.append(d)
                ys.append(c["first_last"]["mean"])
        figures.append(line_chart(by_config, title="First/last gradient ratio vs depth", xlabel="depth (layers)",
                                  ylabel="first / last layer gradient norm", logy=True,
                                  caption="A straight line on this log scale is exponential in depth: each extra "
                                          "layer multiplies the ratio by the same factor."))
    rows = [[c["activation"], c["init"], c["sigma_w"], show_spread(c["factor"]), c["theory_factor"],
             show_spread(c["first_last"]), c["theory_first_last"]] for c in deep.values()]
    table = Table(["activation", "init", "σ_w", "factor", "factor, theory", "first/last", "first/last, theory"], rows,
                  f"Depth {depth}, width {p['width']}, gradient norms at step 0; every depth is in results.json.")
    intro = ("Backpropagation multiplies the gradient by each layer's weights and by the activation's slope σ'(x). "
             "Sigmoid's slope is at most 1/4, so a deep sigmoid net hands its first layers a gradient that shrinks "
             "by a constant factor per layer; ReLU passes a slope of 1 where it is on, and He init keeps the "
             "product near 1.")
    return [Section("Vanishing gradients", intro, figures, [table])]
