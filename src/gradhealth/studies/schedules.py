"""Learning-rate schedules and momentum: how the size of each step changes over a run.

One tanh MLP (Xavier init) trained with every schedule of :mod:`gradhealth.remedies.schedules` at a
high learning rate, where the first steps decide whether the run settles or thrashes, and with
SGD with and without momentum at a low one, where plain SGD crawls. The lr curves come from the
records, so they show what the optimizer really used.
"""
from __future__ import annotations

import math
from typing import Any

from gradhealth.report.charts import line_chart
from gradhealth.report.html import Section, Table
from gradhealth.studies.base import (Claim, StudyResult, final_loss, pick_size, resolve_seeds, run_config, run_entry,
                                     show_spread, spread)
from gradhealth.studies.charts import loss_chart

NAME = "schedules"
TITLE = "Learning-rate schedules and momentum"
PRESETS: dict[str, dict[str, Any]] = {"tiny": {"steps": 60}, "quick": {"steps": 200}, "full": {"steps": 600}}
MODEL = "mlp:depth=6,width=64,activation=tanh"
SCHEDULES = ("constant", "step", "exponential", "cosine", "warmup_cosine")
HIGH_LR, LOW_LR = 0.5, 0.01
WARMUP_FRACTION = 0.2
# a loss above this multiple of its starting value during the warm-up window is a spike
SPIKE = 1.25
MARGIN = 0.1


def _early_peak(log, window: int) -> float:
    """Highest loss over steps 1..window relative to the loss at step 0 (inf if one was NaN/Inf)."""
    losses = [r.loss for r in log.records]
    early = [math.inf if v is None or not math.isfinite(v) else v for v in losses[1:window + 1]]
    return max(early, default=math.nan) / losses[0]


def run(size: str = "quick", *, data: str | None = None, seeds: int | list[int] | None = None) -> StudyResult:
    p = pick_size(PRESETS, size)
    seeds, data = resolve_seeds(size, seeds), data or "digits"
    warmup = max(1, round(WARMUP_FRACTION * p["steps"]))
    runs: list[dict] = []

    def measure(label: str, **options: Any) -> dict[str, Any]:
        pairs = [run_config(model=MODEL, init="xavier", data=data, steps=p["steps"], seed=s, **options) for s in seeds]
        runs.extend(run_entry(label, log, s, seed=seed) for (log, s), seed in zip(pairs, seeds))
        losses = [final_loss(s) for _, s in pairs]
        return {"label": label, "options": options, "log": pairs[0][0], "losses": losses, "final_loss": spread(losses),
                "peaks": [_early_peak(log, warmup) for log, _ in pairs]}

    sched = {s: measure(s, lr=HIGH_LR, schedule=s, warmup_steps=warmup if s == "warmup_cosine" else None)
             for s in SCHEDULES}
    momentum = {m: measure(f"momentum {m:g}", lr=LOW_LR, momentum=m) for m in (0.0, 0.9)}
    no_warmup = [v for s in ("constant", "cosine") for v in sched[s]["peaks"]]
    mean = lambda c: sum(c["losses"]) / len(c["losses"])  # noqa: E731
    claims = [
        Claim(f"At lr {HIGH_LR} the loss spikes early without warm-up: in the first {warmup} steps the constant and "
              f"cosine runs rise above {SPIKE}x their starting loss, the warm-up run stays below it.",
              min(no_warmup) > SPIKE and max(sched["warmup_cosine"]["peaks"]) < SPIKE,
              {"early_peak_over_start": {s: sched[s]["peaks"] for s in SCHEDULES}, "spike": SPIKE,
               "warmup_steps": warmup}),
        Claim(f"With warm-up the run ends at a lower loss than at the constant lr {HIGH_LR}.",
              mean(sched["warmup_cosine"]) < mean(sched["constant"]) - MARGIN,
              {"warmup_cosine": sched["warmup_cosine"]["losses"], "constant": sched["constant"]["losses"]}),
        Claim(f"At lr {LOW_LR}, SGD with momentum 0.9 reaches a lower loss than plain SGD in the same steps "
              f"(by more than {MARGIN} nats).", mean(momentum[0.9]) < mean(momentum[0.0]) - MARGIN,
              {"momentum_0.9": momentum[0.9]["losses"], "momentum_0": momentum[0.0]["losses"]}),
    ]
    strip = lambda cells: [{k: v for k, v in c.items() if k != "log"} for c in cells.values()]  # noqa: E731
    results = {"data": data, "size": size, "seeds": seeds, "model": MODEL, "warmup_steps": warmup,
               "schedules": strip(sched), "momentum": strip(momentum), "runs": runs}
    sections = _sections(sched, momentum, p, warmup)
    return StudyResult(NAME, TITLE, claims, sections, results, key_figure=sections[0].figures[0])


def _sections(sched: dict, momentum: dict, p: dict, warmup: int) -> list[Section]:
    curves = loss_chart({s: c["log"] for s, c in sched.items()}, logy=True,
                        title=f"Training loss by schedule, lr {HIGH_LR}",
                        caption=f"The same net and data order; only the schedule differs. Warm-up ramps the lr up "
                                f"over the first {warmup} steps, so the first, largest gradients meet a small lr.")
    lrs = line_chart({s: ([r.step for r in c["log"].records], [r.lr for r in c["log"].records])
                      for s, c in sched.items()},
                     title="Learning rate per step (from the records)", xlabel="optimizer step", ylabel="learning rate",
                     markers=False, caption="step: x0.1 every third of the run; exponential: to 1% at the end; cosine: "
                                            "to 0; warmup_cosine: a linear ramp, then cosine.")
    mom = loss_chart({c["label"]: c["log"] for c in momentum.values()},
                     title=f"SGD with and without momentum, lr {LOW_LR}",
                     caption="Momentum 0.9 averages about the last 10 gradients, so each step moves about 10x "
                             "further along directions the gradients agree on.")
    rows = [[c["label"], c["options"].get("lr"), show_spread(c["final_loss"]),
             ", ".join(f"{v:.3g}" for v in c["peaks"])] for c in [*sched.values(), *momentum.values()]]
    table = Table(["run", "lr", "final loss", f"peak loss in steps 1-{warmup} / start"], rows,
                  f"{MODEL}, Xavier init, SGD (momentum 0.9 unless stated), {p['steps']} steps.")
    intro = ("A schedule sets the step size over time: large early to make progress, small late to settle. Warm-up "
             "starts small because the first gradients of a fresh net are the largest and least reliable.")
    return [Section("Schedules", intro, [curves, lrs], [table]), Section("Momentum", "", [mom])]
