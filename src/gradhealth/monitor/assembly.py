"""From a step's host numbers to a ``StepRecord``: per-layer columns, the first NaN/Inf, the sinks.

Runs on the host only, once per recorded step, after the step's one transfer (``transfer.py``).
"""
from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from gradhealth.monitor.forward_tally import summarize_calls
from gradhealth.monitor.records import (
    ActivationStats,
    JsonlWriter,
    LayerStats,
    NonFiniteEvent,
    RunMeta,
    StepRecord,
)
from gradhealth.monitor.structure import ModelLayout, complete_order
from gradhealth.monitor.time_probes import PIECE_PREFIX
from gradhealth.monitor.transfer import PendingStep

__all__ = ["RecordAssembly", "build_record", "locate_nonfinite"]


def _global_norm(layer_norms: list[float] | None) -> float | None:
    """The L2 norm over all parameters from the per-layer norms (each parameter is in one layer).

    On the host: hypot neither overflows nor underflows, where squares of float64 norms past
    1e154 would, and it costs the device no kernels.
    """
    return math.hypot(*layer_norms) if layer_norms is not None else None


def build_record(pending: PendingStep, v: dict[str, list[float]], layout: ModelLayout, layer_order: list[int],
                 optimizers_known: bool) -> StepRecord:
    """The record of a step from its pieces read back as host floats (``v``), layers in ``layer_order``.

    ``optimizers_known``: an optimizer was attached, so a step none of them took counts as skipped.
    """
    names = layout.layer_names
    grad, post, gmax = v.get("grad_l2"), v.get("post_l2"), v.get("grad_max")
    weight, update = v.get("weight_l2"), v.get("update_l2")
    # column by column (this runs for every recorded step of every layer)
    absent = [None] * len(names)
    has = v.get("has_grad")
    if has is None:  # every layer has a gradient, or none has
        grad_col, post_col, max_col = grad or absent, post or absent, gmax or absent
    else:
        grad_col, post_col, max_col = ([x if h else None for x, h in zip(col, has)] if col else absent
                                       for col in (grad, post, gmax))
    weight_col = weight or absent
    ratio_col = [u / w if w else None for u, w in zip(update, weight_col)] if update else absent
    bad_col = [0 if g is None or math.isfinite(g) else 1 for g in grad_col]
    layers = {names[i]: LayerStats(grad_norm=grad_col[i], grad_norm_post_clip=post_col[i], grad_max=max_col[i],
                                   weight_norm=weight_col[i], update_ratio=ratio_col[i],
                                   grad_nonfinite=bad_col[i])
              for i in layer_order}
    summaries, bad_calls = summarize_calls(pending.calls, v.get("fwd_extremes", []), v.get("act_moments", []),
                                           v.get("act_counts", []))
    # in the layout's order of activation modules
    activations = {name: ActivationStats(**summaries[name])
                   for name, _, _ in layout.activations if name in summaries}
    loss = v["loss"][0] if "loss" in v else None
    skipped = pending.skipped if pending.skipped is not None else (optimizers_known and not pending.stepped)
    metrics = dict(pending.metric_floats)
    for key in pending.metric_names:
        metrics[key] = v[f"metric:{key}"][0]
    record = StepRecord(
        step=pending.step,
        loss=loss,
        lr=pending.lr,
        global_grad_norm=_global_norm(grad),
        global_grad_norm_post_clip=_global_norm(post),
        skipped=bool(skipped),
        batch=pending.batch,
        layers=layers,
        activations=activations,
        metrics=metrics,
        time_grads={key[len(PIECE_PREFIX):]: values for key, values in v.items() if key.startswith(PIECE_PREFIX)},
    )
    ranks = v.get("grad_bad_rank")
    bad_rank = {names[i]: int(ranks[i]) for i in layer_order if ranks[i] >= 0} if ranks else None
    record.first_nonfinite = locate_nonfinite(pending, v, record, bad_calls, bad_rank)
    return record


def locate_nonfinite(pending: PendingStep, v: dict[str, list[float]], record: StepRecord,
                     bad_calls: list[str], bad_rank: dict[str, int] | None = None) -> NonFiniteEvent | None:
    """The earliest place NaN/Inf shows: input, forward calls as they ran, loss, then backward order.

    A non-finite loss on a step whose forward pass was not watched also names the layer whose
    gradient went bad first in backward order (the one nearest the output): all that was measured.
    ``bad_rank``: for a sharded model, the rank that had each layer's non-finite gradient.
    """
    bad_rank = bad_rank or {}
    extremes = v.get("in_extremes", [])
    for i, batch in enumerate(pending.input_batches):
        if not (math.isfinite(extremes[2 * i]) and math.isfinite(extremes[2 * i + 1])):
            return NonFiniteEvent("input", None, batch, pending.step)
    if bad_calls:
        name = bad_calls[0]
        kind = "activation" if name in record.activations else "forward"
        return NonFiniteEvent(kind, name, pending.batch, pending.step)
    # backward runs from the output to the input: the first bad gradient is the last layer's
    first_bad = next((name for name in reversed(list(record.layers)) if record.layers[name].grad_nonfinite), None)
    if record.loss is not None and not math.isfinite(record.loss):
        return NonFiniteEvent("loss", None if pending.detailed else first_bad, pending.batch, pending.step)
    if first_bad is not None:
        return NonFiniteEvent("gradient", first_bad, pending.batch, pending.step, bad_rank.get(first_bad))
    return None


class RecordAssembly:
    """Builds the records of the steps read back, keeps the latest ``history``, and emits them.

    ``meta`` gives the run's metadata when a sink first needs it (it is fixed once the forward
    order is known).
    """

    def __init__(self, *, history: int, jsonl: str | os.PathLike | None, append: bool, sinks: Sequence[Any],
                 meta: Callable[[], RunMeta]):
        self.records: deque[StepRecord] = deque(maxlen=history)
        self.first_nonfinite: NonFiniteEvent | None = None
        self._refinable = False
        self._jsonl_path = jsonl
        self._append = append
        self._sinks: list[Any] = list(sinks)
        self._writer: JsonlWriter | None = None
        self._meta = meta
        self._ordered: list[int] = []
        self._ordered_key: tuple[int, int] | None = None

    def forget_layer_order(self) -> None:
        """The layout changed: work the layer order out again for the next record."""
        self._ordered_key = None

    def layers_in_forward_order(self, layout: ModelLayout, forward_order: list[str] | None) -> list[int]:
        """Layer indices in the order the forward pass ran them (see ``complete_order``)."""
        key = (id(forward_order), len(layout.layer_names))
        if self._ordered_key != key:
            names = layout.layer_names
            index = {n: i for i, n in enumerate(names)}
            self._ordered = [index[n] for n in complete_order(forward_order or [], names)]
            self._ordered_key = key
        return self._ordered

    def add(self, pending: PendingStep, values: dict[str, list[float]], layout: ModelLayout,
            forward_order: list[str] | None, optimizers_known: bool) -> StepRecord:
        """Build the step's record, keep it, note the run's first NaN/Inf, and write it to the sinks."""
        record = build_record(pending, values, layout, self.layers_in_forward_order(layout, forward_order),
                              optimizers_known)
        event = record.first_nonfinite
        if event is not None and self.first_nonfinite is None:
            self.first_nonfinite = event
            self._refinable = event.kind == "loss" and event.layer is not None and record.skipped
        elif event is not None and pending.armed and self._refinable and event.kind in ("input", "forward", "activation"):
            # a non-finite loss on an unwatched step says only that the forward pass went bad; the
            # watch it armed names where, if the optimizer did not step on it (then the weights
            # are as they were, where after a NaN step they would all be NaN from the first layer)
            self.first_nonfinite = event
            self._refinable = False
        self.records.append(record)
        self._emit(record)
        return record

    def _emit(self, record: StepRecord) -> None:
        if self._jsonl_path is not None and self._writer is None:
            self._writer = JsonlWriter(self._jsonl_path, self._meta(), append=self._append)
        if self._writer is not None:
            self._writer.write(record)
        for sink in self._sinks:
            sink.write(record, self._meta())

    def close(self) -> None:
        """Close the jsonl file and every sink."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            # attached again, the monitor goes on with the same file rather than starting it over
            self._append = True
        for sink in self._sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()
