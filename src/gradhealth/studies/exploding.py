"""Exploding gradients: factors above 1 multiply up, and a step taken on a huge gradient overflows.

Three experiments: (1) the material's chain of weights initialised to 5, where the backpropagated
gradient grows by exactly 5 per layer (it reads one number per example, so it always trains on a
1-feature synthetic set); (2) a weight-scale sweep of a tanh net, whose first/last
gradient ratio goes from vanishing to exploding as σ_w grows, beside the mean-field prediction;
(3) a wide ReLU net with too large an init that overflows to NaN, and the same run with gradient
clipping or He init that does not.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from gradhealth.diagnose.theory import predict, sigma_w_of_init
from gradhealth.report.html import Section, Table
from gradhealth.studies.base import (Claim, StudyResult, final_loss, first_last, grad_norms, load_bundle,
                                     pick_size, resolve_seeds, run_config, run_entry, show_spread, spread)
from gradhealth.studies.charts import loss_chart, paired_chart

NAME = "exploding"
TITLE = "Exploding gradients"
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"chain_depth": 11, "sweep_depth": 20, "scales": (0.5, 1.0, 2.0, 4.0), "overflow_steps": 30},
    "quick": {"chain_depth": 11, "sweep_depth": 30, "scales": (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0),
              "overflow_steps": 100},
    "full": {"chain_depth": 16, "sweep_depth": 50, "scales": (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0),
             "overflow_steps": 300},
}
CHAIN_WEIGHT = 5.0
CHAIN_DATA = "synthetic:in=1,classes=2,n=512"
WIDTH = 64
# σ_w = 0.3·sqrt(64) = 2.4: the forward pass at init is finite, the first steps are not
LARGE_INIT = "normal(0.3)"
RATIO_TOLERANCE = 0.01


def chain_model(depth: int, weight: float = CHAIN_WEIGHT):
    """A width-1 linear chain with every weight = ``weight``; the 2-class readout is (weight, -weight).

    The readout's two rows must differ: with equal rows both logits are equal and no gradient flows.
    """
    import torch

    from gradhealth import create_model

    model = create_model(f"mlp:depth={depth},width=1,activation=identity,in_features=1,num_classes=2",
                         init=f"constant({weight:g})")
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[weight], [-weight]]))
    return model


def backprop_norms(model, x, y) -> list[float]:
    """|dL/d(output)| of every Linear layer, input first, for one batch: the gradient backprop carries."""
    import torch
    import torch.nn.functional as F

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    seen: dict[int, float] = {}

    def watch(index: int):
        def hook(module, inputs, out) -> None:
            # a hook on the output tensor sees dL/d(output) as backprop passes through it
            out.register_hook(lambda g: seen.__setitem__(index, float(g.norm())))
        return hook

    handles = [m.register_forward_hook(watch(i)) for i, m in enumerate(layers)]
    try:
        F.cross_entropy(model(x), y).backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    return [seen[i] for i in range(len(layers))]


def run(size: str = "quick", *, data: str | None = None, seeds: int | list[int] | None = None) -> StudyResult:
    p = pick_size(PRESETS, size)
    seeds, data = resolve_seeds(size, seeds), data or "digits"
    depth = p["chain_depth"]
    x, y = load_bundle(CHAIN_DATA, 0).train[:64]
    deltas = backprop_norms(chain_model(depth), x, y)[:-1]  # hidden layers; the readout has 2 outputs
    per_layer = [a / b for a, b in zip(deltas, deltas[1:])]
    chain_runs = {}
    for clip in ("none", "norm"):
        log, summary = run_config(module=chain_model(depth), model=f"chain of {depth} weights = 5", data=CHAIN_DATA,
                                  steps=30, lr=0.1, clip=clip)
        chain_runs[clip] = (log, summary)
    sweep = _sweep(p, data, seeds)
    overflow = {label: [run_config(model=f"mlp:depth=6,width={WIDTH},activation=relu", init=init, clip=clip,
                                   data=data, steps=p["overflow_steps"], lr=0.1, seed=s) for s in seeds]
                for label, init, clip in (("large init", LARGE_INIT, "none"),
                                          ("large init + clip norm 1", LARGE_INIT, "norm"), ("He init", "he", "none"))}
    claims = _claims(depth, deltas, per_layer, chain_runs, sweep, overflow)
    results = {
        "data": data, "size": size, "seeds": seeds,
        "chain": {"depth": depth, "weight": CHAIN_WEIGHT, "data": CHAIN_DATA, "backprop_norms": deltas,
                  "per_layer_ratio": per_layer,
                  "expected_first_last": CHAIN_WEIGHT ** (len(deltas) - 1),
                  "weight_grad_norms": grad_norms(chain_runs["none"][0], 1),
                  "runs": [run_entry(f"chain, clip {c}", *chain_runs[c]) for c in chain_runs]},
        "sweep": [{k: v for k, v in row.items() if k != "runs"} for row in sweep],
        "overflow": {label: [run_entry(label, log, s, seed=seed) for (log, s), seed in zip(pairs, seeds)]
                     for label, pairs in overflow.items()},
        "runs": [r for row in sweep for r in row["runs"]],
    }
    sections = _sections(depth, deltas, chain_runs, sweep, overflow, p)
    return StudyResult(NAME, TITLE, claims, sections, results, key_figure=sections[1].figures[0])


def _sweep(p: dict, data: str, seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for sigma_w in p["scales"]:
        init = f"normal({sigma_w / math.sqrt(WIDTH):.6g})"
        measured = [run_config(model=f"mlp:depth={p['sweep_depth']},width={WIDTH},activation=tanh", init=init,
                               data=data, steps=1, seed=s) for s in seeds]
        scale = sigma_w_of_init(init, "tanh", fan_in=WIDTH)
        theory = predict("tanh", scale.sigma_w, scale.sigma_b, p["sweep_depth"])
        rows.append({"sigma_w": sigma_w, "init": init, "theory_first_last": theory.first_last_ratio,
                     "first_last": spread([first_last(grad_norms(log)) for log, _ in measured], log=True),
                     "runs": [run_entry(f"tanh σ_w={sigma_w:g}", log, s) for log, s in measured]})
    return rows


def _claims(depth, deltas, per_layer, chain_runs, sweep, overflow) -> list[Claim]:
    worst = max(abs(r / CHAIN_WEIGHT - 1) for r in per_layer)
    ratios = [row["first_last"]["mean"] for row in sweep]
    rising = all(a is not None and b is not None and b >= a for a, b in zip(ratios, ratios[1:]))
    chain_nan = chain_runs["none"][1].get("first_nonfinite")
    large = [final_loss(s) for _, s in overflow["large init"]]
    fixed = {k: [final_loss(s) for _, s in overflow[k]] for k in ("large init + clip norm 1", "He init")}
    chance = math.log(10)
    return [
        Claim(f"With every weight = 5, each layer multiplies the backpropagated gradient by 5: over {len(deltas)} "
              f"layers the first layer's gradient is 5^{len(deltas) - 1} times the last's.",
              worst <= RATIO_TOLERANCE,
              {"per_layer_ratio": per_layer, "worst_relative_error": worst,
               "measured_first_last": deltas[0] / deltas[-1],
               "expected_first_last": CHAIN_WEIGHT ** (len(deltas) - 1)}),
        Claim("The weight-5 chain overflows to NaN/Inf on its first steps unless the gradient is clipped.",
              chain_nan is not None and final_loss(chain_runs["norm"][1]) < math.inf,
              {"unclipped_first_nonfinite_step": (chain_nan or {}).get("step"),
               "unclipped_first_nonfinite_in": (chain_nan or {}).get("layer"),
               "clipped_final_loss": chain_runs["norm"][1]["final_loss"]}),
        Claim("In a deep tanh net the first/last gradient ratio grows with the weight scale, from vanishing (< 1) "
              "to exploding (> 1).", rising and ratios[0] < 1 < ratios[-1],
              {"sigma_w": [row["sigma_w"] for row in sweep], "first_last": ratios}),
        Claim(f"A wide ReLU net with init {LARGE_INIT} overflows to NaN/Inf, while the same run with gradient-norm "
              "clipping and the He-initialised run stay finite and end below the chance loss ln 10.",
              all(math.isinf(v) for v in large) and all(v < chance for vs in fixed.values() for v in vs),
              {"large_init_first_nonfinite_step": [(s.get("first_nonfinite") or {}).get("step")
                                                   for _, s in overflow["large init"]],
               **{f"{k} final loss": v for k, v in fixed.items()}, "chance_loss": chance}),
    ]


def _sections(depth, deltas, chain_runs, sweep, overflow, p) -> list[Section]:
    layers = list(range(len(deltas)))
    chain = paired_chart({"|dL/dh| per layer": (layers, deltas, [deltas[-1] * CHAIN_WEIGHT ** (len(deltas) - 1 - i)
                                                                for i in layers])},
                         title="Weights initialised to 5: gradient per layer", xlabel="layer (0 = input side)",
                         ylabel="|dL/d output| (log scale)", logy=True, predicted="5^k from the last layer",
                         caption="The gradient with respect to each layer's output, one batch at init: every layer "
                                 "toward the input multiplies it by the weight, 5.")
    weight_grads = grad_norms(chain_runs["none"][0], 1)
    chain_table = Table(["layer", "|dL/dh| (backprop)", "5^k prediction", "weight gradient norm"],
                        [[i, d, deltas[-1] * CHAIN_WEIGHT ** (len(deltas) - 1 - i), w]
                         for i, (d, w) in enumerate(zip(deltas, weight_grads))],
                        "A weight's gradient is the backprop signal times the layer's input; in a linear chain the "
                        "input grew by the same 5 per layer forward, so every weight gets about the same gradient, "
                        f"{statistics.median(weight_grads):.3g} here: huge everywhere at once.")
    sweep_fig = paired_chart(
        {f"tanh, depth {p['sweep_depth']}": ([r["sigma_w"] for r in sweep], [r["first_last"]["mean"] for r in sweep],
                                             [r["theory_first_last"] for r in sweep])},
        title="First/last gradient ratio vs weight scale", predicted="mean-field theory",
        xlabel="σ_w (weights ~ N(0, σ_w² / fan_in))", ylabel="first / last gradient norm (log scale)", logy=True,
        guides={"1 = balanced": 1.0},
        caption="Below σ_w ≈ 1 each tanh layer shrinks the gradient, above it each layer grows it: the ratio "
                "rises by orders of magnitude as the weights get larger.")
    sweep_table = Table(["σ_w", "init", "first/last (measured)", "first/last (theory)"],
                        [[r["sigma_w"], r["init"], show_spread(r["first_last"]), r["theory_first_last"]]
                         for r in sweep])
    first = {label: pairs[0] for label, pairs in overflow.items()}
    curves = loss_chart({label: log for label, (log, _) in first.items()}, logy=True,
                        title="Training loss: too large an init, and two fixes",
                        caption="The unclipped large-init run's loss races up and overflows; with the gradient norm "
                                "clipped at 1, or with He init, the same net trains.")
    rows = [[label, f"{s.get('first_nonfinite', {}).get('step')}" if s.get("first_nonfinite") else "none",
             show_spread(spread([final_loss(x) for _, x in overflow[label]]))] for label, (_, s) in first.items()]
    overflow_table = Table(["run", "first NaN/Inf at step", "final loss"], rows,
                           f"ReLU MLP, depth 6, width {WIDTH}, SGD lr 0.1, momentum 0.9, {p['overflow_steps']} steps.")
    return [
        Section("Weights initialised to 5", "The material's example: a chain whose weights are all 5. Backprop "
                "multiplies the gradient by each weight on its way to the input.", [chain], [chain_table]),
        Section("Weight scale sweep", "The same deep tanh net with ever larger random weights.", [sweep_fig],
                [sweep_table]),
        Section("Overflow, and two fixes", "Too large an init makes the first gradients huge; one step on them "
                "sends the weights and then the activations past the float range. Clipping the gradient norm "
                "bounds the step; He init avoids the huge gradients in the first place.", [curves], [overflow_table]),
    ]
