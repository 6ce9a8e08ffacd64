"""Records -> findings: one pure function per finding kind, and ``diagnose_log`` that runs them all.

Every rule reads a ``RunLog`` (plain records, no torch) and returns a ``Finding`` or None. Layer
order and roles come from ``meta.layers`` (forward order, input to output). A log without them
(an old or hand-made one) falls back to the order in which layer names first appear in the
records, every layer taken as a weight layer unless its name reads like a normalization
(``bn1``, ``ln_f``, ``norm``...).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import fmean, median
from typing import Any

import numpy as np

from gradhealth.diagnose.catalogue import ONE_SIDED_ACTIVATIONS, RELU_FAMILY, SATURATING_ACTIVATIONS, remedies_for
from gradhealth.diagnose.coverage import (
    coverage,
    frozen_layers,
    not_run_entry,
    recurrent_without_time,
    unmeasured_activations_and_sequences,
)
from gradhealth.diagnose.findings import SEVERITIES, Diagnosis, Finding
from gradhealth.diagnose.structure import RECURRENT_TYPES, block_of, norm_placement, recurrent_types, tied_layers
from gradhealth.diagnose.through_time import VANISHED_FRACTION, time_profiles
from gradhealth.errors import ConfigError
from gradhealth.monitor.records import RunLog, StepRecord
from gradhealth.vocabulary import TRUE_WORDS, canonical_activation, split_spec

__all__ = [
    "diagnose_log", "run_context", "data_name", "layer_roles", "weight_layers", "gradient_profile",
    "find_vanishing_gradient", "find_exploding_gradient", "find_nonfinite", "find_saturation",
    "find_dead_units", "find_lr_too_high", "find_lr_too_low", "find_degradation",
    "find_vanishing_through_time", "find_exploding_through_time", "profile_gap", "rules_not_run",
]

# Vanishing/exploding through depth is a property of the network as initialized, so the profile
# uses the first records; the median of a few ignores one odd batch and the all-zero first step
# of nets whose branches or head start at zero (Fixup, zero_init_last).
EARLY_RECORDS = 5
# fewer weight layers than this make no "geometric" trend through depth
MIN_WEIGHT_LAYERS = 3
# Healthy nets (residual + He init + BatchNorm) keep the first/last gradient ratio within 0.1..10
# (0.37..0.67 measured on a 20-layer MLP on digits); a further decade of margin on each side.
VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
# four decades: the first layers learn 10,000x slower (faster) than the last: an error
SEVERE_RATIO = 1e4
# The end-to-end ratio alone cannot fire on a shallow net however fast each block grows (4 blocks at
# 3x each make 27x), so the rate per block is judged too: the chain rule multiplies the gradient by
# one factor per block, and a variance-preserving init (Glorot & Bengio 2010, He et al. 2015) makes
# that factor ~1 in expectation, as does a residual block x + f(x) whose branch is small beside the
# skip path (the zoo's 10 healthy non-recurrent nets: 0.95..1.26 per block). A factor of 2 doubles
# the gradient at each block: a weight gain twice the variance-preserving one, or a branch whose
# Jacobian is as large as the skip path's identity; 1/2 is its mirror. The rate must also show end
# to end, outside the healthy 0.1..10 band above: a deep net drifting mildly per block stays with
# the 1e2 rule.
BLOCK_GROWTH = 2.0
MATERIAL_RATIO = 10.0
# global norm growth: an order of magnitude from the first third of the run to the last, and
# rising through the middle third, so that one spike does not count as a trend
GRAD_GROWTH = 10.0
MIN_TREND_RECORDS = 6
# At the start a healthy layer's gradient is a small part of its weights (||g|| / ||w|| of 1e-4..1
# measured on He-initialized nets on digits); a thousand times its weights comes from the init
# scale, not from training: one SGD step at lr 1e-3 would already replace every weight.
EARLY_GRAD_WEIGHT_RATIO = 1e3
# SGD noise moves the average loss by tens of percent; ending at 3x the starting loss is divergence
LOSS_DIVERGENCE = 3.0
# the tail of the run whose mean loss is "the final loss"
FINAL_FRACTION = 0.1
# a saturated unit passes < 1 % of its largest derivative; a third of a layer there is a third
# of the layer not learning (xavier-initialized sigmoid/tanh MLPs on digits measure 0..1 %)
SATURATION_HIGH = 0.3
SATURATION_SEVERE = 0.8
# GELU/SiLU-type activations are flat only for negative inputs: zero-mean pre-activations of any
# scale put at most half of the elements there, so beyond half they were pushed off (see find_saturation)
ONE_SIDED_OFF_HIGH = 0.5
# ReLU family: units off for a whole batch; healthy He-initialized nets measure ~0
DEAD_HIGH = 0.4
DEAD_SEVERE = 0.9
# below this batch size a live unit is off for the whole batch by chance (0.5 ** batch)
MIN_DEAD_BATCH = 8
# Karpathy's rule of thumb (CS231n, "Neural Networks Part 3"): a step should change the weights
# by about 1e-3 of their norm. Healthy nets measure 1e-4..1e-2; two decades from 1e-3 either way
# is far outside that band.
LR_HIGH_RATIO = 1e-1
LR_LOW_RATIO = 1e-5
# The lower edge of that healthy band: a layer nearest the output that updates at least this fast
# learns at a normal rate, so the tiny updates of the others come from their gradients (vanishing),
# not from the learning rate. One slower than this is slow too, whatever the depth profile says.
HEALTHY_UPDATE_MIN = 1e-4
# a deeper plain net must end this much (relative) above a shallower one: more than seed noise
DEGRADATION_MARGIN = 0.1
# mixed precision skips steps whose scaled gradients overflowed while the loss scaler calibrates
SKIPPED_OK_FRACTION = 0.05
# One step that changes a weight matrix by as much as the matrix itself has replaced it: whatever the
# median says, that step threw the weights away. Adam's first steps do this at a high rate (its
# second-moment estimate comes from a batch or two); in two layers or more it is the rate, not a layer.
LR_STEP_RATIO = 1.0
LR_STEP_LAYERS = 2
# Through time: the first input step getting 1e3x the last step's gradient is the mirror of
# VANISHED_FRACTION (three decades), a growth no training signal survives without clipping.
TIME_EXPLODING_RATIO = 1e3
# lr rising over the first records by this much counts as a warm-up (a schedule, not noise)
WARMUP_RISE = 2.0
# registered models whose own __init__ initializes with He (kaiming_normal, fan_out) like torchvision
_HE_INITIALIZED_MODELS = ("resnet", "preact_resnet", "plain", "cifar_resnet", "imagenet_resnet")

_NORM_NAME = re.compile(r"(?:^|[._])(?:bn|ln|gn)\d*(?:$|[._])|norm", re.IGNORECASE)


# ---- reading a log -------------------------------------------------------------------------------

def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _num(value: float) -> float:
    """Four significant digits: evidence for people, still a plain JSON number."""
    return float(f"{value:.4g}")


def data_name(log: RunLog) -> str | None:
    """The data set the run trained on: the meta line's own field, else the run's config (the
    training loop logs it there)."""
    data = log.meta.data or (log.meta.config or {}).get("data")
    return data if isinstance(data, str) else None


def layer_roles(log: RunLog) -> dict[str, str]:
    """Every module name, in forward order, with its role (weight, norm, activation, other)."""
    if log.meta.layers:
        return {layer.name: layer.role for layer in log.meta.layers}
    # fallback (no meta): the order names first appear in the records; names like bn1/norm are norms
    names = dict.fromkeys(name for record in log.records for name in record.layers)
    return {name: "norm" if _NORM_NAME.search(name) else "weight" for name in names}


def weight_layers(log: RunLog) -> list[str]:
    """Weight layers (Linear/Conv) that have measurements, input to output."""
    measured = {name for record in log.records for name in record.layers}
    return [name for name, role in layer_roles(log).items() if role == "weight" and name in measured]


def _ordered(names: Sequence[str], log: RunLog) -> list[str]:
    order = {name: i for i, name in enumerate(layer_roles(log))}
    return sorted(names, key=lambda name: order.get(name, len(order)))


def _as_bool(value: Any) -> bool | None:
    return None if value is None else (value if isinstance(value, bool) else str(value).lower() in TRUE_WORDS)


def run_context(log: RunLog, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the run was (activation, init, norm, residual, depth...): the model spec's options, then
    ``meta.config``, then the activations in ``meta.layers``, then ``context``, which wins."""
    config = dict(log.meta.config)
    spec = str(log.meta.model or config.get("model") or "")
    try:
        name, options = split_spec(spec)
    except ConfigError:  # a file.py:factory spec, or one the log's writer mangled: no options to read
        name, options = spec.partition(":")[0], {}
    facts: dict[str, Any] = dict(options)
    facts.update({k: v for k, v in config.items() if k != "model" and v is not None})
    acts = [layer.activation for layer in log.meta.layers if layer.role == "activation" and layer.activation]
    if acts:
        facts["activations"] = sorted(set(acts))
        facts["activation"] = Counter(acts).most_common(1)[0][0]
    norm_types = " ".join(layer.type for layer in log.meta.layers if layer.role == "norm")
    kinds = (("batch", "BatchNorm"), ("layer", "LayerNorm"), ("rms", "RMSNorm"), ("group", "GroupNorm"))
    facts.setdefault("norm", next((n for n, t in kinds if t in norm_types), None))
    facts.setdefault("norm_placement", norm_placement(log))
    if name.startswith(_HE_INITIALIZED_MODELS) and not facts.get("init"):
        facts["init"] = "he"
    recurrent = recurrent_types(log)
    if recurrent:
        facts.setdefault("recurrent", recurrent)
    facts.setdefault("warmup", _warmup(log, config))
    facts.update(context or {})
    if context and "activation" in context and "activations" not in context:
        facts["activations"] = [context["activation"]]
    residual = _as_bool(facts.get("residual"))
    if residual is None and name.startswith(("resnet", "preact_resnet", "plain")):
        residual = not name.startswith("plain")
    checked = [b.residual for b in log.meta.blocks if b.residual is not None]
    if residual is None and checked:
        # the monitor read each block's autograd graph for a path around its weights
        residual = all(checked)
    if residual is None and facts.get("norm_placement") in ("pre", "post"):
        # pre- and post-LN name where the norm sits relative to a block's residual sum: a transformer block
        residual = True
    facts["residual"] = residual
    facts["zero_init_last"] = _as_bool(facts.get("zero_init_last"))
    try:
        facts["depth"] = int(facts["depth"])
    except (KeyError, TypeError, ValueError):
        facts["depth"] = len(weight_layers(log))
    facts.setdefault("model", spec or None)
    return facts


def _warmup(log: RunLog, config: dict[str, Any]) -> bool | None:
    """Whether the run warms its learning rate up: ``warmup_steps`` in the config, else the lr
    series rising over the first records; None when the records carry no lr to tell."""
    steps = config.get("warmup_steps")
    if isinstance(steps, (int, float)) and not isinstance(steps, bool):
        return steps > 0
    lrs = [r.lr for r in log.records if _finite(r.lr)]
    if len(lrs) < 2:
        return None
    head = lrs[: max(2, len(lrs) // 4)]
    return head[0] >= 0 and max(head) >= WARMUP_RISE * head[0] and head.index(max(head)) > 0


def _profile_units(log: RunLog) -> tuple[dict[str, list[str]], str, list[str], dict[str, list[str]]]:
    """The units of the depth profile: repeated blocks (their weight layers together) where the model
    has them, else the weight layers; the weight layers left out (outside the blocks) and the tied ones.

    A tied layer (an embedding that is also the output head) gets the gradient of both of its uses,
    so its norm belongs to neither end of the network: it is left out of the profile.
    """
    layers = weight_layers(log)
    tied = {n: t for n, t in tied_layers(log).items() if n in layers}
    blocks = block_of(log)
    if any(n in blocks for n in layers):
        units: dict[str, list[str]] = {}
        for name in layers:
            if name in blocks and name not in tied:
                units.setdefault(blocks[name], []).append(name)
        return units, "block", [n for n in layers if n not in blocks and n not in tied], tied
    return {n: [n] for n in layers if n not in tied}, "weight layer", [], tied


def _early_records(log: RunLog) -> list[StepRecord]:
    return [r for r in log.records
            if not r.skipped and any(_finite(s.grad_norm) for s in r.layers.values())][:EARLY_RECORDS]


def _unit_norms(units: dict[str, list[str]], records: Sequence[StepRecord]) -> dict[str, float]:
    """Each unit's gradient norm: per record sqrt of the sum of squares of its layers' norms (the norm
    of all its weights' gradients together), then the median over the records."""
    norms = {}
    for unit, members in units.items():
        values = []
        for r in records:
            parts = [r.layers[n].grad_norm for n in members if n in r.layers and _finite(r.layers[n].grad_norm)]
            if parts:
                values.append(math.sqrt(sum(g * g for g in parts)))
        if values:
            norms[unit] = float(median(values))
    return norms


def profile_gap(log: RunLog) -> str | None:
    """Why the depth profile cannot be taken (too few units with gradients), or None when it can."""
    units, kind, _, _ = _profile_units(log)
    found = len(_unit_norms(units, _early_records(log)))
    if found >= MIN_WEIGHT_LAYERS:
        return None
    plural = "blocks" if kind == "block" else "weight layers"
    frozen = _frozen_units(units, log)
    return (f"needs {MIN_WEIGHT_LAYERS} {plural} with gradients, found {found}"
            + (f" ({len(frozen)} more frozen)" if frozen else ""))


def _frozen_units(units: dict[str, list[str]], log: RunLog) -> list[str]:
    """Units whose weight layers are all frozen: out of the profile for that reason, said so."""
    frozen = frozen_layers(log)
    return [unit for unit, members in units.items() if members and all(n in frozen for n in members)]


def gradient_profile(log: RunLog) -> dict[str, Any] | None:
    """Each weight layer's gradient norm (median over the first ``EARLY_RECORDS`` records) and the
    geometric trend toward the input.

    ``decay_factor`` is 10**slope of a least-squares fit of log10(norm) against the number of weight
    layers from the output: what each layer toward the input multiplies the gradient by. Where the
    model has repeated blocks (a transformer's ``h.K``, a ResNet's ``layer1.K``) the profile is one
    point per block, its weight layers' norms taken together, placed at its count of weight layers
    from the output (so ``decay_factor`` stays per weight layer) and ``block_factor`` is per block;
    the layers outside the blocks (embeddings, stem, head) are left out and listed. None (frozen or
    unused layers) and non-finite values are left out, the frozen units listed as ``frozen``; zeros
    are left out of the fit and listed.
    """
    records = _early_records(log)
    units, unit, outside, tied = _profile_units(log)
    steps, norms = [r.step for r in records], _unit_norms(units, records)
    layers = list(norms)
    if len(layers) < MIN_WEIGHT_LAYERS:
        return None
    # weight layers from the output to each unit (a block of k layers spans k)
    sizes = [len(units[n]) for n in layers]
    position = {n: sum(sizes[i + 1:]) + (sizes[i] - 1) / 2 for i, n in enumerate(layers)}
    positive = [(position[n], len(layers) - 1 - i, norms[n]) for i, n in enumerate(layers) if norms[n] > 0]
    factor = block_factor = None
    if len(positive) >= 2:
        x, b, y = zip(*positive)
        factor = _num(10 ** float(np.polyfit(np.array(x, float), np.log10(y), 1)[0]))
        block_factor = _num(10 ** float(np.polyfit(np.array(b, float), np.log10(y), 1)[0]))
    first, last = norms[layers[0]], norms[layers[-1]]
    extra: dict[str, Any] = {}
    if unit == "block":
        extra = {"unit": "block", "block_factor": block_factor, "left_out": outside,
                 "layers_per_block": max(sizes)}
    if tied:
        extra["tied"] = tied
    frozen = _frozen_units(units, log)
    if frozen:
        extra["frozen"] = frozen
    return {
        "basis": f"median over the first {len(steps)} records (steps {steps[0]}..{steps[-1]})",
        **extra,
        "layers": layers,
        "grad_norms": [_num(norms[n]) for n in layers],
        "decay_factor": factor,
        "first_last_ratio": _num(first / last) if last > 0 else None,
        "first_layer": layers[0],
        "last_layer": layers[-1],
        "depth": len(layers),
        "zero_layers": [n for n in layers if norms[n] == 0],
        "step": steps[0],
    }


# ---- the rules -----------------------------------------------------------------------------------

def _finding(kind: str, severity: str, title: str, explanation: str, ctx: dict[str, Any], **kw: Any) -> Finding:
    return Finding(kind, severity, title, explanation, remedies=remedies_for(kind, ctx), **kw)


def _unit_factor(p: dict[str, Any]) -> float | None:
    """The profile's fitted factor per unit of depth: per block where the model has blocks (the skip
    path goes around a block's layers, so the chain rule compounds block by block), else per layer."""
    return p.get("block_factor") if p.get("unit") == "block" else p["decay_factor"]


def _compounding(p: dict[str, Any], log: RunLog, grows: bool) -> bool:
    """Whether the gradient grows (shrinks) toward the input by BLOCK_GROWTH (1/BLOCK_GROWTH) or more per
    unit, and by MATERIAL_RATIO (1/MATERIAL_RATIO) or more end to end. Not for recurrent models: their
    input and recurrent matrices are one layer whose gradient sums over the time steps, so its size
    beside the head's is no factor per layer of depth (the through-time rules judge those)."""
    factor, ratio = _unit_factor(p), p["first_last_ratio"]
    if factor is None or ratio is None or recurrent_types(log):
        return False
    if grows:
        return factor >= BLOCK_GROWTH and ratio >= MATERIAL_RATIO
    return factor <= 1 / BLOCK_GROWTH and ratio <= 1 / MATERIAL_RATIO


def find_vanishing_gradient(log: RunLog, context: dict[str, Any] | None = None) -> Finding | None:
    """Early gradient norms falling geometrically toward the input (past VANISHING_RATIO end to end, or
    by 1/BLOCK_GROWTH per block and past 1/MATERIAL_RATIO end to end), or exactly zero in early layers."""
    ctx, p = run_context(log, context), gradient_profile(log)
    if p is None:
        return None
    ratio, factor, zeros = p["first_last_ratio"], p["decay_factor"], p["zero_layers"]
    steep = ratio is not None and ratio < VANISHING_RATIO and factor is not None and factor < 1
    compounding = not steep and _compounding(p, log, grows=False)
    trend = steep or compounding
    if not trend and not (zeros and p["grad_norms"][-1] > 0):
        return None
    last = p["grad_norms"][-1]
    # the named layers: those past the threshold that fired, the end-to-end one or the material one
    under = 1 / MATERIAL_RATIO if compounding else VANISHING_RATIO
    weak = [n for n, g in zip(p["layers"], p["grad_norms"]) if g < under * last]
    severe = bool(zeros) or (ratio is not None and ratio < 1 / SEVERE_RATIO)
    blocks = p.get("unit") == "block"
    parts = [f"Over {p['depth']} {'blocks' if blocks else 'weight layers'} the gradient shrinks toward the input"]
    if factor is not None and factor < 1:
        each = f"block toward the input multiplies it by about {p['block_factor']:.2g}" if blocks else \
            f"layer toward the input multiplies it by about {factor:.2g}"
        parts[0] += f": each {each}"
    if ratio is not None:
        parts.append(f"the first {'block' if blocks else 'layer'} ({p['first_layer']}) gets {ratio:.2g} of the last "
                     "one's gradient")
    text = "; ".join(parts) + (
        ". Backpropagation multiplies the gradient by one factor per layer (the chain rule: the layer's "
        "weights times its activation's derivative); when those factors are below 1 their product falls "
        "geometrically with depth, so the early layers barely learn.")
    acts = set(ctx.get("activations") or [ctx.get("activation")])
    if "sigmoid" in acts:
        text += (" The sigmoid's derivative is at most 0.25 (sigma'(x) <= 0.25), so every sigmoid layer divides "
                 "the gradient by 4 or more.")
    if "tanh" in acts:
        text += " tanh' is at most 1 and falls toward 0 wherever the units saturate."
    if ctx.get("init"):
        text += f" The weights were initialized with init={ctx['init']}, which sets the scale of every factor."
    if zeros:
        text += f" {len(zeros)} weight layer(s) got an exactly zero gradient: no learning signal reaches them."
    text += " Their tiny updates follow from this, not from the learning rate."
    return _finding("vanishing_gradient", "error" if severe else "warning",
                    f"Vanishing gradient: early {'blocks' if blocks else 'layers'} get {ratio:.1e} of the last "
                    f"{'block' if blocks else 'layer'}'s gradient"
                    if ratio else f"Vanishing gradient: early {'blocks' if blocks else 'layers'} get no gradient",
                    text, ctx, layers=weak, step=p["step"], evidence={k: v for k, v in p.items() if k != "step"})


def _rising_thirds(values: Sequence[float]) -> list[float] | None:
    """Medians of the three thirds of ``values`` when each is above the one before and the rise >= GRAD_GROWTH."""
    if len(values) < MIN_TREND_RECORDS:
        return None
    n = len(values)
    thirds = [float(median(values[i * n // 3:(i + 1) * n // 3])) for i in range(3)]
    rising = 0 < thirds[0] < thirds[1] < thirds[2] and thirds[2] >= GRAD_GROWTH * thirds[0]
    return [_num(t) for t in thirds] if rising else None


def _loss_divergence(records: Sequence[StepRecord]) -> dict[str, Any] | None:
    """Final loss >= LOSS_DIVERGENCE x the first, or a loss that grew that much and then went non-finite."""
    losses = [(r.step, r.loss) for r in records if r.loss is not None]
    finite = [(s, v) for s, v in losses if math.isfinite(v)]
    if not finite or finite[0][1] <= 0:
        return None
    start = finite[0][1]
    above = next((s for s, v in finite if v >= LOSS_DIVERGENCE * start), None)
    tail = [v for _, v in losses[-max(1, round(len(losses) * FINAL_FRACTION)):] if math.isfinite(v)]
    if tail and fmean(tail) >= LOSS_DIVERGENCE * start:
        return {"initial_loss": _num(start), "final_loss": _num(fmean(tail)), "step": above}
    broken = next((s for s, v in losses if not math.isfinite(v)), None)
    if broken is not None and above is not None and above < broken:
        peak = max(v for _, v in finite)
        return {"initial_loss": _num(start), "peak_loss": _num(peak), "nonfinite_step": broken, "step": above}
    return None


def _early_grad_weight_ratio(log: RunLog) -> dict[str, Any] | None:
    """The median ||grad|| / ||weight|| of the weight layers in the first record with weight norms,
    when it is above ``EARLY_GRAD_WEIGHT_RATIO``."""
    names = weight_layers(log)
    for record in log.records[:EARLY_RECORDS]:
        ratios = {n: record.layers[n].grad_norm / record.layers[n].weight_norm for n in names
                  if n in record.layers and _finite(record.layers[n].grad_norm)
                  and _finite(record.layers[n].weight_norm) and record.layers[n].weight_norm > 0}
        if len(ratios) < MIN_WEIGHT_LAYERS:
            continue
        typical = float(median(ratios.values()))
        if typical <= EARLY_GRAD_WEIGHT_RATIO:
            return None
        return {"median_grad_weight_ratio": _num(typical), "step": record.step,
                "layers": [n for n, r in ratios.items() if r > EARLY_GRAD_WEIGHT_RATIO]}
    return None


@dataclass(frozen=True)
class _Sign:
    """One sign of an exploding gradient: a clause for the explanation, a title, its evidence
    (under ``key``), the step it shows from and the layers it names."""

    clause: str
    title: str
    key: str
    evidence: Any
    step: int | None
    layers: list[str] = field(default_factory=list)


def _growth_toward_input(p: dict[str, Any] | None, log: RunLog) -> _Sign | None:
    """Early gradient norms growing geometrically toward the input (the depth profile): past
    EXPLODING_RATIO end to end, or by BLOCK_GROWTH per block and past MATERIAL_RATIO end to end."""
    if not p or not ((p["first_last_ratio"] and p["first_last_ratio"] > EXPLODING_RATIO
                      and (p["decay_factor"] or 0) > 1) or _compounding(p, log, grows=True)):
        return None
    last, word = p["grad_norms"][-1], "block" if p.get("unit") == "block" else "layer"
    # the named layers: those past the threshold that fired, the end-to-end one or the material one
    over = EXPLODING_RATIO if p["first_last_ratio"] > EXPLODING_RATIO else MATERIAL_RATIO
    return _Sign(f"each {word} toward the input multiplies the gradient by about {_unit_factor(p):.2g}, "
                 f"so the first {word} gets {p['first_last_ratio']:.2g}x the last one's",
                 f"early {word}s get {p['first_last_ratio']:.1e}x the last {word}'s gradient",
                 "profile", {k: v for k, v in p.items() if k != "step"}, p["step"],
                 [n for n, g in zip(p["layers"], p["grad_norms"]) if g > over * last])


def _init_scale(log: RunLog) -> _Sign | None:
    """Gradients far larger than their weights from the first records: the init scale."""
    early = _early_grad_weight_ratio(log)
    if not early:
        return None
    return _Sign(f"at step {early['step']} the gradients are already {early['median_grad_weight_ratio']:.2g}x "
                 "their layers' weights (median over the weight layers)",
                 f"gradients {early['median_grad_weight_ratio']:.1e}x the weights at step {early['step']}",
                 "early_grad_weight_ratio", early, early["step"], early["layers"])


def _rising_grad_norm(log: RunLog) -> _Sign | None:
    """The global gradient norm rising from third to third of the run."""
    norms = [(r.step, r.global_grad_norm) for r in log.records if not r.skipped and _finite(r.global_grad_norm)]
    thirds = _rising_thirds([g for _, g in norms])
    if not thirds:
        return None
    return _Sign(f"the global gradient norm rises over the run (medians of its thirds: {thirds})",
                 f"global gradient norm up {thirds[2] / thirds[0]:.0f}x over the run",
                 "global_grad_norm_thirds", thirds, next(s for s, g in norms if g >= GRAD_GROWTH * thirds[0]))


def _diverging_loss(log: RunLog) -> _Sign | None:
    """A loss that ends far above where it started, or grows and then turns non-finite."""
    diverged = _loss_divergence(log.records)
    if not diverged:
        return None
    return _Sign("the loss diverges" + (" and then turns non-finite" if "nonfinite_step" in diverged else ""),
                 "the loss diverges", "loss", diverged, diverged["step"])


def _went_nonfinite(log: RunLog) -> bool:
    """Whether any record holds a NaN/Inf event or a non-finite loss."""
    return any(r.first_nonfinite is not None or (r.loss is not None and not math.isfinite(r.loss))
               for r in log.records)


def find_exploding_gradient(log: RunLog, context: dict[str, Any] | None = None) -> Finding | None:
    """Growth toward the input, gradients far larger than the weights from the start, a global
    gradient norm rising over the run, or a diverging loss."""
    ctx, p = run_context(log, context), gradient_profile(log)
    # the order ranks the signs: the first names the title, the step and the layers
    signs = [s for s in (_growth_toward_input(p, log), _init_scale(log), _rising_grad_norm(log), _diverging_loss(log))
             if s is not None]
    if not signs:
        return None
    evidence: dict[str, Any] = {s.key: s.evidence for s in signs}
    evidence["signs"] = [s.clause for s in signs]
    layers = next((s.layers for s in signs if s.layers), [])
    step = next((s.step for s in signs if s.step is not None), None)
    early = evidence.get("early_grad_weight_ratio")
    init = f" (here init={ctx['init']})" if ctx.get("init") else ""
    text = ("The gradient explodes: " + "; ".join(evidence["signs"]) + ". Backpropagation multiplies the gradient by "
            "one factor per layer (the chain rule); when those factors exceed 1, because the weights were "
            f"initialized too large{init} or a learning rate too large lets them grow, the product grows "
            "geometrically: updates become huge, the loss diverges and can overflow to Inf/NaN.")
    if early:
        text += (" Gradients this large from the start point at the init scale: each layer multiplies the forward "
                 "signal by a factor above 1 as well, and a weight's gradient is the backward signal times the "
                 "forward activation, which grow in opposite directions, so it is huge in every layer rather "
                 "than growing toward the input.")
        ctx = {**ctx, "cause": "init_scale"}
    severe = "loss" in evidence or (early is not None and (
        _went_nonfinite(log) or early["median_grad_weight_ratio"] > EARLY_GRAD_WEIGHT_RATIO * SEVERE_RATIO))
    return _finding("exploding_gradient", "error" if severe else "warning",
                    "Exploding gradient: " + signs[0].title, text, ctx,
                    layers=layers, step=step, evidence=evidence)


def _nonfinite_in(record: StepRecord, log: RunLog) -> dict[str, Any] | None:
    """Where a record first shows NaN/Inf: forward (activation), then loss, then backward (gradient)."""
    acts = [n for n, a in record.activations.items()
            if a.nonfinite or not all(_finite(v) for v in (a.mean, a.std) if v is not None)]
    if acts:
        return {"kind": "activation", "layer": _ordered(acts, log)[0]}
    if record.loss is not None and not math.isfinite(record.loss):
        return {"kind": "loss", "layer": None}
    grads = [n for n, s in record.layers.items()
             if s.grad_nonfinite or (s.grad_norm is not None and not math.isfinite(s.grad_norm))]
    if grads or (record.global_grad_norm is not None and not math.isfinite(record.global_grad_norm)):
        grads = _ordered(grads, log)
        # the backward pass meets the layer nearest the output first
        return {"kind": "gradient", "layer": grads[-1] if grads else None, "layers": grads}
    return None


def find_nonfinite(log: RunLog, context: dict[str, Any] | None = None) -> Finding | None:
    """The first NaN/Inf: step, layer, kind (input/activation/loss/gradient) and batch."""
    ctx = run_context(log, context)
    bad = []
    for r in log.records:
        event = r.first_nonfinite
        where = {"kind": event.kind, "layer": event.layer} if event else _nonfinite_in(r, log)
        if where:
            bad.append((r, where))
    if not bad:
        return None
    record, where = bad[0]
    event = record.first_nonfinite
    step = event.step if event and event.step is not None else record.step
    batch = event.batch if event and event.batch is not None else record.batch
    skipped = sum(r.skipped for r in log.records)
    evidence = {**where, "step": step, "batch": batch, "nonfinite_records": len(bad),
                "skipped_steps": skipped, "records": len(log.records)}
    at = f" in {where['layer']}" if where.get("layer") else ""
    loss_ok = all(_finite(r.loss) for r in log.records if r.loss is not None)
    if loss_ok and all(r.skipped for r, _ in bad) and skipped <= SKIPPED_OK_FRACTION * len(log.records):
        return Finding("nonfinite", "info", f"{skipped} step(s) skipped for non-finite gradients",
                       "The optimizer skipped the steps whose gradients overflowed and the loss stayed finite; "
                       "a mixed-precision loss scaler does this while it calibrates its scale.",
                       layers=where.get("layers", []), step=step, evidence=evidence)
    causes = {
        "input": "The input batch already held NaN/Inf: the data, not the model, is at fault; clean the data set.",
        "activation": "The forward signal overflowed: activations grow past the float range when the weights are "
                      "too large or have grown through oversized updates (exploding gradients).",
        "loss": "A NaN/Inf loss usually follows exploding gradients or a learning rate too large (an update that "
                "overflows the weights), or a log(0) / division by zero in the loss.",
        "gradient": "Gradients overflow when they explode through the layers (per-layer factors above 1) or "
                    "after an oversized update; from there NaN spreads to every weight.",
    }
    text = f"NaN/Inf first appeared in the {where['kind']}{at} at step {step}. " + causes.get(where["kind"], "")
    remedies = [] if where["kind"] == "input" else remedies_for("nonfinite", ctx)
    return Finding("nonfinite", "error", f"Non-finite {where['kind']}{at} at step {step}", text,
                   layers=where.get("layers") or ([where["layer"]] if where.get("layer") else []),
                   step=step, evidence=evidence, remedies=remedies)


def _activation_medians(log: RunLog, metric: str, last_half: bool = False) -> dict[str, float]:
    records = log.records[len(log.records) // 2:] if last_half else log.records
    values: dict[str, list[float]] = {}
    for record in records:
        for name, stats in record.activations.items():
            value = getattr(stats, metric)
            if _finite(value):
                values.setdefault(name, []).append(value)
    return {name: float(median(v)) for name, v in values.items()}


def find_saturation(log: RunLog, context: dict[str, Any] | None = None) -> Finding | None:
    """Activation layers (not the ReLU family) whose median saturation fraction is high.

    Sigmoid and tanh saturate on both sides, for any input too large. GELU, SiLU and their kin do
    not: their flat side is the negative one, where the unit is off, as a ReLU's is; a zero-mean
    input of any scale puts at most half of the elements there, so they are read as units pushed
    off (past ``ONE_SIDED_OFF_HIGH``), with the remedies for that, not told to become a ReLU.
    """
    ctx = run_context(log, context)
    names = {layer.name: layer.activation for layer in log.meta.layers if layer.role == "activation"}
    # ReLU's flat side is its "off" side: that is measured as dead units, and half off is normal
    relu_like = {n for r in log.records for n, a in r.activations.items() if a.dead_fraction is not None}
    fractions = {n: f for n, f in _activation_medians(log, "saturation").items()
                 if n not in relu_like and names.get(n) not in RELU_FAMILY}
    one_sided = {n for n in fractions if canonical_activation(names.get(n) or "") in ONE_SIDED_ACTIVATIONS}
    hot = _ordered([n for n, f in fractions.items() if n not in one_sided and f >= SATURATION_HIGH], log)
    if not hot:
        return _units_off(log, ctx, names, {n: fractions[n] for n in one_sided})
    worst = sorted(hot, key=lambda n: -fractions[n])
    kind = names.get(worst[0]) or ctx.get("activation") or "the activation"
    text = (f"In {len(hot)} activation layer(s) at least {SATURATION_HIGH:.0%} of the units (up to "
            f"{fractions[worst[0]]:.0%} in {worst[0]}) sit in the flat region of {kind}, where the derivative "
            "is below 1 % of its maximum: they pass almost no gradient back, so the layers before them stop "
            "learning. Units saturate when their inputs are too large: weights initialized too large, inputs "
            "not normalized, or weights grown during training.")
    if kind in SATURATING_ACTIVATIONS:
        text += " Sigmoid and tanh squash large inputs flat (sigma' <= 0.25 at best, ~0 when saturated)."
    return _finding("saturation", "error" if fractions[worst[0]] >= SATURATION_SEVERE else "warning",
                    f"Saturated units: {fractions[worst[0]]:.0%} in {worst[0]}", text, {**ctx, "activation": kind},
                    layers=hot, evidence={"worst": [[n, _num(fractions[n])] for n in worst[:5]],
                                          "threshold": SATURATION_HIGH, "basis": "median over records"})


def _units_off(log: RunLog, ctx: dict[str, Any], names: dict[str, str | None],
               fractions: dict[str, float]) -> Finding | None:
    """GELU/SiLU-type layers with most of their elements on the flat negative side: units off."""
    hot = _ordered([n for n, f in fractions.items() if f >= ONE_SIDED_OFF_HIGH], log)
    if not hot:
        return None
    worst = sorted(hot, key=lambda n: -fractions[n])
    kind = names.get(worst[0]) or "the activation"
    text = (f"In {len(hot)} activation layer(s) more than {ONE_SIDED_OFF_HIGH:.0%} of the units (up to "
            f"{fractions[worst[0]]:.0%} in {worst[0]}) sit on the negative side of {kind}, where the derivative "
            f"is below 1 % of its maximum. {kind} does not saturate for positive inputs (its derivative tends to "
            "1 there, as a ReLU's is); on the negative side the unit is off and passes almost no gradient back. "
            "Zero-mean inputs of any scale leave at most half of the units there, so more means the "
            "pre-activations were pushed negative, as dying ReLU units are: by updates too large (a learning "
            "rate too high, no warm-up) or an init scale too large.")
    return _finding("saturation", "error" if fractions[worst[0]] >= SATURATION_SEVERE else "warning",
                    f"Units off: {fractions[worst[0]]:.0%} of {worst[0]} on the flat negative side of {kind}",
                    text, {**ctx, "activation": kind}, layers=hot,
                    evidence={"worst": [[n, _num(fractions[n])] for n in worst[:5]], "threshold": ONE_SIDED_OFF_HIGH,
                              "side": "negative", "basis": "median over records"})


def find_dead_units(log: RunLog, context: dict[str, Any] | None = None) -> Finding | None:
    """ReLU-family layers whose dead fraction stays high over the second half of the run."""
    ctx = run_context(log, context)
    if ctx.get("batch_size") is not None and int(ctx["batch_size"]) < MIN_DEAD_BATCH:
        return None
    fractions = _activation_medians(log, "dead_fraction", last_half=True)
    dead = _ordered([n for n, f in fractions.items() if f >= DEAD_HIGH], log)
    if not dead:
        return None
    worst = sorted(dead, key=lambda n: -fractions[n])
    text = (f"In {len(dead)} layer(s) up to {fractions[worst[0]]:.0%} of the ReLU units output 0 for every "
            "example (dying ReLU): a unit whose input is always negative has derivative 0, gets no gradient and "
            "never recovers. Large updates (a learning rate too high) or a poor init push units there.")
    return _finding("dead_units", "error" if fractions[worst[0]] >= DEAD_SEVERE else "warning",
                    f"Dead ReLU units: {fractions[worst[0]]:.0%} in {worst[0]}", text, ctx, layers=dead,
                    evidence={"worst": [[n, _num(fractions[n])] for n in worst[:5]], "threshold": DEAD_HIGH,
                              "basis": "median over the second half of the records"})


def _update_ratios(log: RunLog, names: Sequence[str]) -> list[float]:
    # a layer without a gradient (frozen, unused) did not move because nothing moved it, not because
    # the rate is low: its 0 would drag the median of a mostly frozen model down to "lr too low"
    return [r.layers[n].update_ratio for r in log.records if not r.skipped for n in names
            if n in r.layers and _finite(r.layers[n].update_ratio) and r.layers[n].grad_norm is not None]


def _lr_evidence(log: RunLog, ratio: float) -> dict[str, Any]:
    lrs = [r.lr for r in log.records if _finite(r.lr)]
    return {"median_update_ratio": _num(ratio), "reference": 1e-3, "high": LR_HIGH_RATIO, "low": LR_LOW_RATIO,
            "lr": _num(median(lrs)) if lrs else None}


def _update_spikes(log: RunLog, names: Sequence[str]) -> dict[str, Any] | None:
    """The first record where LR_STEP_LAYERS weight layers or more (all, in a smaller net) changed by
    LR_STEP_RATIO of their norm or more: one step that replaced the weights."""
    need = min(LR_STEP_LAYERS, len(names))
    for record in log.records:
        if record.skipped:
            continue
        big = {n: record.layers[n].update_ratio for n in names if n in record.layers
               and _finite(record.layers[n].update_ratio) and record.layers[n].update_ratio >= LR_STEP_RATIO}
        if need and len(big) >= need:
            return {"step": record.step, "layers": list(big), "max_update_ratio": _num(max(big.values())),
                    "threshold": LR_STEP_RATIO}
    return None


def find_lr_too_high(log: RunLog, context: dict[str, Any] | None = None) -> Finding | None:
    """Median update-to-weight ratio over weight layers and records above LR_HIGH_RATIO, or one step
    (Adam's first ones included) that changed several layers by as much as their own weights.

    Where the gradients were far above the weights from the start (``cause == init_scale``), those
    updates follow from the init, not from the rate: the finding is then only ``info``.
    """
    ctx = run_context(log, context)
    names = weight_layers(log)
    ratios = _update_ratios(log, names)
    spike = _update_spikes(log, names)
    typical = float(median(ratios)) if ratios else None
    if (typical is None or typical <= LR_HIGH_RATIO) and spike is None:
        return None
    evidence = _lr_evidence(log, typical if typical is not None else math.nan)
    if typical is None:
        evidence["median_update_ratio"] = None
    parts = []
    if typical is not None and typical > LR_HIGH_RATIO:
        parts.append(f"A typical step changes the weights by {typical:.2g} of their norm, against about 1e-3 for "
                     "healthy training (Karpathy's rule of thumb)")
    if spike is not None:
        evidence["step_spike"] = spike
        parts.append(f"at step {spike['step']} the update was up to {spike['max_update_ratio']:.2g} times the weights "
                     f"in {len(spike['layers'])} layer(s): that step replaced the weights rather than adjusting them"
                     + (" (Adam's first steps, whose second-moment estimate comes from a batch or two, are the "
                        "largest of a run)" if str(ctx.get("optimizer") or "").lower().startswith(("adam", "nadam",
                                                                                                   "radam"))
                        else ""))
    text = "; ".join(parts) + (". The learning rate is too high, at least for these steps: updates overshoot and "
                               "can make the weights, and with them the gradients, grow until the loss diverges.")
    # an update larger than the weights themselves
    severity = "error" if (typical is not None and typical >= 1) or spike is not None else "warning"
    if ctx.get("cause") == "init_scale":
        severity = "info"
        text += (" Here the gradients were far above the weights from the first step (the init scale), so these "
                 "updates follow from the init: treat that first.")
    shown = typical if typical is not None and typical > LR_HIGH_RATIO else spike["max_update_ratio"]
    title = (f"Learning rate too high: updates {shown:.1e} of the weights"
             + (f" at step {spike['step']}" if spike is not None and shown == spike["max_update_ratio"] else ""))
    return _finding("lr_too_high", severity, title, text, ctx, layers=spike["layers"] if spike else [],
                    step=spike["step"] if spike else None, evidence=evidence)


def find_lr_too_low(log: RunLog, context: dict[str, Any] | None = None) -> Finding | None:
    """Median update ratio over all weight layers below LR_LOW_RATIO, unless vanishing explains it.

    Vanishing layers have tiny update ratios whatever the learning rate; when the layer nearest the
    output updates at a normal rate (HEALTHY_UPDATE_MIN or more), the gradient (not the learning
    rate) is what is small.
    """
    names = weight_layers(log)
    ratios = _update_ratios(log, names)
    if not ratios or median(ratios) >= LR_LOW_RATIO:
        return None
    output = _update_ratios(log, names[-1:])
    if output and median(output) >= HEALTHY_UPDATE_MIN:
        return None
    ratio = float(median(ratios))
    text = (f"A typical step changes the weights by only {ratio:.2g} of their norm, against about 1e-3 for "
            "healthy training (Karpathy's rule of thumb), and even the layer nearest the output moves that "
            "little: the learning rate is too small for the weights to move, not only the gradient that "
            "vanishes on its way to the early layers.")
    evidence = {**_lr_evidence(log, ratio), "output_layer_update_ratio": _num(median(output)) if output else None}
    return _finding("lr_too_low", "warning", f"Learning rate too low: updates {ratio:.1e} of the weights",
                    text, run_context(log, context), evidence=evidence)


def _final_loss(log: RunLog) -> float | None:
    losses = [r.loss for r in log.records if _finite(r.loss)]
    return fmean(losses[-max(1, round(len(losses) * FINAL_FRACTION)):]) if losses else None


def find_degradation(runs: Sequence[RunLog], context: dict[str, Any] | None = None) -> Finding | None:
    """Among plain (non-residual) runs, a deeper one ending at a higher training loss than a shallower one."""
    plain = []
    for run in runs:
        ctx, loss = run_context(run), _final_loss(run)
        if ctx["residual"] is not True and loss is not None and ctx["depth"]:
            plain.append((ctx["depth"], loss, ctx["model"]))
    plain.sort(key=lambda run: run[0])
    pairs = [{"shallow_depth": a[0], "deep_depth": b[0], "shallow_loss": _num(a[1]), "deep_loss": _num(b[1])}
             for i, a in enumerate(plain) for b in plain[i + 1:]
             if b[0] > a[0] and b[1] > a[1] * (1 + DEGRADATION_MARGIN)]
    if not pairs:
        return None
    worst = max(pairs, key=lambda p: p["deep_loss"] / max(p["shallow_loss"], 1e-12))
    text = (f"The plain {worst['deep_depth']}-layer net ends at a training loss of {worst['deep_loss']:.3g}, "
            f"above the {worst['shallow_depth']}-layer net's {worst['shallow_loss']:.3g}: the degradation problem "
            "(He et al. 2015). A deeper net could copy the shallower one and add identity layers, so this is not "
            "overfitting but an optimization difficulty of deep plain nets, which residual connections solve.")
    # the remedies are for the plain nets, whatever the diagnosed run itself uses
    return _finding("degradation", "warning", f"Degradation: plain depth {worst['deep_depth']} trains worse than "
                    f"depth {worst['shallow_depth']}", text, dict(context or {}),
                    evidence={"depths": [r[0] for r in plain], "final_losses": [_num(r[1]) for r in plain],
                              "models": [r[2] for r in plain], "pairs": pairs, "margin": DEGRADATION_MARGIN})


def _time_context(log: RunLog, ctx: dict[str, Any], module: str) -> dict[str, Any]:
    """The run's facts with ``recurrent`` narrowed to the cell types of ``module``'s own layers."""
    own = sorted({layer.type for layer in log.meta.layers
                  if layer.name == module or layer.name.startswith(module + ".")} & set(RECURRENT_TYPES))
    return {**ctx, "recurrent": own or ctx.get("recurrent") or []}


def _before_divergence(log: RunLog) -> RunLog:
    """``log`` cut before the first record whose loss reached LOSS_DIVERGENCE x the first one (or
    turned non-finite), keeping the first record at least.

    The gradient through time of a net whose loss has diverged is the divergence's doing: its tanh
    units saturate or its ReLU states die, and the gradient is then exactly zero a few steps back
    whatever the recurrent weights were. The rule that names the divergence (a learning rate too
    high, an exploding gradient) covers it; the recurrent Jacobian is read from the run before it.
    """
    first = next((r.loss for r in log.records if _finite(r.loss)), None)
    if first is None or first <= 0:
        return log
    cut = next((i for i, r in enumerate(log.records) if r.loss is not None
                and (not math.isfinite(r.loss) or r.loss >= LOSS_DIVERGENCE * first)), None)
    if cut is None:
        return log
    return RunLog(log.meta, log.records[:max(cut, 1)])


def find_vanishing_through_time(log: RunLog, context: dict[str, Any] | None = None) -> Finding | None:
    """A recurrent module whose gradient falls below VANISHED_FRACTION of the last step's within the
    sequence: the steps beyond that horizon do not reach training. Read over the records before the
    loss diverged (``_before_divergence``)."""
    ctx = run_context(log, context)
    hit = {n: p for n, p in time_profiles(_before_divergence(log)).items() if p["horizon"] is not None}
    if not hit:
        return None
    name = min(hit, key=lambda n: hit[n]["horizon"])
    p = hit[name]
    factor = p["factor"]
    text = (f"Backpropagation through time in {name} multiplies the gradient by one recurrent Jacobian per step "
            "back (Bengio et al. 1994)" + (f"; fitted, each step back multiplies it by about {factor:.3g}"
                                           if factor is not None else "") +
            f": {p['horizon']} steps before the last it is already below {VANISHED_FRACTION:g} of the last step's "
            f"gradient, so of the {p['length']} input steps only the last {p['horizon']} influence training and a "
            "dependency longer than that is not learned.")
    own = _time_context(log, ctx, name)
    if any(t in ("LSTM", "GRU") for t in own["recurrent"]):
        # gated cells carry an additive path through time; a horizon this short means the gates close it
        text += " The cell is already gated, so its forget/update gates are closing over this span."
    # most of the sequence out of reach: the model sees a short suffix of what it is given
    severity = "error" if p["horizon"] < p["length"] / 2 else "warning"
    return _finding("vanishing_through_time", severity,
                    f"Vanishing gradient through time: {name} reaches {p['horizon']} of {p['length']} steps back",
                    text, own, layers=sorted(hit), evidence={**p, "module": name, "threshold": VANISHED_FRACTION,
                                                             "modules": {n: hit[n]["horizon"] for n in hit}})


def find_exploding_through_time(log: RunLog, context: dict[str, Any] | None = None) -> Finding | None:
    """A recurrent module whose gradient grows toward the first input step past TIME_EXPLODING_RATIO
    of the last step's, or turns non-finite on the way back."""
    ctx = run_context(log, context)
    hit = {n: p for n, p in time_profiles(log).items()
           if p["nonfinite"] or ((p["first_last_ratio"] or 0) > TIME_EXPLODING_RATIO and (p["factor"] or 0) > 1)}
    if not hit:
        return None
    name = max(hit, key=lambda n: (hit[n]["nonfinite"], hit[n]["first_last_ratio"] or 0))
    p = hit[name]
    growth = (f"the first input step gets {p['first_last_ratio']:.2g}x the last step's gradient"
              if p["first_last_ratio"] else f"{p['nonfinite']} of its {p['length']} per-step norms are NaN/Inf")
    text = (f"Backpropagating through time in {name}, {growth}" +
            (f" (each step back multiplies it by about {p['factor']:.3g})" if p["factor"] else "") +
            ": the recurrent Jacobian's largest singular value is above 1, so the product over the steps grows "
            "geometrically (Pascanu et al. 2013) and one long sequence can throw the weights far away.")
    severity = "error" if p["nonfinite"] or p["first_last_ratio"] > TIME_EXPLODING_RATIO ** 2 else "warning"
    return _finding("exploding_through_time", severity,
                    f"Exploding gradient through time in {name}: " + growth, text, _time_context(log, ctx, name),
                    layers=sorted(hit), evidence={**p, "module": name, "threshold": TIME_EXPLODING_RATIO})


def rules_not_run(log: RunLog) -> list[dict[str, Any]]:
    """The rules that had nothing to read in this log, each with why; the depth rules' absence
    leaves the verdict inconclusive (vanishing and exploding gradients are what this tool is for)."""
    out = []
    gap = profile_gap(log)
    if gap:
        out.append(not_run_entry("depth profile", ["vanishing_gradient", "exploding_gradient"], gap,
                                 blocks_verdict=True))
    if not _update_ratios(log, weight_layers(log)):
        out.append(not_run_entry("update size", ["lr_too_high", "lr_too_low"],
                                 "no update_ratio recorded (the monitor measures it when it is given the optimizer)"))
    unhooked, time_unmeasured = unmeasured_activations_and_sequences(log)
    if not any(r.activations for r in log.records):
        why = (f"{len(unhooked)} activation(s) could not be measured: " + "; ".join(unhooked[:3])
               if unhooked else "no activation module was measured (functional activations are not seen)")
        out.append(not_run_entry("activations", ["saturation", "dead_units"], why))
    if recurrent_without_time(log):
        why = ("the model is recurrent but the records carry no time_grads"
               + (": " + "; ".join(time_unmeasured[:3]) if time_unmeasured else ""))
        out.append(not_run_entry("gradient through time", ["vanishing_through_time", "exploding_through_time"], why))
    return out


def diagnose_log(log: RunLog, *, compare: Sequence[RunLog] = (),
                 context: dict[str, Any] | None = None) -> Diagnosis:
    """Run every rule on ``log`` (and degradation against ``compare``); findings most severe first.

    ``context`` adds or corrects facts about the run (``activation``, ``init``, ``norm``, ``residual``,
    ``depth``, ``batch_size``...) that rank the remedies and shape the explanations.
    """
    ctx = run_context(log, context)
    exploding = find_exploding_gradient(log, ctx)
    if exploding is not None and "early_grad_weight_ratio" in exploding.evidence:
        # gradients far above the weights from the start: what follows from them (the NaN) is
        # treated at that cause first too
        ctx.setdefault("cause", "init_scale")
    rules = (find_nonfinite, find_vanishing_gradient, find_saturation, find_dead_units, find_lr_too_high,
             find_lr_too_low, find_vanishing_through_time, find_exploding_through_time)
    findings = [f for f in (exploding, *(rule(log, ctx) for rule in rules)) if f is not None]
    if compare:
        degraded = find_degradation([log, *compare], context)
        findings += [degraded] if degraded else []
    findings.sort(key=lambda f: -SEVERITIES.index(f.severity))
    steps = [r.step for r in log.records]
    # a log that counts from step 0 has covered max + 1 steps
    total = (max(steps) + (0 in steps)) if steps else 0
    return Diagnosis(findings, model=ctx["model"], data=data_name(log), steps=total, coverage=coverage(log),
                     not_run=rules_not_run(log))
