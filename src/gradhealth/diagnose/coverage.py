"""What the diagnosis saw of the model, and which rules could not run (no torch).

A diagnosis that looked at two matrices of twenty-six and found nothing has not found the model
healthy; it has not looked. The coverage says how much was measured, and each rule that could not
run says why, so the verdict can be ``inconclusive`` rather than a ``healthy`` that means nothing.
"""
from __future__ import annotations

from typing import Any

from gradhealth.diagnose.structure import recurrent_types
from gradhealth.monitor.records import RunLog

__all__ = ["WEIGHT_COVERAGE_MIN", "coverage", "not_run_entry", "recurrent_without_time",
           "unmeasured_activations_and_sequences", "frozen_layers"]

# The depth rules compare the gradients of the weight matrices from input to output; with more
# than a tenth of them unmeasured, a stretch of the network where the gradient vanishes or grows
# could lie in the gap (one block of a ten-block model), so below this a clean result proves little.
WEIGHT_COVERAGE_MIN = 0.9
# at most this many unmeasured names are listed; the counts say the rest
MAX_NAMES = 10


def _measured_layers(log: RunLog) -> set[str]:
    return {name for record in log.records for name, stats in record.layers.items() if stats.grad_norm is not None}


def coverage(log: RunLog) -> dict[str, Any]:
    """Weight matrices measured of all trainable ones (tied copies counted once; frozen ones
    counted apart), activation modules hooked of all that look like activations, modules of no
    known role, sequences whose gradient through time could not be measured.

    ``known`` is False for a log that does not list the model's parameters (written before the
    monitor did): the coverage is then unknown, which is said rather than guessed.
    """
    meta = log.meta
    out: dict[str, Any] = {"known": bool(meta.parameters), "threshold": WEIGHT_COVERAGE_MIN}
    unclassified = [layer.name for layer in meta.layers if layer.role == "other"]
    hooked = meta.names("activation")
    unhooked, time_unmeasured = unmeasured_activations_and_sequences(log)
    out["activations"] = {"hooked": len(hooked), "total": len(hooked) + len(unhooked),
                          "unhooked": unhooked[:MAX_NAMES]}
    out["unclassified"] = unclassified[:MAX_NAMES]
    out["unclassified_count"] = len(unclassified)
    if meta.time_series:
        out["time_series"] = list(meta.time_series)
    if time_unmeasured:
        out["time_unmeasured"] = time_unmeasured[:MAX_NAMES]
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
        # frozen is no gap in what was seen: it has no gradient to see (a layer whose bias alone
        # trains, as in BitFit, has a gradient, but not this matrix)
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


# how the monitor worded a recurrent layer fed a PackedSequence, listed among the unhooked
# activations by logs written before ``time_unmeasured`` had a field of its own
_OLD_TIME_NOTE = "gradient through time not measured)"


def unmeasured_activations_and_sequences(log: RunLog) -> tuple[list[str], list[str]]:
    """The activations that were not measured, and the sequences whose gradient through time was
    not: a recurrent layer fed a PackedSequence is no activation, though old logs list it as one."""
    meta = log.meta
    unhooked = [u for u in meta.unhooked if not u.endswith(_OLD_TIME_NOTE)]
    moved = [u for u in meta.unhooked if u.endswith(_OLD_TIME_NOTE)]
    return unhooked, list(dict.fromkeys([*meta.time_unmeasured, *moved]))


def frozen_layers(log: RunLog) -> set[str]:
    """Layers all of whose parameters were frozen (``requires_grad=False``) and that got no gradient:
    left out of the depth profile as frozen, not taken for a gradient that vanished."""
    measured = _measured_layers(log)
    trainable: dict[str, bool] = {}
    for param in log.meta.parameters:
        if param.layer is not None:
            trainable[param.layer] = trainable.get(param.layer, False) or param.trainable
    return {layer for layer, any_trainable in trainable.items() if not any_trainable and layer not in measured}


def not_run_entry(rule: str, kinds: list[str], reason: str, *, blocks_verdict: bool = False) -> dict[str, Any]:
    """One rule that could not run: its name, the finding kinds it would give, why, and whether its
    absence leaves the verdict ``inconclusive``."""
    return {"rule": rule, "kinds": kinds, "reason": reason, "blocks_verdict": blocks_verdict}


def recurrent_without_time(log: RunLog) -> bool:
    """A recurrent model whose records carry no gradient through time."""
    return bool(recurrent_types(log) or log.meta.time_series) and not any(r.time_grads for r in log.records)
