"""Gradient clipping: at a learning rate where the unclipped run blows up, clipping keeps it finite.

One ReLU MLP with He init at SGD lr 0.3 (momentum 0.9), trained unclipped and with each clip mode
of :mod:`gradhealth.remedies.clip` at its default value: norm (max global norm 1), value (each
element to ±1), agc (Brock et al. 2021, λ = 0.01) and autoclip (10th percentile of past norms).
"""
from __future__ import annotations

import math
from typing import Any

from gradhealth.remedies.clip import DEFAULT_CLIP_VALUES
from gradhealth.report.charts import line_chart
from gradhealth.report.html import Section, Table
from gradhealth.studies.base import (Claim, StudyResult, final_loss, pick_size, resolve_seeds, run_config, run_entry,
                                     show_spread, spread)
from gradhealth.studies.charts import loss_chart

NAME = "clipping"
TITLE = "Gradient clipping"
PRESETS: dict[str, dict[str, Any]] = {"tiny": {"steps": 50}, "quick": {"steps": 150}, "full": {"steps": 600}}
MODES = ("none", "norm", "value", "agc", "autoclip")
MODEL = "mlp:depth=10,width=64,activation=relu"
LR = 0.3
# ending above 90% of the chance loss ln C is "learned nothing"; below half of it, "trains"
CHANCE_FRACTION = 0.9
TRAINS_FRACTION = 0.5


def _clipped_fraction(log) -> float:
    """Share of steps whose gradient the clipper shrank."""
    shrunk = [r.global_grad_norm_post_clip < 0.999 * r.global_grad_norm for r in log.records
              if r.global_grad_norm and r.global_grad_norm_post_clip is not None and math.isfinite(r.global_grad_norm)]
    return sum(shrunk) / max(len(shrunk), 1)


def run(size: str = "quick", *, data: str | None = None, seeds: int | list[int] | None = None) -> StudyResult:
    p = pick_size(PRESETS, size)
    seeds, data = resolve_seeds(size, seeds), data or "digits"
    cells, runs = {}, []
    for mode in MODES:
        pairs = [run_config(model=MODEL, init="he", data=data, steps=p["steps"], lr=LR, clip=mode, seed=s)
                 for s in seeds]
        losses = [final_loss(s) for _, s in pairs]
        cells[mode] = {"mode": mode, "clip_value": DEFAULT_CLIP_VALUES.get(mode), "losses": losses,
                       "final_loss": spread(losses), "log": pairs[0][0],
                       "first_nonfinite_step": [(s["first_nonfinite"] or {}).get("step") for _, s in pairs],
                       "clipped_fraction": spread([_clipped_fraction(log) for log, _ in pairs])}
        runs += [run_entry(f"clip {mode}", log, s, seed=seed) for (log, s), seed in zip(pairs, seeds)]
    chance = math.log(pairs[0][1].get("num_classes") or 10)
    none, norm = cells["none"], cells["norm"]
    claims = [
        Claim(f"At lr {LR} the unclipped run blows up: every seed hits NaN/Inf or ends no better than chance "
              f"(>= {CHANCE_FRACTION:.0%} of ln C).", all(v >= CHANCE_FRACTION * chance for v in none["losses"]),
              {"final_loss": none["losses"], "first_nonfinite_step": none["first_nonfinite_step"], "chance": chance}),
        Claim(f"Clipping the gradient norm at {DEFAULT_CLIP_VALUES['norm']:g} keeps the same run finite and training: "
              f"every seed ends below half the chance loss.", all(v < TRAINS_FRACTION * chance for v in norm["losses"]),
              {"final_loss": norm["losses"], "chance": chance}),
        Claim("Every clipping mode (norm, value, agc, autoclip) keeps the run finite.",
              all(math.isfinite(v) for m in MODES[1:] for v in cells[m]["losses"]),
              {f"{m} final loss": cells[m]["losses"] for m in MODES[1:]}),
    ]
    results = {"data": data, "size": size, "seeds": seeds, "model": MODEL, "lr": LR, "chance_loss": chance,
               "cells": [{k: v for k, v in c.items() if k != "log"} for c in cells.values()], "runs": runs}
    sections = _sections(cells, p)
    return StudyResult(NAME, TITLE, claims, sections, results, key_figure=sections[0].figures[0])


def _sections(cells: dict, p: dict) -> list[Section]:
    label = lambda m: "no clipping" if m == "none" else f"{m} ({DEFAULT_CLIP_VALUES[m]:g})"  # noqa: E731
    curves = loss_chart({label(m): c["log"] for m, c in cells.items()}, logy=True,
                        title=f"Training loss at lr {LR}, by clip mode",
                        caption="A cross at the top marks the step where a run's loss became NaN/Inf; a line "
                                "that ends there stopped. Clipped runs keep a finite loss.")
    norms = line_chart({label(m): ([r.step for r in c["log"].records], [r.global_grad_norm for r in c["log"].records])
                        for m, c in cells.items()}, title="Global gradient norm before clipping", logy=True,
                       xlabel="optimizer step", ylabel="‖g‖ (log scale)", markers=False,
                       caption="What backprop produced at each step, before any clipping: the unclipped run's "
                               "norm races up until it overflows.")
    rows = [[label(m), c["first_nonfinite_step"][0] if c["first_nonfinite_step"][0] is not None else "none",
             show_spread(c["final_loss"]), show_spread(c["clipped_fraction"])] for m, c in cells.items()]
    table = Table(["clip mode (value)", "first NaN/Inf step", "final loss", "steps clipped"], rows,
                  f"{MODEL}, He init, SGD lr {LR}, momentum 0.9, {p['steps']} steps.")
    intro = ("Clipping bounds each step: norm rescales the whole gradient to a maximum length, value cuts each "
             "element, AGC limits each unit's update relative to its weights, autoclip clips at a percentile of "
             "the norms seen so far. A mode that keeps the run finite has not necessarily made it learn; the "
             "table shows which ones did.")
    return [Section("Clipping at a learning rate that diverges", intro, [curves, norms], [table])]
