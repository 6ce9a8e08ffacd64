"""Initialization: the scale of the random weights decides whether gradients survive depth.

A deep plain tanh MLP under every scheme of :mod:`gradhealth.layers.init` (constant, small and
large normal, Xavier, He, orthogonal, LSUV), and a residual ReLU MLP without normalization under
He init and Fixup (Zhang et al. 2019), which is built for exactly that case. Constant init also
shows the symmetry problem: every unit of a layer computes, and keeps computing, the same thing.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from gradhealth.monitor.records import RunLog
from gradhealth.report.html import Section, Table
from gradhealth.studies.base import (Claim, StudyResult, final_loss, first_last, grad_norms, pick_size, resolve_seeds,
                                     run_entry, show_spread, spread, train)
from gradhealth.report.charts import ratio_chart
from gradhealth.studies.charts import loss_chart

NAME = "init"
TITLE = "Weight initialization"
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"depth": 16, "steps": 60, "residual_depth": 20},
    "quick": {"depth": 20, "steps": 150, "residual_depth": 30},
    "full": {"depth": 30, "steps": 500, "residual_depth": 50},
}
CONSTANT_VALUE = 0.05
CONSTANT = f"constant({CONSTANT_VALUE:g})"
PLAIN_INITS = (CONSTANT, "normal(1)", "normal(0.01)", "xavier", "he", "orthogonal", "lsuv")
GOOD_INITS = ("xavier", "he", "orthogonal", "lsuv")
BAD_INITS = ("normal(1)", "normal(0.01)")
RESIDUAL_INITS = ("he", "fixup")
GOOD_DECADES, BAD_DECADES = 2.0, 3.0
SYMMETRY_TOLERANCE = 1e-6
MARGIN = 0.1
LR = 0.02


def row_spread(model) -> dict[str, float]:
    """For every hidden Linear layer: the largest difference between a weight row and the first row,
    relative to the first row's largest entry (0 when all units of the layer are identical)."""
    import torch

    linears = [(n, m.weight.detach()) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][1:-1]
    return {name: float((w - w[:1]).abs().max() / w[0].abs().max().clamp_min(1e-30)) for name, w in linears}


def _measure(spec: str, init: str, p: dict, data: str, seeds: list[int], runs: list, symmetry: bool = False):
    import torch

    logs, losses, spreads = [], [], []
    for seed in seeds:
        result = train(model=spec, init=init, data=data, steps=p["steps"], lr=LR, seed=seed)
        log = RunLog(result.meta, result.records)
        logs.append(log)
        losses.append(final_loss(result.summary))
        if symmetry:
            weights = [m.weight.detach() for m in result.model.modules() if isinstance(getattr(m, "weight", None),
                                                                                      torch.Tensor)]
            spreads.append({"row_spread": row_spread(result.model),
                            "largest_move": max(float((w - CONSTANT_VALUE).abs().max()) for w in weights)})
        runs.append(run_entry(f"{spec} {init}", log, result.summary, seed=seed))
    return {"init": init, "model": spec, "log": logs[0], "losses": losses, "final_loss": spread(losses),
            "first_last": spread([first_last(grad_norms(x)) for x in logs], log=True), "symmetry": spreads}


def run(size: str = "quick", *, data: str | None = None, seeds: int | list[int] | None = None) -> StudyResult:
    p = pick_size(PRESETS, size)
    seeds, data = resolve_seeds(size, seeds), data or "digits"
    runs: list[dict] = []
    plain_spec = f"mlp:depth={p['depth']},width=64,activation=tanh"
    plain = {i: _measure(plain_spec, i, p, data, seeds, runs, symmetry=i == CONSTANT) for i in PLAIN_INITS}
    res_spec = f"mlp:depth={p['residual_depth']},width=64,activation=relu,residual=true"
    residual = {i: _measure(res_spec, i, p, data, seeds, runs) for i in RESIDUAL_INITS}
    decades = {i: abs(math.log10(c["first_last"]["mean"])) if c["first_last"]["mean"] else math.nan
               for i, c in plain.items()}
    sym = plain[CONSTANT]["symmetry"]
    worst = max(v for s in sym for v in s["row_spread"].values())
    moved = min(s["largest_move"] for s in sym)
    mean = lambda c: statistics.fmean(c["losses"]) if all(map(math.isfinite, c["losses"])) else math.inf  # noqa: E731
    claims = [
        Claim(f"Constant init leaves every unit of a layer identical: after {p['steps']} steps of training the rows of "
              "every hidden weight matrix are still equal, although the weights moved.",
              worst <= SYMMETRY_TOLERANCE and moved > SYMMETRY_TOLERANCE,
              {"largest_relative_row_difference": worst, "largest_weight_move": moved}),
        Claim(f"Xavier, He, orthogonal and LSUV keep the first/last gradient ratio of the {p['depth']}-layer tanh net "
              f"within {GOOD_DECADES:g} orders of magnitude of 1, while normal(1) and normal(0.01) push it beyond "
              f"{BAD_DECADES:g}.", all(decades[i] <= GOOD_DECADES for i in GOOD_INITS)
              and all(decades[i] > BAD_DECADES for i in BAD_INITS),
              {"first_last": {i: plain[i]["first_last"]["mean"] for i in PLAIN_INITS}}),
        Claim(f"After {p['steps']} steps every variance-preserving init (Xavier, He, orthogonal, LSUV) has a lower "
              f"training loss than both normal(1) and normal(0.01), by more than {MARGIN} nats.",
              max(mean(plain[i]) for i in GOOD_INITS) < min(mean(plain[i]) for i in BAD_INITS) - MARGIN,
              {"final_loss": {i: mean(plain[i]) for i in (*GOOD_INITS, *BAD_INITS)}}),
        Claim(f"Fixup trains the {p['residual_depth']}-layer residual ReLU net without normalization to a lower loss "
              f"than He init (by more than {MARGIN} nats).",
              mean(residual["fixup"]) < mean(residual["he"]) - MARGIN,
              {"fixup": residual["fixup"]["losses"], "he": residual["he"]["losses"]}),
    ]
    strip = lambda cells: [{k: v for k, v in c.items() if k != "log"} for c in cells.values()]  # noqa: E731
    results = {"data": data, "size": size, "seeds": seeds, "plain": strip(plain), "residual": strip(residual),
               "runs": runs}
    sections = _sections(plain, residual, p, worst)
    return StudyResult(NAME, TITLE, claims, sections, results, key_figure=sections[0].figures[0])


def _sections(plain: dict, residual: dict, p: dict, worst: float) -> list[Section]:
    ratios = ratio_chart(list(plain),
                         {f"tanh MLP, depth {p['depth']}": [c["first_last"]["mean"] for c in plain.values()]},
                         title="First/last gradient ratio at init by init scheme", ylabel="first / last (log scale)",
                         caption="Each stem runs from 1 to the measured ratio: too small an init and the gradient "
                                 "vanishes toward the input, too large and it explodes; the variance-preserving "
                                 "schemes keep it near 1.")
    curves = loss_chart({i: c["log"] for i, c in plain.items()}, logy=True,
                        title="Training loss by init, plain tanh MLP",
                        caption="The same net, data order and steps; only the initial weights differ.")
    res = loss_chart({i: c["log"] for i, c in residual.items()}, logy=True,
                     title=f"Residual ReLU MLP without normalization, depth {p['residual_depth']}",
                     caption="He init adds a unit-variance branch to the signal in every block, so activations "
                             "grow with depth; Fixup scales the branches down and zeroes their last layer.")
    rows = [[c["model"], i, show_spread(c["first_last"]), show_spread(c["final_loss"])]
            for cells in (plain, residual) for i, c in cells.items()]
    table = Table(["net", "init", "first/last at init", "final loss"], rows,
                  f"SGD lr {LR}, momentum 0.9, {p['steps']} steps. Constant init: largest row difference after "
                  f"training {worst:.2g} (relative).")
    intro = ("Each layer multiplies the gradient by its weights, so their scale decides whether the product "
             "vanishes or explodes. Xavier (Var = 2/(fan_in + fan_out)) and He (2/fan_in for ReLU) preserve the "
             "variance; orthogonal init preserves norms exactly; LSUV rescales each layer on real data. A constant "
             "init gives every unit the same gradient, so they never become different.")
    return [Section("Initialization schemes", intro, [ratios, curves, res], [table])]
