"""What every study shares: claims and results, size presets, one training run, seeds, measurements.

A study trains small networks with :func:`gradhealth.train.loop.fit` and turns the records into
numbers; every :class:`Claim` it makes is computed from those numbers, so a claim that does not
hold on some machine or seed says so instead of being printed as true.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.io import strict_json
from gradhealth.monitor.records import RunLog
from gradhealth.report.html import Section
from gradhealth.report.svg import Figure

if TYPE_CHECKING:
    from torch import nn

    from gradhealth.train.config import TrainConfig
    from gradhealth.train.data import DataBundle
    from gradhealth.train.loop import TrainResult

__all__ = ["SIZES", "Claim", "StudyResult", "pick_size", "resolve_seeds", "train", "run_config",
           "load_bundle", "grad_norms", "mean_profile", "first_last", "decay_factor", "final_loss", "run_entry",
           "spread", "show_spread", "has_images"]

# tiny: seconds, for tests; quick: minutes on a laptop CPU; full: deeper, longer, several seeds
SIZES = ("tiny", "quick", "full")
DEFAULT_SEEDS = {"tiny": 1, "quick": 1, "full": 3}
# "at init" is step 0: one optimizer step at a large lr can already saturate or blow up a layer
EARLY_RECORDS = 1
# what a study records unless it asks for more: per-layer gradient norms every step; the
# activation statistics and update ratios of detailed steps would double the cost of a step
STUDY_DEFAULTS: dict[str, Any] = {"activations": False, "detail_every": 1000, "progress": False}

T = TypeVar("T")


@dataclass
class Claim:
    """One sentence of the material and whether the measured numbers in ``evidence`` bear it out."""

    text: str
    holds: bool
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "holds": bool(self.holds), "evidence": strict_json(self.evidence)}


@dataclass
class StudyResult:
    """A finished study: its claims, report sections, the numbers behind them, and its key figure."""

    name: str
    title: str
    claims: list[Claim]
    sections: list[Section]
    results: dict[str, Any]
    key_figure: Figure | None = None

    @property
    def all_hold(self) -> bool:
        return all(c.holds for c in self.claims)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "claims": [c.to_json() for c in self.claims],
                "results": strict_json(self.results)}


def pick_size(presets: Mapping[str, T], size: str) -> T:
    if size not in presets:
        raise unknown_name("study size", size, presets)
    return presets[size]


def resolve_seeds(size: str, seeds: int | Sequence[int] | None) -> list[int]:
    """``None``: the size's default count; an int K: seeds 0..K-1; a sequence: those seeds."""
    pick_size(DEFAULT_SEEDS, size)
    if seeds is None:
        seeds = DEFAULT_SEEDS[size]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"the number of seeds must be at least 1, not {seeds}.")
        return list(range(seeds))
    chosen = [int(s) for s in seeds]
    if not chosen or any(s < 0 for s in chosen):
        raise ConfigError(f"seeds must be a non-empty list of non-negative integers, not {seeds!r}.")
    return chosen


# ---- running ------------------------------------------------------------------------------------

@lru_cache(maxsize=16)
def load_bundle(spec: str, seed: int) -> DataBundle:
    """The data set once per (spec, seed): a study trains dozens of runs on the same split."""
    from gradhealth.train.data import load_data

    return load_data(spec, seed=seed)


def has_images(spec: str) -> bool:
    """Whether the data set's examples are images (C, H, W), which the CIFAR-style nets need."""
    return len(load_bundle(spec, 0).input_shape) == 3


@contextlib.contextmanager
def _cpu_threads(device: str) -> Iterator[None]:
    # The study nets are small: on a CPU each op is too short to split, and a second thread only
    # competes for the cores (a busy 2-core machine ran 30x slower with two threads than with one).
    import torch

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    before = torch.get_num_threads()
    if on_cpu:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _flat_input(model: str, bundle: DataBundle) -> str:
    """An MLP spec given images flattens them: its input width is the number of pixel values."""
    name, _, rest = model.partition(":")
    if name != "mlp" or len(bundle.input_shape) == 1 or "in_features=" in rest:
        return model
    return f"{name}:{rest + ',' if rest else ''}in_features={math.prod(bundle.input_shape)}"


def train(config: TrainConfig | None = None, *, module: nn.Module | None = None, **overrides: Any) -> TrainResult:
    """``fit`` without files or a progress bar, on the cached data set, keeping the trained model.

    ``module`` trains that network (in place) instead of building ``config.model``, which then
    only names it in the records.
    """
    from gradhealth.train.config import TrainConfig
    from gradhealth.train.loop import fit

    options = {**STUDY_DEFAULTS, **overrides}
    progress = options.pop("progress")
    config = dataclasses.replace(config, **options) if config is not None else TrainConfig(**options)
    bundle = load_bundle(config.data, config.seed)
    if module is None:
        config = dataclasses.replace(config, model=_flat_input(config.model, bundle))
    config = dataclasses.replace(config, out=None, resume=None)
    with _cpu_threads(config.device):
        return fit(config, model=module, data=bundle, progress=progress)


def run_config(config: TrainConfig | None = None, *, module: nn.Module | None = None,
               **overrides: Any) -> tuple[RunLog, dict[str, Any]]:
    """Train one configuration and return its records (as a RunLog) and fit's summary."""
    result = train(config, module=module, **overrides)
    return RunLog(result.meta, result.records), result.summary


# ---- measuring ----------------------------------------------------------------------------------

def grad_norms(log: RunLog, records: int = EARLY_RECORDS) -> list[float]:
    """Each weight layer's gradient norm, input first: the median over the first ``records`` steps
    that were taken; NaN where a layer has no finite value there."""
    usable = [r for r in log.records if not r.skipped and r.layers][:records]
    norms = []
    for name in log.meta.names("weight"):
        values = [v for r in usable if name in r.layers and (v := r.layers[name].grad_norm) is not None
                  and math.isfinite(v)]
        norms.append(float(statistics.median(values)) if values else math.nan)
    return norms


def mean_profile(profiles: Sequence[Sequence[float]]) -> list[float]:
    """Per layer, the geometric mean over seeds of the finite positive norms (NaN where none)."""
    out = []
    for values in zip(*profiles):
        logs = [math.log(v) for v in values if math.isfinite(v) and v > 0]
        out.append(math.exp(statistics.fmean(logs)) if logs else math.nan)
    return out


def first_last(norms: Sequence[float]) -> float | None:
    """First (input) layer's gradient norm over the last (output) layer's; None when undefined."""
    if len(norms) < 2 or not all(math.isfinite(v) for v in (norms[0], norms[-1])) or norms[-1] <= 0:
        return None
    return norms[0] / norms[-1]


def decay_factor(norms: Sequence[float]) -> float | None:
    """What each hidden layer multiplies the gradient norm by on its way to the input.

    exp(-slope) of a least-squares line through log(norm) against the layer index, over the hidden
    layers only: the first and last layers have other fan-in/fan-out and sit off the trend.
    """
    import numpy as np

    inner = [(i, v) for i, v in enumerate(norms[1:-1]) if math.isfinite(v) and v > 0]
    if len(inner) < 2:
        return None
    x, y = zip(*inner)
    return math.exp(-float(np.polyfit(np.array(x, float), np.log(np.array(y)), 1)[0]))


def final_loss(summary: Mapping[str, Any]) -> float:
    """The run's final training loss; +inf for a run that stopped on NaN/Inf (worse than any loss)."""
    value = summary.get("final_loss")
    if summary.get("stopped") == "nonfinite" or value is None or not math.isfinite(value):
        return math.inf
    return float(value)


def run_entry(label: str, log: RunLog, summary: Mapping[str, Any], **measured: Any) -> dict[str, Any]:
    """One run as results.json keeps it: its whole config, its outcome and what the study measured."""
    norms = grad_norms(log)
    return {
        "label": label,
        "config": summary.get("config"),
        "steps": summary.get("steps"),
        "final_loss": summary.get("final_loss"),
        "stopped": summary.get("stopped"),
        "first_nonfinite": summary.get("first_nonfinite"),
        "seconds": summary.get("seconds"),
        "grad_norms_init": norms,
        "first_last_init": first_last(norms),
        "loss": [r.loss for r in log.records],
        **measured,
    }


def spread(values: Sequence[float | None], *, log: bool = False) -> dict[str, Any]:
    """Mean, standard deviation, min and max over seeds (geometric for ``log``: ratios of norms)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v) and (not log or v > 0)]
    out: dict[str, Any] = {"n": len(values), "finite": len(finite), "values": list(values)}
    if log and not finite and values and all(v == 0 for v in values):
        # a ratio of norms that is exactly 0: no gradient reached the layer at all
        return {**out, "finite": len(values), "mean": 0.0, "std_decades": None, "min": 0.0, "max": 0.0}
    if not finite:
        return {**out, "mean": None, "std": None, "min": None, "max": None}
    points = [math.log10(v) for v in finite] if log else finite
    mean = statistics.fmean(points)
    std = statistics.stdev(points) if len(points) > 1 else 0.0
    if log:  # std stays in decades: a spread of 0.3 means a factor of 2 either way
        return {**out, "mean": 10**mean, "std_decades": std, "min": min(finite), "max": max(finite)}
    return {**out, "mean": mean, "std": std, "min": min(finite), "max": max(finite)}


def show_spread(s: Mapping[str, Any]) -> str:
    """``0.231`` for one seed, ``0.231 ± 0.004`` (or ``× 10^±0.2`` in decades) for several."""
    mean = s.get("mean")
    if mean is None:
        return "NaN/Inf"
    text = f"{mean:.3g}"
    if mean == 0 and "std_decades" in s:
        return "0 (no gradient)"
    if s.get("finite", 1) > 1:
        text += f" × 10^±{s['std_decades']:.2g}" if "std_decades" in s else f" ± {s['std']:.2g}"
    if s.get("finite", 0) < s.get("n", 0):
        text += f" ({s['n'] - s['finite']} of {s['n']} NaN/Inf)"
    return text
