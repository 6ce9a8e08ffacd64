"""A synthetic run log and diagnosis for the report tests: known numbers, no training, no torch."""
from __future__ import annotations

import math

from gradhealth.diagnose.findings import Diagnosis, Finding, Remedy
from gradhealth.monitor.records import ActivationStats, LayerInfo, LayerStats, RunLog, RunMeta, StepRecord

EVIL = "<script>alert(1)</script>"


def make_log(depth: int = 12, steps: int = 30, *, evil: bool = False, decay: float = 0.5,
             nonfinite_step: int | None = 17) -> RunLog:
    """An MLP-like run whose gradient norm shrinks by ``decay`` per layer toward the input.

    Layer ``i``'s gradient norm at every step is ``0.1 * decay ** (depth - 1 - i)`` (times a small
    wobble); at ``nonfinite_step`` the step is skipped, the loss is NaN and layer 3's gradient is Inf.
    Layer 1 never gets a gradient (zero), which figures must show as a gap.
    """
    names = [f"blocks.{i}.fc" for i in range(depth)]
    if evil:
        names[2] = EVIL
    layers: list[LayerInfo] = []
    for i, name in enumerate(names):
        layers.append(LayerInfo(name=name, type="Linear", role="weight", params=64 * 64))
        layers.append(LayerInfo(name=f"blocks.{i}.act", type="Sigmoid", role="activation", activation="sigmoid"))
    meta = RunMeta(layers=layers, model="mlp:depth=12,activation=sigmoid", data="synthetic",
                   config={"lr": 0.1, "optimizer": "sgd", "note": EVIL if evil else "plain"})
    records = []
    for step in range(steps):
        wobble = 1 + 0.1 * math.sin(step)
        stats = {}
        for i, name in enumerate(names):
            grad = 0.1 * decay ** (depth - 1 - i) * wobble
            if i == 1:
                grad = 0.0
            if step == nonfinite_step and i == 3:
                grad = math.inf
            stats[name] = LayerStats(grad_norm=grad, weight_norm=8.0, update_ratio=0.1 * grad / 8.0 + 1e-6)
        acts = {f"blocks.{i}.act": ActivationStats(mean=0.5, std=0.2, saturation=0.05 + 0.03 * i + 0.001 * step,
                                                   dead_fraction=0.0)
                for i in range(depth)}
        metrics = {"val_loss": 2.4 * math.exp(-step / 25) + 0.2} if step % 5 == 0 else {}
        loss = math.nan if step == nonfinite_step else 2.3 * math.exp(-step / 20) + 0.1
        records.append(StepRecord(step=step, loss=loss, lr=0.1, skipped=step == nonfinite_step,
                                  layers=stats, activations=acts, metrics=metrics))
    return RunLog(meta, records)


def make_diagnosis(*, evil: bool = False) -> Diagnosis:
    early = EVIL if evil else "blocks.0.fc"
    return Diagnosis(
        findings=[
            Finding(kind="vanishing_gradient", severity="error", title="Gradients vanish toward the input",
                    explanation="The gradient norm halves at every layer, so the first layer gets 2^-11 of the last.",
                    layers=[early, "blocks.1.fc", "blocks.2.fc", "blocks.3.fc"], step=0,
                    evidence={"decay_per_layer": 0.5, "first_last_ratio": 0.00048828125},
                    remedies=[
                        Remedy(key="residual", title="Add residual connections",
                               why="An identity path carries the gradient past each block.",
                               how="mlp:depth=12,activation=sigmoid,residual=true"),
                        Remedy(key="relu", title="Use a non-saturating activation",
                               why="Sigmoid's derivative is at most 0.25.", how="activation=relu"),
                    ]),
            Finding(kind="saturation", severity="warning", title="Sigmoid units saturate",
                    explanation="A third of the last layer's sigmoid outputs sit where the derivative is tiny.",
                    layers=["blocks.11.act"], step=29, evidence={"saturation": 0.36},
                    remedies=[Remedy(key="init", title="Use Xavier initialisation",
                                     why="It keeps pre-activations in the sigmoid's linear range.",
                                     how="init=xavier")]),
        ],
        model="mlp:depth=12,activation=sigmoid", data="synthetic", steps=30,
    )
