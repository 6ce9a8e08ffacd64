"""The CIFAR-10 recipe of He et al. 2015 (section 4.2) for ResNet-20 ... 110 and their plain twins.

SGD, batch 128, lr 0.1, momentum 0.9, weight decay 1e-4, lr divided by 10 at 32k and 48k of 64k
iterations (the multistep schedule's default milestones for 64k steps). Test error is measured on
the official test batch after the last iteration, next to the paper's Table 6.

Two differences from the paper, stated in the results: the data loader does not augment (the paper
pads by 4 pixels, crops 32x32 at random and flips horizontally), and the paper warms ResNet-110 up
at lr 0.01 for about 400 iterations, which the multistep schedule here does not.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gradhealth.monitor.records import RunLog
from gradhealth.studies.base import Claim, final_loss, load_bundle, run_entry, spread, train
from gradhealth.train.config import TrainConfig

__all__ = ["PAPER_ERROR", "ITERATIONS", "DEPTHS", "recipe_config", "test_error", "run_recipe", "recipe_claims"]

# He et al. 2015, Table 6: CIFAR-10 test error (%), the best of their runs (110: 6.61 ± 0.16 over 5 runs)
PAPER_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
PAPER = "He, Zhang, Ren, Sun 2015, Deep Residual Learning for Image Recognition, Table 6"
ITERATIONS = 64_000
DEPTHS = (20, 32, 44, 56, 110)
# a training loss higher by more than this (nats) is degradation; test errors within this many
# percentage points count as "no worse"
LOSS_MARGIN = 0.1
ERROR_MARGIN = 0.5
DIFFERENCES = ("no data augmentation here (the paper pads by 4, crops 32x32 at random and flips), so expect a "
               "higher error", "no lr 0.01 warm-up for ResNet-110 (the paper uses one for ~400 iterations)",
               "trained on all 50k training images (the paper's Table 6 nets too; its 45k/5k split is for tuning)")


def recipe_config(model: str, data: str, *, steps: int = ITERATIONS, seed: int = 0) -> TrainConfig:
    """The paper's training settings for one net; ``steps`` shorter than 64k keeps the milestones at 50%/75%."""
    return TrainConfig(model=model, data=data, steps=steps, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                       weight_decay=1e-4, schedule="multistep", seed=seed, monitor_every=max(1, steps // 1000),
                       detail_every=max(1, steps // 100), activations=False)


def test_error(model: Any, data: str) -> float:
    """Percentage of the data set's validation (for CIFAR-10: official test) images the model gets wrong."""
    import torch
    from torch.utils.data import DataLoader

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    wrong = total = 0
    with torch.no_grad():
        for x, y in DataLoader(load_bundle(data, 0).val, batch_size=1000):
            wrong += int((model(x.to(device)).argmax(1) != y.to(device)).sum())
            total += len(y)
    model.train(was_training)
    return 100.0 * wrong / max(total, 1)


def _train_and_test(model: str, data: str, steps: int, seeds: Sequence[int], runs: list) -> dict[str, Any]:
    errors, losses = [], []
    for seed in seeds:
        result = train(recipe_config(model, data, steps=steps, seed=seed))
        errors.append(test_error(result.model, data))
        losses.append(final_loss(result.summary))
        runs.append(run_entry(f"{model} seed {seed}", RunLog(result.meta, result.records), result.summary,
                              seed=seed, test_error=errors[-1]))
    return {"error": spread(errors), "train_loss": spread([v if math.isfinite(v) else None for v in losses])}


def run_recipe(data: str, *, depths: Sequence[int] = DEPTHS, seeds: Sequence[int] = (0,), steps: int = ITERATIONS,
               preact: bool = False) -> dict[str, Any]:
    """Train resnet{d} and plain{d} for every depth and seed (and, with ``preact``, the pre-activation
    ResNet at the largest depth); test error and final training loss per net."""
    rows, runs = [], []
    for depth in depths:
        row: dict[str, Any] = {"depth": depth, "paper_resnet_error": PAPER_ERROR.get(depth)}
        for family in ("resnet", "plain"):
            measured = _train_and_test(f"{family}{depth}", data, steps, seeds, runs)
            row[f"{family}_error"], row[f"{family}_train_loss"] = measured["error"], measured["train_loss"]
        rows.append(row)
    out = {"paper": PAPER, "iterations": steps, "differences": list(DIFFERENCES), "rows": rows, "runs": runs,
           "config": recipe_config("resnet20", data, steps=steps).to_json()}
    if preact:
        out["preact"] = {"depth": max(depths),
                         **_train_and_test(f"cifar_resnet:depth={max(depths)},block=preact", data, steps, seeds, runs)}
    return out


def recipe_claims(table: dict[str, Any]) -> list[Claim]:
    """The paper's findings, checked against the recipe's measured numbers."""
    rows = sorted(table["rows"], key=lambda r: r["depth"])
    lo, hi = rows[0], rows[-1]
    value = lambda s: math.inf if s["mean"] is None else s["mean"]  # noqa: E731
    claims = [
        Claim(f"Degradation on CIFAR-10: plain-{hi['depth']} ends with a higher training loss than "
              f"plain-{lo['depth']}.",
              value(hi["plain_train_loss"]) > value(lo["plain_train_loss"]) + LOSS_MARGIN,
              {"plain_train_loss": {r["depth"]: r["plain_train_loss"]["mean"] for r in rows}, "margin": LOSS_MARGIN}),
        Claim(f"ResNet-{hi['depth']} reaches a test error no worse than ResNet-{lo['depth']} "
              f"(within {ERROR_MARGIN} points), as in the paper's Table 6.",
              value(hi["resnet_error"]) <= value(lo["resnet_error"]) + ERROR_MARGIN,
              {"resnet_error": {r["depth"]: r["resnet_error"]["mean"] for r in rows},
               "paper_error": {r["depth"]: r["paper_resnet_error"] for r in rows}, "margin": ERROR_MARGIN}),
    ]
    if "preact" in table:
        v2 = table["preact"]
        claims.append(Claim(f"The pre-activation ResNet-{v2['depth']} (v2) reaches a test error no worse than v1 "
                            f"(within {ERROR_MARGIN} points).",
                            value(v2["error"]) <= value(hi["resnet_error"]) + ERROR_MARGIN,
                            {"v1_error": hi["resnet_error"]["mean"], "v2_error": v2["error"]["mean"]}))
    return claims
