"""Recurrent nets: the gradient through time of a tanh RNN falls geometrically; gates, orthogonal
recurrent weights and clipping each answer a part of it.

The task (:func:`~gradhealth.studies.sequence_tasks.first_symbol_batch`): one of K symbols at the
first of T steps, blanks after it, the class is the symbol; only a gradient that survives T - 1
steps back teaches it. At init the study measures, by autograd, the loss's gradient with respect to
the input at every step and sets the fitted per-step factor beside the spectral radius of the tanh
RNN's backward Jacobian ``W_hh^T diag(1 - h_t^2)``, averaged over steps and examples (Pascanu et
al. 2013). The gated cells start with their keep gate open (``gate_bias``: LSTM forget gate, GRU
update gate). A tanh RNN whose recurrent weights are scaled up explodes; clipping keeps it finite.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from gradhealth.report.html import Section, Table
from gradhealth.studies.base import Claim, StudyResult, pick_size, resolve_seeds, show_spread, spread
from gradhealth.studies.charts import Line, lines_chart
from gradhealth.studies.sequence_tasks import first_symbol_batch, lm_loss, single_thread, train_steps

NAME = "recurrent"
TITLE = "Recurrent nets: gradients through time"
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"length": 30, "steps": 150},
    "quick": {"length": 50, "steps": 300},
    "full": {"length": 100, "steps": 1000},
}
SYMBOLS, HIDDEN, BATCH = 4, 32, 32
LR = 3e-3
# the keep gates start at sigmoid(GATE_BIAS); Jozefowicz et al. 2015 add 1 to the LSTM's forget gate
GATE_BIAS = {"lstm": 3.0, "gru": 1.0}
NETS = {
    "tanh RNN": "rnn",
    "tanh RNN, orthogonal W_hh": "rnn:recurrent_init=orthogonal",
    "LSTM": f"lstm:gate_bias={GATE_BIAS['lstm']:g}",
    "GRU": f"gru:gate_bias={GATE_BIAS['gru']:g}",
}
EXPLODING = "rnn:recurrent_init=orthogonal,recurrent_gain=2"
EXPLODE_LR, CLIP = 0.1, 1.0
# the exploding nets learn a shorter recall: 30 steps, where even a tamed tanh RNN can learn it
EXPLODE_LENGTH = 30
# "learns": ends below half the chance loss ln K; "fails": ends above 90% of it
LEARNED, FAILED = 0.5, 0.9
# "keeps the gradient over more steps": at least this many times the steps per decade of the tanh RNN
MORE_STEPS = 2.0


def _spec(base: str) -> str:
    sep = "," if ":" in base else ":"
    return f"{base}{sep}hidden={HIDDEN},in_features={SYMBOLS},num_classes={SYMBOLS}"


def _build(base: str, seed: int):
    from gradhealth.models import create_model

    torch.manual_seed(seed)
    return create_model(_spec(base))


def _per_step_gradient(model, batch) -> list[float]:
    """||d loss / d x_t|| for every step t, over the batch: how much of the loss reaches each input."""
    x, y = batch
    x = x.clone().requires_grad_(True)
    lm_loss(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return [float(v) for v in x.grad.norm(dim=(0, 2))]


def _factor(norms: list[float]) -> tuple[float | None, float | None]:
    """Per-step factor exp(-slope) of log norm against step (going back in time), and the fit's R^2."""
    points = [(t, math.log(v)) for t, v in enumerate(norms) if v > 0 and math.isfinite(v)]
    if len(points) < 3:
        return None, None
    t, y = (np.array(c, float) for c in zip(*points))
    slope, icpt = np.polyfit(t, y, 1)
    residual = float(((y - (slope * t + icpt)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return math.exp(-float(slope)), (1 - residual / total) if total > 0 else None


@torch.no_grad()
def _jacobian_radius(model, x: torch.Tensor) -> dict[str, float]:
    """Mean over steps and examples of the spectral radius and norm of W_hh^T diag(1 - h_t^2)."""
    hidden, _ = model.rnn(model.embed(x))
    w = model.rnn.weight_hh_l0.double()
    deriv = 1 - hidden.double().pow(2)  # tanh'(a_t) = 1 - h_t^2
    jac = w.T.unsqueeze(0) * deriv.reshape(-1, 1, deriv.shape[-1])  # W^T diag(d): column j times d_j
    radius = torch.linalg.eigvals(jac).abs().amax(-1)
    norm = torch.linalg.matrix_norm(jac, ord=2)
    return {"radius": float(radius.mean()), "norm": float(norm.mean()),
            "log_radius": float(radius.log().mean()), "log_norm": float(norm.log().mean())}


def _steps_per_decade(factor: float | None) -> float | None:
    if factor is None:
        return None
    if factor >= 1:
        return math.inf
    return -1 / math.log10(factor)


def run(size: str = "quick", *, data: str | None = None, seeds: int | list[int] | None = None) -> StudyResult:
    """``data`` is not used: the study generates its own task (it names no data set)."""
    p = pick_size(PRESETS, size)
    seeds = resolve_seeds(size, seeds)
    length, steps = p["length"], p["steps"]
    chance = math.log(SYMBOLS)
    batches = first_symbol_batch(SYMBOLS, length, BATCH)
    window = max(5, steps // 10)
    cells: dict[str, dict[str, Any]] = {label: {"profiles": [], "factors": [], "fits": [], "final": [], "runs": []}
                                        for label in NETS}
    jacobians, explode = [], {"unclipped": [], "clipped": [], "init_grad_norm": []}
    with single_thread():
        for seed in seeds:
            probe = batches(torch.Generator().manual_seed(seed))
            for label, base in NETS.items():
                cell = cells[label]
                model = _build(base, seed)
                profile = _per_step_gradient(model, probe)
                factor, fit = _factor(profile)
                cell["profiles"].append(profile)
                cell["factors"].append(factor)
                cell["fits"].append(fit)
                if label == "tanh RNN":
                    jacobians.append(_jacobian_radius(model, probe[0]))
                trained = train_steps(model, batches, steps=steps, lr=LR, seed=seed, label=label)
                cell["final"].append(trained.final_loss(window))
                cell["runs"].append(trained)
            short = first_symbol_batch(SYMBOLS, min(length, EXPLODE_LENGTH), BATCH)
            model = _build(EXPLODING, seed)
            x, y = short(torch.Generator().manual_seed(seed))
            lm_loss(model(x), y).backward()
            explode["init_grad_norm"].append(math.sqrt(sum(float(q.grad.pow(2).sum()) for q in model.parameters())))
            for key, clip in (("unclipped", None), ("clipped", CLIP)):
                run_ = train_steps(_build(EXPLODING, seed), short, steps=steps, lr=EXPLODE_LR, seed=seed, label=key,
                                   clip=clip, optimizer="sgd")
                explode[key].append(run_)
    return _conclude(cells, jacobians, explode, p, seeds, size, chance, window)


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite and len(finite) == len(values) else None


def _conclude(cells, jacobians, explode, p, seeds, size, chance, window) -> StudyResult:
    length, steps = p["length"], p["steps"]
    factor = {label: _mean(c["factors"]) for label, c in cells.items()}
    per_decade = {label: _steps_per_decade(f) for label, f in factor.items()}
    first_last = {label: [pr[0] / pr[-1] if pr[-1] > 0 else None for pr in c["profiles"]] for label, c in cells.items()}
    final = {label: c["final"] for label, c in cells.items()}
    radius = _mean([j["radius"] for j in jacobians])
    geo_radius = math.exp(_mean([j["log_radius"] for j in jacobians]) or 0.0)
    geo_norm = math.exp(_mean([j["log_norm"] for j in jacobians]) or 0.0)
    rnn_f, fit = factor["tanh RNN"], _mean(cells["tanh RNN"]["fits"])
    base_steps = per_decade["tanh RNN"]
    orth_ratio = _mean([a / b if a and b else None for a, b in zip(first_last["tanh RNN, orthogonal W_hh"],
                                                                      first_last["tanh RNN"])])
    gated_ok = all(per_decade[g] is not None and base_steps is not None and per_decade[g] >= MORE_STEPS * base_steps
                   for g in ("LSTM", "GRU"))
    unclipped_bad = all(r.first_nonfinite is not None or r.final_loss(window) >= FAILED * chance
                        for r in explode["unclipped"])
    clipped_ok = all(r.first_nonfinite is None and r.final_loss(window) < LEARNED * chance for r in explode["clipped"])
    claims = [
        Claim(f"The gradient through time of a tanh RNN falls geometrically: over {length} steps the loss's gradient "
              f"w.r.t. the input shrinks by a factor below 1 per step back (a straight line in log scale, "
              f"R² ≥ 0.9), "
              f"beside a mean spectral radius of the recurrent Jacobian W_hhᵀ diag(1 − h²) below 1.",
              rnn_f is not None and rnn_f < 1 and fit is not None and fit >= 0.9 and radius is not None and radius < 1,
              {"per_step_factor": cells["tanh RNN"]["factors"], "fit_r2": cells["tanh RNN"]["fits"],
               "jacobian_spectral_radius_mean": radius, "jacobian_spectral_radius_geomean": geo_radius,
               "jacobian_spectral_norm_geomean": geo_norm, "first_last": first_last["tanh RNN"]}),
        Claim(f"Orthogonal recurrent weights delay the decay: at init the gradient at the first of {length} steps, "
              "relative to the last, is at least 1000 times the default-initialized RNN's.",
              orth_ratio is not None and orth_ratio >= 1e3,
              {"orthogonal first/last": first_last["tanh RNN, orthogonal W_hh"],
               "default first/last": first_last["tanh RNN"], "ratio": orth_ratio}),
        Claim(f"LSTM and GRU keep the gradient over far more steps: each needs at least {MORE_STEPS:g} times as many "
              "steps back as the tanh RNN to lose a factor of 10.", gated_ok,
              {"steps_per_decade": per_decade, "per_step_factor": factor}),
        Claim(f"At length {length} the gated cells learn the first-symbol task (final loss below {LEARNED:g} of the "
              f"chance loss ln {SYMBOLS}) where the tanh RNN fails (above {FAILED:g} of it).",
              all(v < LEARNED * chance for g in ("LSTM", "GRU") for v in final[g])
              and all(v > FAILED * chance for v in final["tanh RNN"]),
              {"final_loss": final, "chance": chance}),
        Claim(f"Clipping tames an exploding RNN: on {min(length, EXPLODE_LENGTH)}-step sequences with W_hh "
              f"orthogonal ×2 (gradient norm at init at least "
              f"{min(explode['init_grad_norm']):.2g}), SGD at lr {EXPLODE_LR:g} unclipped hits NaN/Inf or stays "
              f"above {FAILED:g} of the chance loss, while clipped at norm {CLIP:g} it stays finite and learns "
              f"(below {LEARNED:g} of it).",
              unclipped_bad and clipped_ok and min(explode["init_grad_norm"]) > 100,
              {"init_grad_norm": explode["init_grad_norm"],
               "unclipped": [{"first_nonfinite": r.first_nonfinite, "final_loss": r.final_loss(window)}
                             for r in explode["unclipped"]],
               "clipped": [{"first_nonfinite": r.first_nonfinite, "final_loss": r.final_loss(window)}
                           for r in explode["clipped"]]}),
    ]
    results: dict[str, Any] = {
        "size": size, "seeds": seeds, "length": length, "steps": steps, "lr": LR, "hidden": HIDDEN, "batch": BATCH,
        "symbols": SYMBOLS, "chance_loss": chance, "final_loss_window": window, "gate_bias": GATE_BIAS,
        "nets": {label: {"model": _spec(base), "per_step_factor": cells[label]["factors"],
                         "fit_r2": cells[label]["fits"], "steps_per_decade": per_decade[label],
                         "first_last": first_last[label], "per_step_gradient": cells[label]["profiles"],
                         "final_loss": spread(final[label]),
                         "loss": [r.losses for r in cells[label]["runs"]]}
                 for label, base in NETS.items()},
        "jacobian": jacobians,
        "exploding": {"model": _spec(EXPLODING), "lr": EXPLODE_LR, "clip": CLIP,
                      "init_grad_norm": explode["init_grad_norm"],
                      **{key: [{"first_nonfinite": r.first_nonfinite, "loss": r.losses, "grad_norm": r.grad_norms}
                               for r in explode[key]] for key in ("unclipped", "clipped")}},
    }
    sections = _sections(cells, explode, per_decade, final, p, radius, geo_norm, chance)
    return StudyResult(NAME, TITLE, claims, sections, results, key_figure=sections[0].figures[0])


def _sections(cells, explode, per_decade, final, p, radius, geo_norm, chance) -> list[Section]:
    length = p["length"]
    steps_back = list(range(length))
    lines = []
    for index, (label, c) in enumerate(cells.items()):
        profile = c["profiles"][0]
        last = profile[-1] or 1.0
        # step back k = length - 1 - t: the last step is 0 steps back
        lines.append(Line(label, steps_back, [v / last for v in reversed(profile)], index, markers=False))
    through_time = lines_chart(lines, title="Gradient through time at init", xlabel="steps back from the last",
                               ylabel="‖∂loss/∂x_t‖ / last step's (log scale)", logy=True,
                               caption=f"{length}-step sequences, hidden {HIDDEN}. The tanh RNN's line falls straight "
                                       "in log scale: a fixed factor per step. Orthogonal W_hh and the gated cells "
                                       "keep the gradient much longer.")
    smooth = max(1, p["steps"] // 25)
    curves = lines_chart(
        [Line(label, list(range(len(c["runs"][0].losses))), _smooth(c["runs"][0].losses, smooth), index, markers=False)
         for index, (label, c) in enumerate(cells.items())],
        title=f"Learning the first symbol of {length}", xlabel="optimizer step", ylabel="training loss",
        guides={f"chance (ln {SYMBOLS})": chance},
        caption=f"Adam at lr {LR:g}. Each line is a running mean over {smooth} steps.")
    norms = lines_chart(
        [Line(f"{key} (clip {CLIP:g})" if key == "clipped" else key, list(range(len(runs[0].grad_norms))),
              runs[0].grad_norms, index, markers=False) for index, (key, runs) in
         enumerate((k, explode[k]) for k in ("unclipped", "clipped"))],
        title="An exploding RNN: gradient norm before clipping", xlabel="optimizer step", ylabel="‖g‖ (log scale)",
        logy=True, caption=f"tanh RNN with W_hh orthogonal ×2, {min(length, EXPLODE_LENGTH)} steps, SGD lr "
                          f"{EXPLODE_LR:g}: unclipped, the first updates throw the recurrent weights into "
                          "saturation and the run stays at chance. A cross marks NaN/Inf.")
    rows = [[label, _fmt(c["factors"][0]), _fmt(per_decade[label]), _fmt(c["profiles"][0][0] / c["profiles"][0][-1]),
             show_spread(spread(final[label]))] for label, c in cells.items()]
    table = Table(["net", "per-step factor", "steps per decade", "first/last at init", "final loss"], rows,
                  f"Recurrent Jacobian of the tanh RNN at init: mean spectral radius {_fmt(radius)}, geometric mean "
                  f"spectral norm {_fmt(geo_norm)}. Gate biases: LSTM forget +{GATE_BIAS['lstm']:g}, GRU update "
                  f"+{GATE_BIAS['gru']:g}.")
    intro = ("Backprop through time multiplies the gradient by the recurrent Jacobian once per step. When its "
             "spectral radius is below 1 the gradient falls by a fixed factor per step; the gated cells add a "
             "path whose factor is the keep gate, near 1.")
    return [Section("The gradient through time", intro, [through_time, curves], [table]),
            Section("Exploding, and clipping", "Scaled-up recurrent weights make the Jacobian's norm larger than 1: "
                    "the gradient grows with every step back. Clipping the global norm bounds each update.", [norms],
                    [Table(["run", "first NaN/Inf step", "largest ‖g‖", "final loss"],
                           [[key, runs[0].first_nonfinite if runs[0].first_nonfinite is not None else "none",
                             _fmt(max(runs[0].grad_norms)), _fmt(runs[0].final_loss(max(5, p["steps"] // 10)))]
                            for key, runs in explode.items() if key != "init_grad_norm"])])]


def _smooth(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞" if math.isinf(value) else f"{value:.3g}"
