"""Remedy trials: fork short runs that differ from the baseline by one remedy, and rank them.

Every trial starts from the same seed, so it sees the same data order and, wherever the
architecture is unchanged, the same initial weights; each runs on one thread, so its numbers do
not depend on how many trials run side by side.

Health score (higher is healthier), declared so a ranking can be checked by hand::

    score = ln(L_chance / L_K)  -  min(|log10 r|, 10) / 10

``L_K`` is the mean training loss over the last tenth of the K steps, ``L_chance = ln(classes)``
the loss of a net that learned nothing, and ``r`` the first/last weight-layer gradient ratio at
the last recorded step (1 in a net whose gradient reaches every layer equally; a ratio of 1e-10
costs as much as the loss falling by a factor e). A run that produced NaN/Inf ranks below every
finite run.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gradhealth.errors import GradHealthError
from gradhealth.layers.init import parse_init
from gradhealth.models import model_options, resolve_spec
from gradhealth.monitor.records import RunLog
from gradhealth.train.config import TrainConfig
from gradhealth.vocabulary import is_file_spec, split_top_level

__all__ = ["Trial", "TrialResult", "plan_trials", "run_trials", "health_score", "BALANCE_CAP"]

# |log10 r| beyond 10 decades is "gradient gone" either way: cap the penalty there
BALANCE_CAP = 10.0


@dataclass(frozen=True)
class Trial:
    """One remedy applied to the baseline: a changed model spec and/or changed training options."""

    key: str
    title: str
    spec_changes: dict[str, Any] = field(default_factory=dict)
    config_changes: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.spec_changes.items()]
        parts += [f"--{k.replace('_', '-')} {v}" for k, v in self.config_changes.items()]
        return ", ".join(parts) or "no change"


@dataclass
class TrialResult:
    trial: Trial
    final_loss: float | None
    first_loss: float | None
    first_last_ratio: float | None
    nonfinite: bool
    score: float
    steps: int
    seconds: float
    loss_vs_baseline: float | None = None
    error: str | None = None
    # the recorded training loss, step by step (for the report's chart of every trial)
    loss_steps: list[int] = dataclasses.field(default_factory=list)
    losses: list[float | None] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["trial"]["describe"] = self.trial.describe()
        out["losses"] = [None if v is None or not math.isfinite(v) else v for v in self.losses]
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


BASELINE = Trial("baseline", "No change (the baseline)")


def _spec_trials(options: dict[str, Any]) -> list[Trial]:
    """Architecture remedies a built-in spec can take, leaving out what it already has."""
    activation, norm = options.get("activation"), options.get("norm")
    trials = []
    # a transformer's norm option is the LayerNorm's place (pre, post, none), not a kind of norm
    placement = "branch_scale" in options
    if placement and norm != "pre":
        # Xiong et al. 2020: LayerNorm before each sublayer keeps the skip path clear, so a deep
        # stack trains without warm-up
        trials.append(Trial("pre_ln", "Pre-LN: LayerNorm before each sublayer", {"norm": "pre"}))
    if "activation" in options and activation not in ("relu", "leaky_relu", "prelu", "gelu", "silu"):
        trials.append(Trial("relu", "ReLU with He init", {"activation": "relu", "init": "he"}))
        trials.append(Trial("leaky_relu", "LeakyReLU with He init", {"activation": "leaky_relu", "init": "he"}))
    if "norm" in options and norm in ("none", None) and not placement:
        trials.append(Trial("batchnorm", "BatchNorm", {"norm": "batch"}))
        trials.append(Trial("layernorm", "LayerNorm", {"norm": "layer"}))
    if "residual" in options and not options.get("residual"):
        trials.append(Trial("residual", "Skip connections (residual)", {"residual": True}))
    if "block" in options and not str(options.get("block") or "").startswith("preact"):
        # the skip path clear of the activation: what a sigmoid or tanh net needs from a skip
        trials.append(Trial("preact", "Pre-activation skip connections", {"residual": True, "block": "preact"}))
    return trials


def _training_trials(config: TrainConfig, current_init: str | None, in_spec: bool) -> list[Trial]:
    """Remedies any model can take: they change the init or the training, not the architecture.

    ``in_spec``: the model is a spec string, whose ``init=`` the init trials rewrite (a spec that
    names an init and a ``--init`` besides is an error). AGC needs to know the classifier head; a
    model without ``get_classifier()`` reports that as the trial's error instead of a result.
    """
    trials = [
        Trial(key, title, spec_changes={"init": init}) if in_spec else Trial(key, title, config_changes={"init": init})
        for key, title, init in (("he_init", "Re-initialize with He init", "he"),
                                 ("xavier_init", "Re-initialize with Xavier init", "xavier"))
        if current_init is None or parse_init(current_init)[0] != parse_init(init)[0]
    ]
    trials += [
        Trial("lower_lr", f"Lower learning rate ({config.lr / 10:g})", config_changes={"lr": config.lr / 10}),
        Trial("warmup", "Warm-up + cosine schedule", config_changes={"schedule": "warmup_cosine"}),
        Trial("l2", "L2 weight decay 5e-4", config_changes={"weight_decay": 5e-4}),
    ]
    if config.clip != "norm":
        trials.append(Trial("clip_norm", "Clip the gradient norm at 1", config_changes={"clip": "norm", "clip_value": 1.0}))
    if config.clip != "agc":
        trials.append(Trial("clip_agc", "Adaptive gradient clipping (0.01)", config_changes={"clip": "agc", "clip_value": 0.01}))
    return trials


def plan_trials(config: TrainConfig) -> list[Trial]:
    """The baseline plus every remedy that applies to this model and run."""
    trials = [BASELINE]
    init = config.init
    in_spec = not is_file_spec(config.model)
    if in_spec:
        name, kwargs = resolve_spec(config.model)
        options = {k: p.default for k, p in model_options(name).items()}
        options.update(kwargs)
        trials += _spec_trials(options)
        init = init or kwargs.get("init")
    return trials + _training_trials(config, init, in_spec)


def apply_trial(config: TrainConfig, trial: Trial) -> TrainConfig:
    """The baseline config with the trial's changes; spec changes are rewritten into the spec."""
    model = config.model
    if trial.spec_changes:
        name, _, rest = model.partition(":")
        items = [i for i in split_top_level(rest) if i.partition("=")[0].strip() not in trial.spec_changes]
        items += [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in trial.spec_changes.items()]
        model = f"{name}:{','.join(items)}"
        if "init" in trial.spec_changes:  # the spec's init now decides, not a --init of the baseline
            return dataclasses.replace(config, model=model, init=None, out=None, resume=None, **trial.config_changes)
    return dataclasses.replace(config, model=model, out=None, resume=None, **trial.config_changes)


def health_score(final_loss: float | None, ratio: float | None, classes: int, nonfinite: bool) -> float:
    """The declared score of the module docstring; -inf for a run that produced NaN/Inf."""
    if nonfinite or final_loss is None or not math.isfinite(final_loss) or final_loss <= 0:
        return -math.inf
    balance = BALANCE_CAP if ratio is None or ratio <= 0 or not math.isfinite(ratio) else min(abs(math.log10(ratio)), BALANCE_CAP)
    return math.log(math.log(classes) / final_loss) - balance / BALANCE_CAP


def _first_last_ratio(log: RunLog) -> float | None:
    weights = log.meta.names("weight")
    for record in reversed(log.records):
        norms = [record.layers[n].grad_norm for n in weights if n in record.layers]
        norms = [n for n in norms if n is not None]
        if len(norms) >= 2 and norms[-1] and math.isfinite(norms[-1]) and math.isfinite(norms[0]):
            return norms[0] / norms[-1]
    return None


def _run_one(config: TrainConfig, trial: Trial) -> TrialResult:
    """Train one trial on one thread and measure it (runs in a worker process or in-process)."""
    from gradhealth.train.loop import fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        result = fit(apply_trial(config, trial), progress=False)
    except GradHealthError as exc:
        return TrialResult(trial, None, None, None, False, -math.inf, 0, time.perf_counter() - started, error=str(exc))
    finally:
        torch.set_num_threads(threads)
    log = RunLog(result.meta, result.records)
    losses = [r.loss for r in result.records if r.loss is not None]
    nonfinite = result.stopped == "nonfinite" or any(not math.isfinite(v) for v in losses)
    ratio = _first_last_ratio(log)
    final = result.summary.get("final_loss")
    classes = int(result.summary.get("num_classes") or 10)
    curve = [(r.step, r.loss) for r in result.records if r.loss is not None]
    return TrialResult(trial, final, losses[0] if losses else None, ratio, nonfinite,
                       health_score(final, ratio, classes, nonfinite), result.summary["steps"],
                       time.perf_counter() - started, loss_steps=[s for s, _ in curve], losses=[v for _, v in curve])


def _user_output_to_stderr() -> None:
    # a worker's results travel back pickled; what a model file prints there must not reach the
    # caller's stdout (``gradhealth fix --json`` prints JSON alone)
    sys.stdout = sys.stderr


def run_trials(config: TrainConfig, trials: Sequence[Trial] | None = None, *, workers: int | None = None) -> list[TrialResult]:
    """Run the trials (the baseline included), best first; ``workers`` processes side by side."""
    trials = list(trials) if trials is not None else plan_trials(config)
    if BASELINE not in trials:
        trials.insert(0, BASELINE)
    config = dataclasses.replace(config, out=None, resume=None)
    workers = max(1, min(workers or (os.cpu_count() or 1), len(trials)))
    if workers == 1:
        results = [_run_one(config, t) for t in trials]
    else:
        # spawn: a fresh interpreter per worker, never a fork of a process that holds torch threads
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                    initializer=_user_output_to_stderr) as pool:
            results = list(pool.map(_run_one, [config] * len(trials), trials))
    baseline = next(r for r in results if r.trial == BASELINE)
    for r in results:
        if r.final_loss is not None and baseline.final_loss and math.isfinite(baseline.final_loss):
            r.loss_vs_baseline = r.final_loss / baseline.final_loss
    # stable sort: equal scores keep the planned order
    return sorted(results, key=lambda r: -r.score if math.isfinite(r.score) else math.inf)
