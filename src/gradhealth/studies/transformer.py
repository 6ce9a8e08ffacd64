"""Transformers: where the LayerNorm sits decides whether a deep one trains without warm-up, and the
skip connections carry the gradient down to the first block.

GPT-style twins (:mod:`gradhealth.models.transformer`) with Xavier init, as the original
Transformer, learn a random Markov language (next token, best loss ln 2) with Adam at a learning
rate where post-LN (Vaswani et al. 2017) stalls and pre-LN (GPT-2) does not; a linear warm-up
brings post-LN back (Xiong et al. 2020). At init, norm-free twins with and without skips show the
gradient each block receives.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from gradhealth.report.html import Section, Table
from gradhealth.studies.base import Claim, StudyResult, pick_size, resolve_seeds, show_spread, spread
from gradhealth.studies.charts import Line, lines_chart
from gradhealth.studies.sequence_tasks import (MarkovLanguage, block_grad_norms, lm_loss, single_thread,
                                               train_steps)

NAME = "transformer"
TITLE = "Transformers: norm placement, warm-up and skips"
# a shallower net needs a larger learning rate to tip post-LN over (Xiong et al.: the gradient of
# post-LN's last layers at init grows with depth, pre-LN's does not)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"depth": 6, "steps": 80, "lr": 1e-2},
    "quick": {"depth": 12, "steps": 150, "lr": 5e-3},
    "full": {"depth": 24, "steps": 400, "lr": 3e-3},
}
WIDTH, HEADS = 32, 2
INIT = "xavier"
# warm-up over the first third of the steps, linear from lr/warmup to lr
WARMUP_FRACTION = 1 / 3
# "trains worse": ends more than this many nats higher (the task's loss runs from ln 16 = 2.8 to ln 2 = 0.7)
MARGIN = 0.5
MIN_DECADES = 3.0
RUNS = {"pre-LN": ("pre", False), "post-LN": ("post", False), "post-LN + warm-up": ("post", True)}


def _spec(depth: int, norm: str, residual: bool, language: MarkovLanguage) -> str:
    return (f"transformer:depth={depth},width={WIDTH},heads={HEADS},norm={norm},residual={str(residual).lower()},"
            f"vocab_size={language.vocab},max_len={language.steps},init={INIT}")


def _init_profile(spec: str, language: MarkovLanguage, seed: int) -> list[float]:
    """Each block's gradient norm at init on one batch of the language."""
    from gradhealth.models import create_model

    torch.manual_seed(seed)
    model = create_model(spec)
    x, y = language(torch.Generator().manual_seed(seed))
    lm_loss(model(x), y).backward()
    return block_grad_norms(model, model.blocks)


def _ratio(profile: list[float]) -> float | None:
    return profile[0] / profile[-1] if profile[-1] > 0 else None


def run(size: str = "quick", *, data: str | None = None, seeds: int | list[int] | None = None) -> StudyResult:
    """``data`` is not used: the study generates its own language (it names no data set)."""
    from gradhealth.models import create_model

    p = pick_size(PRESETS, size)
    seeds = resolve_seeds(size, seeds)
    depth, steps, lr = p["depth"], p["steps"], p["lr"]
    window = max(5, steps // 6)
    warmup = max(1, round(steps * WARMUP_FRACTION))
    trained: dict[str, list] = {label: [] for label in RUNS}
    profiles: dict[str, list[list[float]]] = {}
    with single_thread():
        for seed in seeds:
            language = MarkovLanguage(seed=seed)
            for label, (norm, warm) in RUNS.items():
                torch.manual_seed(seed)
                model = create_model(_spec(depth, norm, True, language))
                trained[label].append(train_steps(model, language, steps=steps, lr=lr, seed=seed, label=label,
                                                  warmup=warmup if warm else 0))
            for norm in ("none", "pre", "post"):
                for residual in (True, False):
                    key = f"{norm}-norm {'residual' if residual else 'plain'}"
                    profiles.setdefault(key, []).append(_init_profile(_spec(depth, norm, residual, language),
                                                                     language, seed))
    language = MarkovLanguage()
    finals = {label: [r.final_loss(window) for r in runs] for label, runs in trained.items()}
    mean = {label: sum(v) / len(v) for label, v in finals.items()}
    ratios = {key: [_ratio(p) for p in ps] for key, ps in profiles.items()}
    ratio = {key: spread(v, log=True) for key, v in ratios.items()}
    plain_r, res_r = ratio["none-norm plain"]["mean"], ratio["none-norm residual"]["mean"]
    decades = math.log10(res_r / plain_r) if plain_r and res_r else (math.inf if res_r and plain_r == 0 else None)
    claims = [
        Claim(f"At depth {depth} a post-LN transformer without warm-up trains worse than the pre-LN one: after "
              f"{steps} Adam steps at lr {lr:g} its loss is more than {MARGIN} nats higher.",
              mean["post-LN"] > mean["pre-LN"] + MARGIN,
              {"pre-LN final loss": finals["pre-LN"], "post-LN final loss": finals["post-LN"], "margin": MARGIN}),
        Claim(f"Warm-up rescues post-LN: with the learning rate ramped up over the first {warmup} steps it ends "
              f"within {MARGIN} nats of pre-LN and more than {MARGIN} below post-LN without warm-up.",
              mean["post-LN + warm-up"] <= mean["pre-LN"] + MARGIN
              and mean["post-LN + warm-up"] < mean["post-LN"] - MARGIN,
              {"post-LN + warm-up final loss": finals["post-LN + warm-up"], "pre-LN final loss": finals["pre-LN"],
               "post-LN final loss": finals["post-LN"], "warmup_steps": warmup}),
        Claim(f"Without residual connections the gradient reaching the first block falls by orders of magnitude: "
              f"in norm-free twins of depth {depth} at init, the plain twin's first/last block gradient ratio is at "
              f"least {MIN_DECADES:g} decades below the residual twin's.",
              decades is not None and decades >= MIN_DECADES,
              {"plain first/last": ratios["none-norm plain"], "residual first/last": ratios["none-norm residual"],
               "decades": decades}),
    ]
    results: dict[str, Any] = {
        "size": size, "seeds": seeds, "depth": depth, "steps": steps, "lr": lr, "init": INIT, "width": WIDTH,
        "heads": HEADS, "warmup_steps": warmup, "final_loss_window": window,
        "task": {"vocab": language.vocab, "branching": language.branching, "seq_len": language.steps,
                 "batch": language.batch, "best_loss": language.best_loss},
        "runs": [{"label": r.label, "seed": seed, "model": _spec(depth, *RUNS[r.label][:1], True, language),
                  "warmup_steps": warmup if RUNS[r.label][1] else 0, "final_loss": r.final_loss(window),
                  "first_nonfinite": r.first_nonfinite, "loss": r.losses, "grad_norm": r.grad_norms}
                 for label, runs in trained.items() for seed, r in zip(seeds, runs)],
        "final_loss": {label: spread(v) for label, v in finals.items()},
        "init_block_grad_norms": profiles, "first_last": ratio,
    }
    sections = _sections(trained, profiles, ratio, finals, p, warmup, window, language)
    return StudyResult(NAME, TITLE, claims, sections, results, key_figure=sections[0].figures[0])


def _running_mean(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


def _sections(trained, profiles, ratio, finals, p, warmup, window, language) -> list[Section]:
    depth, steps, lr = p["depth"], p["steps"], p["lr"]
    smooth = max(1, steps // 25)
    curves = lines_chart(
        [Line(label, list(range(len(runs[0].losses))), _running_mean(runs[0].losses, smooth), index, markers=False,
              dashed=label == "post-LN")
         for index, (label, runs) in enumerate(trained.items())],
        title=f"Training loss, {depth}-block transformers", xlabel="optimizer step", ylabel="training loss",
        guides={"best possible (ln 2)": language.best_loss},
        caption=f"Adam at lr {lr:g}, Xavier init. Post-LN without warm-up (dashed) stalls near the frequency of "
                f"each token; with a linear warm-up over {warmup} steps it trains like pre-LN. Each line is a running "
                f"mean over {smooth} steps.")
    blocks = list(range(1, depth + 1))
    profile_lines = []
    for index, norm in enumerate(("none", "pre", "post")):
        for residual in (True, False):
            key = f"{norm}-norm {'residual' if residual else 'plain'}"
            mean = [math.exp(sum(math.log(max(v, 1e-300)) for v in col) / len(col)) for col in zip(*profiles[key])]
            profile_lines.append(Line(f"{norm if norm != 'none' else 'no'} norm, {'skips' if residual else 'no skips'}",
                                      blocks, mean, index, dashed=not residual))
    grads = lines_chart(profile_lines, title="Each block's gradient norm at init", xlabel="block (input side first)",
                        ylabel="gradient norm (log scale)", logy=True,
                        caption="One batch at init; dashed: the same net without skip connections. Without norms "
                                "the plain twin's gradient shrinks block by block towards the input; the LayerNorm "
                                "twins rescale the backward signal in every block.")
    rows = [[label, show_spread(spread(finals[label]))] for label in trained]
    table = Table(["run", f"final training loss (mean of the last {window} steps)"], rows,
                  f"{depth} blocks, width {WIDTH}, {HEADS} heads, {steps} Adam steps at lr {lr:g}, batches of "
                  f"{language.batch} sequences of {language.steps} tokens; the best possible loss is "
                  f"ln {language.branching} = {language.best_loss:.3f}.")
    ratio_rows = [[key.replace("-norm", " norm"), show_spread(s)] for key, s in ratio.items()]
    ratio_table = Table(["twin", "first/last block gradient at init"], ratio_rows,
                        "Gradient norm of all parameters of the first block over the last block's.")
    intro = ("Post-LN normalizes the sum of the skip and the branch, so the gradient to the early blocks passes "
             "through every LayerNorm and the last blocks' updates are large at the start; Adam's first steps at "
             "the full learning rate push it into a plateau it does not leave. Pre-LN keeps an identity path from "
             "the head to the embedding. A warm-up keeps the first updates small until Adam's second-moment "
             "estimates settle.")
    skips = ("Twins with and without skip connections at init. Norm-free, the plain twin's first block receives a "
             "vanishing share of the last block's gradient. With a LayerNorm in every block the plain twin's "
             "first/last ratio stays within a few decades at init (see the table): the norms rescale the signal, "
             "and what the skips add there shows in how the nets train, not in this ratio.")
    return [Section("Post-LN, pre-LN and warm-up", intro, [curves], [table]),
            Section("Skip connections and the gradient at the first block", skips, [grads], [ratio_table])]
