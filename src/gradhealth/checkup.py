"""A check-up of one model: a short monitored run, the rules, and the theory's prediction at init.

``checkup()`` with no arguments examines the embedded default, a deep plain sigmoid MLP on the
digits data, which shows the vanishing gradient the material starts from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from gradhealth.diagnose.findings import Diagnosis
from gradhealth.diagnose.rules import diagnose_log
from gradhealth.errors import ConfigError, GradHealthError
from gradhealth.monitor.records import RunLog
from gradhealth.train.config import TrainConfig
from gradhealth.train.loop import TrainResult, fit

__all__ = ["DEFAULT_MODEL", "DEFAULT_DATA", "DEFAULT_STEPS", "Checkup", "checkup", "theory_at_init"]

DEFAULT_MODEL = "mlp:depth=20,width=64,activation=sigmoid,init=xavier_normal,residual=false"
DEFAULT_DATA = TrainConfig.data
# enough optimizer steps to see the loss and the update ratios move, few enough for seconds on a CPU
DEFAULT_STEPS = 60


@dataclass
class Checkup:
    diagnosis: Diagnosis
    log: RunLog
    result: TrainResult


def checkup(model: str | nn.Module = DEFAULT_MODEL, data: str = DEFAULT_DATA, steps: int = DEFAULT_STEPS, *,
            out: str | None = None, progress: bool = False, **train: Any) -> Checkup:
    """Train ``model`` for ``steps`` monitored steps and diagnose what the records show.

    ``train`` takes any TrainConfig field (lr, optimizer, clip, init, seed, ...).
    """
    label = model if isinstance(model, str) else type(model).__name__
    config = TrainConfig(model=label, data=data, steps=steps, out=out, **{"on_nonfinite": "stop", **train})
    result = fit(config, model=None if isinstance(model, str) else model, progress=progress)
    log = RunLog(result.meta, result.records)
    diagnosis = diagnose_log(log)
    diagnosis.model, diagnosis.data, diagnosis.steps = label, data, result.summary["steps"]
    # what was trained on: the model's own loss or cross-entropy on its logits (train/outputs.py)
    diagnosis.extra["loss"] = result.summary["loss"]
    if isinstance(model, str):
        theory = theory_at_init(model, config.init, log)
        if theory is not None:
            diagnosis.extra["theory"] = theory
    return Checkup(diagnosis, log, result)


def theory_at_init(spec: str, init: str | None, log: RunLog) -> dict[str, Any] | None:
    """Mean-field prediction for a plain or residual ``mlp`` spec, beside the norms measured at step 0.

    Other models have no closed-form prediction here, so they get none (not a guess).
    """
    from gradhealth.diagnose import theory
    from gradhealth.models import resolve_spec
    from gradhealth.vocabulary import is_file_spec

    if is_file_spec(spec):
        return None
    name, kwargs = resolve_spec(spec)
    if name != "mlp" or kwargs.get("norm", "none") != "none":
        return None
    from gradhealth.models import model_options

    defaults = {k: p.default for k, p in model_options("mlp").items()}
    options = {**defaults, **kwargs}
    scheme = init or kwargs.get("init") or "default"
    width, depth = int(options["width"]), int(options["depth"])
    try:
        scale = theory.sigma_w_of_init(scheme, options["activation"], fan_in=width)
        if scale.sigma_w is None:
            return {"applies": False, "reason": scale.note}
        # the hidden layers only: the first sees the data, the head sees the classes
        hidden = depth - 2
        if hidden < 2:
            return None
        prediction = theory.predict(options["activation"], scale.sigma_w, scale.sigma_b, hidden,
                                    residual=bool(options["residual"]))
    except (ConfigError, GradHealthError) as exc:
        return {"applies": False, "reason": str(exc)}
    weights = [layer.name for layer in log.meta.layers if layer.role == "weight"][1:-1]
    first = log.records[0]
    measured = [first.layers[n].grad_norm for n in weights if n in first.layers]
    result: dict[str, Any] = {"applies": True, "init": scheme, "sigma_w": scale.sigma_w, "sigma_b": scale.sigma_b,
                              "prediction": prediction.to_dict()}
    if len(measured) >= 2 and all(m is not None and m > 0 and m == m and m != float("inf") for m in measured):
        result["comparison"] = theory.compare_with_measured(prediction, measured)
    return result
