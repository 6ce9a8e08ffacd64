"""What the diagnosis saw of the model, and which rules could not run (no torch).

A diagnosis that looked at two matrices of twenty-six and found nothing has not found the model
healthy; it has not looked. The coverage says how much was measured, and each rule that could not
run says why, so the verdict can be ``inconclusive`` rather than a ``healthy`` that means nothing.
"""
from __future__ import annotations

from typing import Any

from gradhealth.diagnose.structure import recurrent_types
from gradhealth.monitor.records import RunLog

__all__ = ["WEIGHT_COVERAGE_MIN", "coverage", "not_run_entry", "recurrent_without_time"]

# The depth rules compare the gradients of the weight matrices from input to output; with more
# than a tenth of them unmeasured, a stretch of the network where the gradient vanishes or grows
# could lie in the gap (one block of a ten-block model), so below this a clean result proves little.
WEIGHT_COVERAGE_MIN = 0.9
# at most this many unmeasured names are listed; the counts say the rest
MAX_NAMES = 10


def _measured_layers(log: RunLog) -> set[str]:
    return {name for record in log.records for name, stats in record.layers.items() if stats.grad_norm is not None}


def coverage(log: RunLog) -> dict[str, Any]:
    """Weight matrices measured of all trainable ones (tied copies counted once), activation
    modules hooked of all that look like activations, modules of no known role.

    ``known`` is False for a log that does not list the model's parameters (written before the
    monitor did): the coverage is then unknown, which is said rather than guessed.
    """
    meta = log.meta
    out: dict[str, Any] = {"known": bool(meta.parameters), "threshold": WEIGHT_COVERAGE_MIN}
    unclassified = [layer.name for layer in meta.layers if layer.role == "other"]
    hooked = meta.names("activation")
    out["activations"] = {"hooked": len(hooked), "total": len(hooked) + len(meta.unhooked),
                          "unhooked": meta.unhooked[:MAX_NAMES]}
    out["unclassified"] = unclassified[:MAX_NAMES]
    out["unclassified_count"] = len(unclassified)
    if meta.time_series:
        out["time_series"] = list(meta.time_series)
    if not meta.parameters:
        out["note"] = ("this log does not list the model's parameters (written before gradhealth recorded them), "
                       "so how much of the model was measured is unknown")
        return out
    measured = _measured_layers(log)
    counted: set[str] = set()
    matrices, seen, frozen = [], [], 0
    for param in meta.parameters:
        if len(param.shape) < 2 or param.name in counted:
            continue
        # a tied tensor is listed once per module that holds it: count it once
        counted.update([param.name, *param.tied])
        if not param.trainable:
            frozen += 1
            continue
        matrices.append(param.name)
        if param.layer is not None and param.layer in measured:
            seen.append(param.name)
    fraction = len(seen) / len(matrices) if matrices else None
    missing = [name for name in matrices if name not in set(seen)]
    out["weight_matrices"] = {"measured": len(seen), "total": len(matrices),
                              "fraction": None if fraction is None else round(fraction, 4),
                              "unmeasured": missing[:MAX_NAMES], "frozen": frozen}
    out["complete_enough"] = fraction is None or fraction >= WEIGHT_COVERAGE_MIN
    return out


def not_run_entry(rule: str, kinds: list[str], reason: str, *, blocks_verdict: bool = False) -> dict[str, Any]:
    """One rule that could not run: its name, the finding kinds it would give, why, and whether its
    absence leaves the verdict ``inconclusive``."""
    return {"rule": rule, "kinds": kinds, "reason": reason, "blocks_verdict": blocks_verdict}


def recurrent_without_time(log: RunLog) -> bool:
    """A recurrent model whose records carry no gradient through time."""
    return bool(recurrent_types(log) or log.meta.time_series) and not any(r.time_grads for r in log.records)
