"""Normalization: BatchNorm, LayerNorm and GroupNorm against none, in deep plain nets.

A deep ReLU MLP and a conv net at PyTorch's default init, where the un-normalized net's gradient
vanishes on its way to the input. Each norm layer rescales its input to unit variance, so the
per-layer factor no longer compounds; the study measures the first/last gradient ratio at init and
the training loss after the same steps.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from gradhealth.report.html import Section, Table
from gradhealth.studies.base import (Claim, StudyResult, final_loss, first_last, grad_norms, has_images, pick_size,
                                     resolve_seeds, run_config, run_entry, show_spread, spread)
from gradhealth.report.charts import ratio_chart
from gradhealth.studies.charts import loss_chart

NAME = "normalization"
TITLE = "Normalization"
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"mlp_depth": 20, "mlp_steps": 80, "conv_depth": 16, "conv_steps": 40},
    "quick": {"mlp_depth": 30, "mlp_steps": 200, "conv_depth": 20, "conv_steps": 100},
    "full": {"mlp_depth": 50, "mlp_steps": 600, "conv_depth": 30, "conv_steps": 400},
}
NORMS = ("none", "batch", "layer", "group")
NAMES = {"mlp": "{mlp_depth}-layer MLP", "conv": "{conv_depth}-layer conv net"}
LABELS = {"none": "no norm", "batch": "BatchNorm", "layer": "LayerNorm", "group": "GroupNorm"}
MIN_DECADES = 3.0
MARGIN = 0.1  # nats: "a lower loss" means lower by more than this


def _net(kind: str, norm: str, p: dict, data: str, seeds: list[int], runs: list) -> dict[str, Any]:
    spec = (f"mlp:depth={p['mlp_depth']},width=64,activation=relu,norm={norm}" if kind == "mlp"
            else f"convnet:depth={p['conv_depth']},width=16,norm={norm}")
    pairs = [run_config(model=spec, data=data, steps=p[f"{kind}_steps"], lr=0.05, seed=s) for s in seeds]
    losses = [final_loss(s) for _, s in pairs]
    accuracy = [float(log.records[-1].metrics.get("train_acc") or math.nan) for log, _ in pairs]
    runs += [run_entry(f"{kind} {LABELS[norm]}", log, s, seed=seed) for (log, s), seed in zip(pairs, seeds)]
    return {"net": kind, "norm": norm, "model": spec, "log": pairs[0][0],
            "loss": statistics.fmean(losses) if all(math.isfinite(v) for v in losses) else math.inf,
            "final_loss": spread(losses), "last_batch_accuracy": spread(accuracy),
            "first_last": spread([first_last(grad_norms(log)) for log, _ in pairs], log=True)}


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _decades(cell: dict) -> float:
    ratio = cell["first_last"]["mean"]
    return abs(math.log10(ratio)) if ratio else math.inf


def run(size: str = "quick", *, data: str | None = None, seeds: int | list[int] | None = None) -> StudyResult:
    p = pick_size(PRESETS, size)
    seeds = resolve_seeds(size, seeds)
    mlp_data = data or "digits"
    conv_data = "digits-image" if data is None else data if has_images(data) else None
    runs: list[dict] = []
    nets = ["mlp"] + (["conv"] if conv_data is not None else [])
    # GroupNorm only in the conv net: an MLP's 64 features in 32 groups of 2 normalize to ±1 and pass no gradient
    cells = {(net, n): _net(net, n, p, mlp_data if net == "mlp" else conv_data, seeds, runs)
             for net in nets for n in NORMS if net == "conv" or n != "group"}
    claims = []
    for net in nets:
        none, norms = cells[(net, "none")], [n for n in NORMS[1:] if (net, n) in cells]
        closer = {LABELS[n]: _decades(none) - _decades(cells[(net, n)]) for n in norms}
        claims.append(Claim(
            f"Without normalization the {NAMES[net].format(**p)}'s gradient vanishes (first/last below 1e-3), while "
            f"{_and([LABELS[n] for n in norms])} bring the ratio at least {MIN_DECADES:g} orders of magnitude "
            "closer to 1.",
            none["first_last"]["mean"] is not None and none["first_last"]["mean"] < 1e-3
            and min(closer.values()) >= MIN_DECADES,
            {"first_last": {LABELS[n]: cells[(net, n)]["first_last"]["mean"] for n in ("none", *norms)},
             "decades_closer_to_1": closer}))
    losses = {net: {LABELS[n]: cells[(net, n)]["loss"] for n in NORMS if (net, n) in cells} for net in nets}
    claims.append(Claim(f"BatchNorm trains every net here to a lower loss than no normalization (by more than {MARGIN} "
                        "nats).", all(v[LABELS["batch"]] < v[LABELS["none"]] - MARGIN for v in losses.values()),
                        {"final_loss": losses, "margin": MARGIN}))
    results = {"data": {"mlp": mlp_data, "conv": conv_data}, "size": size, "seeds": seeds,
               "cells": [{k: v for k, v in c.items() if k != "log"} for c in cells.values()], "runs": runs}
    sections = _sections(cells, p, conv_data)
    return StudyResult(NAME, TITLE, claims, sections, results, key_figure=sections[0].figures[0])


def _sections(cells: dict, p: dict, conv_data: str | None) -> list[Section]:
    nets = ["mlp"] + (["conv"] if conv_data else [])
    names = {k: v.format(**p) for k, v in NAMES.items()}
    ratios = ratio_chart([LABELS[n] for n in NORMS],
                         {names[k]: [cells[(k, n)]["first_last"]["mean"] if (k, n) in cells else None for n in NORMS]
                          for k in nets},
                         title="First/last gradient ratio at init by normalization", ylabel="first / last (log scale)",
                         caption="Each stem runs from 1 to the measured ratio: down means the first layer gets less "
                                 "gradient than the last. Without a norm layer it is orders of magnitude less; each "
                                 "norm layer brings it back toward 1. GroupNorm runs in the conv net only: in a "
                                 "64-wide MLP its groups of 2 features normalize to ±1 and pass no gradient.")
    figures = [ratios] + [loss_chart({LABELS[n]: c["log"] for (net, n), c in cells.items() if net == k},
                                     title=f"Training loss, {names[k]}",
                                     caption="The same net, data order and steps; only the norm layer differs.")
                          for k in nets]
    rows = [[names[c["net"]], LABELS[c["norm"]], show_spread(c["first_last"]), show_spread(c["final_loss"]),
             show_spread(c["last_batch_accuracy"])] for c in cells.values()]
    table = Table(["net", "normalization", "first/last at init", "final training loss", "last batch accuracy"], rows,
                  "PyTorch's default init, SGD lr 0.05, momentum 0.9; ReLU throughout.")
    notes = []
    for c in cells.values():
        balanced = c["first_last"]["mean"] is not None and _decades(c) <= 1
        if c["norm"] != "none" and balanced and c["loss"] > 0.9 * math.log(10):
            notes.append(f"{LABELS[c['norm']]} in the {names[c['net']]} keeps the gradient balanced (first/last "
                         f"{c['first_last']['mean']:.2g}) yet ends near the chance loss ({c['loss']:.3g}): a balanced "
                         "gradient is necessary for training, not sufficient.")
    intro = ("A norm layer divides its input by its standard deviation, so whatever scale the weights give, the next "
             "layer sees unit variance and backprop's per-layer factor stays near 1. BatchNorm normalizes each unit "
             "over the batch, LayerNorm each example over its units, GroupNorm each example over groups of channels.")
    return [Section("Normalization layers", intro + (" " + " ".join(notes) if notes else ""), figures, [table])]
