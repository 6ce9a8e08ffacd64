"""GradientMonitor: per-layer gradient health of any PyTorch model, measured, not estimated.

Use it in any training loop::

    with GradientMonitor(model, optimizer=opt) as mon:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()               # under AMP: scaler.unscale_(opt) first
            mon.step(loss=loss)           # after backward / unscale / all-reduce, before clipping
            clip_grad_norm_(model.parameters(), 1.0)
            mon.after_clip()              # optional: post-clip norms
            opt.step(); opt.zero_grad()
    mon.records[-1].layers["blocks.3.conv1"].grad_norm

What it costs: a recorded step (``every``) is one fused ``torch._foreach_norm`` over the
gradients and ONE device-to-host transfer, done when the step's record is complete (after the
optimizer step, or at the next ``step()``). A detailed step (``detail_every``) adds the weight
norms, the largest gradient element, the real update (a copy of the weights before the optimizer
step, whose memory is kept between detailed steps on the CPU), the extremes of every layer's
output and five or six reductions per activation output. Other steps cost a counter increment.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradhealth.errors import ConfigError
from gradhealth.monitor.forward_tally import CallInfo, ForwardTally, summarize_calls
from gradhealth.monitor.records import (
    ActivationStats,
    JsonlWriter,
    LayerStats,
    NonFiniteEvent,
    RunMeta,
    StepRecord,
)
from gradhealth.monitor.stats import (
    NORM_DTYPE,
    fused_norms,
    group_l2,
    group_max,
    max_abs,
    stack_on,
)
from gradhealth.monitor.structure import ModelLayout, complete_order, features_last, layout_of, unwrap

__all__ = ["GradientMonitor"]


def _compiling() -> bool:
    # Under torch.compile our hooks do nothing, so they add no graph break; gradients are
    # measured outside the compiled graph and stay exact.
    return torch.compiler.is_compiling()


def _global_norm(layer_norms: list[float] | None) -> float | None:
    """The L2 norm over all parameters from the per-layer norms (each parameter is in one layer).

    On the host: hypot neither overflows nor underflows, where squares of float64 norms past
    1e154 would, and it costs the device no kernels.
    """
    return math.hypot(*layer_norms) if layer_norms is not None else None


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


@dataclass
class _Pending:
    """A measured step waiting for its optimizer step: device tensors, moved to host once."""

    step: int
    batch: int | None
    lr: float | None
    skipped: bool | None
    detailed: bool = False
    pieces: dict[str, Tensor] = field(default_factory=dict)
    # the measured forward calls, in the order they ran
    calls: list[CallInfo] = field(default_factory=list)
    input_batches: list[int] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    metric_floats: dict[str, float | None] = field(default_factory=dict)
    snapshot: list[Tensor] | None = None
    stepped: bool = False
    stepped_by: set[int] = field(default_factory=set)


@dataclass
class _InFlight:
    """A finished step whose numbers are on their way to the host (``ready`` is None on the CPU)."""

    pending: _Pending
    host: Tensor
    ready: Any = None  # a torch.cuda.Event recorded after the copy


# Without a detail_every, one recorded step in this many is detailed.
DETAIL_RATIO = 10

# On a GPU the numbers of a step are copied to the host without waiting (pinned memory, an
# event), so the CPU keeps queueing the next steps' kernels; a step's record is built once its
# copy has landed, at the latest when this many steps are waiting or when anything reads records.
MAX_IN_FLIGHT = 3

# The forward statistics of a detailed step are kept until step() (gradient accumulation runs
# several forwards per step); past this many training forwards without a step() the monitor
# stops adding to them, so a loop that never calls step() does not grow memory without bound.
MAX_FORWARDS_PER_STEP = 1024


class GradientMonitor:
    """Measure gradient norms, weight norms, update ratios and activation health per layer.

    ``every``: record every N-th optimizer step (gradient norms per layer, loss, lr).
    ``detail_every``: on steps that are a multiple of it, also weight norms, update ratios,
    max |grad|, activation health and where a NaN first appears in the forward pass
    (``detail_every=1``: everything on every recorded step). By default one recorded step in
    ten: ``10 * every``, so recording less often makes the detailed steps rarer in proportion.
    ``activations``: hook activation modules (sigmoid, tanh, ReLU family, GELU, SiLU, ELU) for
    mean/std, saturation and dead units.
    ``optimizer``: lets the monitor read the lr, measure the real update of each step, and see
    steps that GradScaler skipped. ``jsonl``: a path the full run is appended to; ``sinks``:
    other objects with ``write(record, meta)`` and ``close()`` (e.g. ``TensorBoardSink``).
    ``history``: how many records stay in memory (``records`` is a bounded deque).

    On a GPU a step's numbers travel to the host without stopping the training loop; reading
    ``records``, ``first_nonfinite`` or ``end_step()`` waits for those still on their way.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 1,
        detail_every: int | None = None,
        activations: bool = True,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        history: int = 10_000,
        jsonl: str | os.PathLike | None = None,
        sinks: Sequence[Any] = (),
        update_ratio: bool = True,
        config: dict[str, Any] | None = None,
        name: str | None = None,
        append: bool = False,
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a positive integer number of steps, not {every!r}.")
        if detail_every is None:
            detail_every = DETAIL_RATIO * every
        if isinstance(detail_every, bool) or not isinstance(detail_every, int) or detail_every < 1:
            raise ConfigError(f"detail_every must be a positive integer number of steps, not {detail_every!r}.")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ConfigError(f"history must be a positive integer, not {history!r}.")
        self.every = every
        self.detail_every = detail_every
        self.measure_activations = activations
        self.measure_updates = update_ratio
        if optimizer is None:
            self._optimizers: list[torch.optim.Optimizer] = []
        elif isinstance(optimizer, torch.optim.Optimizer):
            self._optimizers = [optimizer]
        else:
            self._optimizers = list(optimizer)
        self._model_ref = weakref.ref(unwrap(model))
        # a compiled model keeps its forward hooks for good: adding and removing them would make
        # torch.compile recompile; inside the compiled graph they do nothing anyway
        self._compiled = hasattr(model, "_orig_mod")
        self._records: deque[StepRecord] = deque(maxlen=history)
        self._config = dict(config or {})
        self._name = name
        self._jsonl_path = jsonl
        self._append = append
        self._sinks: list[Any] = list(sinks)
        self._writer: JsonlWriter | None = None
        self._meta: RunMeta | None = None
        self._layout = ModelLayout()
        self._handles: list[Any] = []
        self._layer_handles: list[Any] = []
        self._step = 0
        self._batch = -1
        self._active = False
        self._forced = False
        self._pending: _Pending | None = None
        self._in_flight: deque[_InFlight] = deque()
        self._ordered: list[int] = []
        self._ordered_key: tuple[int, int] | None = None
        self._forward_order: list[str] | None = None
        self._call_order: list[str] = []
        self._kept_copy: list[Tensor] | None = None
        self._reset_forward_buffers()
        self._first_nonfinite: NonFiniteEvent | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def attach(self) -> GradientMonitor:
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        model = self._model_ref()
        if model is None:
            raise ConfigError("the model this monitor was made for no longer exists.")
        if any(p.is_meta for p in model.parameters()):
            raise ConfigError("the model's parameters are still on the meta device: attach the monitor after "
                              "they are materialized (model.to_empty(...) or load_state_dict(..., assign=True)).")
        self._use_layout(layout_of(model))
        self._handles.append(model.register_forward_pre_hook(self._on_root_forward))
        for opt in self._optimizers:
            self._handles.append(opt.register_step_post_hook(self._on_optimizer_post))
        self._set_active()
        return self

    def _use_layout(self, layout: ModelLayout) -> None:
        self._layout = layout
        self._param_ids = {id(p) for p in layout.params}
        self._param_index: dict[torch.device, Tensor] = {}
        self._kept_copy: list[Tensor] | None = None
        self._all_positions = list(range(len(layout.params)))
        self._ordered_key = None

    def _follow_new_parameters(self) -> bool:
        """Measure the model's parameters as they are now, if they are not those found at attach.

        ``load_state_dict(..., assign=True)`` or a replaced layer gives the model new parameter
        objects; the old ones get no gradients and keep old values, so numbers read from them
        would be silently stale. Checked on detailed steps and on steps where no gradient was found.
        """
        model = self._model_ref()
        if model is None or {id(p) for p in model.parameters()} == self._param_ids:
            return False
        for handle in self._layer_handles:
            handle.remove()
        self._layer_handles.clear()
        self._use_layout(layout_of(model))
        self._set_active()
        return True

    def detach(self) -> None:
        """Remove every hook, finish the last record, close the sinks, drop all tensors."""
        self._materialize(wait=True)
        if self._handles:
            _ = self.meta
        for handle in self._handles + self._layer_handles:
            handle.remove()
        self._handles.clear()
        self._layer_handles.clear()
        self._layout = ModelLayout()
        self._param_index = {}
        self._kept_copy = None
        self._reset_forward_buffers()
        self._active = False
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            # attached again, the monitor goes on with the same file rather than starting it over
            self._append = True
        for sink in self._sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()

    close = detach

    def __enter__(self) -> GradientMonitor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # ---- public views ------------------------------------------------------------------------

    @property
    def records(self) -> deque[StepRecord]:
        """Complete recorded steps, oldest first (bounded by ``history``).

        With optimizers attached, a step is complete once every one of them has stepped (or at
        the next ``step()`` / ``end_step()`` if one did not: if none did, it is marked skipped);
        without one, as soon as it is read.
        """
        if not self._optimizers:
            self._materialize()
        self._receive(wait=True)
        return self._records

    @property
    def first_nonfinite(self) -> NonFiniteEvent | None:
        """The first NaN/Inf of the run: where (input, layer output, loss or gradient), batch, step."""
        _ = self.records  # every step measured so far, complete as ``records`` says
        return self._first_nonfinite

    def end_step(self, skipped: bool | None = None) -> StepRecord | None:
        """Complete the current record now; ``skipped`` overrides what the optimizer hooks saw."""
        if self._pending is None:
            return None
        if skipped is not None:
            self._pending.skipped = skipped
        self._materialize()
        return self._records[-1]

    @property
    def meta(self) -> RunMeta:
        """Layers in forward order with type and role, plus the run's config."""
        if self._meta is None:
            self._meta = RunMeta(
                layers=self._layout.layer_info(self._forward_order or []),
                model=self._name,
                config=self._config,
            )
        return self._meta

    @property
    def steps(self) -> int:
        """Optimizer steps seen so far (calls of ``step()``)."""
        return self._step

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step, "batch": self._batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = int(state.get("step", 0))
        self._batch = int(state.get("batch", -1))
        self._set_active()

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Measure the forward passes inside this block even on a step ``every`` would skip.

        What earlier forward passes of this step left is dropped, and a forward inside the block
        does not count as a new batch: it is for re-running a batch to see where it went wrong.
        """
        self._forced = True
        self._set_active()
        self._reset_forward_buffers()
        batch = self._batch
        try:
            yield
        finally:
            self._forced = False
            self._batch = batch

    # ---- hooks -------------------------------------------------------------------------------

    def _reset_forward_buffers(self) -> None:
        self._tally = ForwardTally()
        # per forward pass: its batch index and the smallest and largest input element
        self._input_extremes: list[tuple[int, Tensor]] = []
        self._call_order = []
        self._forwards = 0

    def _recorded(self, step: int) -> bool:
        return step % self.every == 0

    def _detailed(self, step: int) -> bool:
        return self._recorded(step) and step % self.detail_every == 0

    def _set_active(self) -> None:
        # forward hooks measure only the forward passes of a detailed step; between those they are
        # not registered at all, because any forward hook moves every call of its module onto
        # PyTorch's slower hook-handling path
        self._active = bool(self._handles) and (self._forced or self._detailed(self._step))
        wanted = self._active or (self._compiled and bool(self._handles))
        if wanted and not self._layer_handles:
            self._register_layer_hooks()
        elif not wanted and self._layer_handles:
            for handle in self._layer_handles:
                handle.remove()
            self._layer_handles.clear()

    def _register_layer_hooks(self) -> None:
        modules = list(zip(self._layout.layer_names, self._layout.layer_modules))
        if self.measure_activations:
            # PReLU owns parameters, so it is among the layers already
            modules += [(n, m) for n, m, _ in self._layout.activations if n not in self._layout.layer_names]
        self._layer_handles = [m.register_forward_hook(self._make_layer_hook(n, m)) for n, m in modules]
        if self._forward_order is None:
            # a module that owns parameters and has children (the model itself, attention) runs
            # before its children, though its forward hook fires after theirs: a pre-hook says when
            self._layer_handles += [m.register_forward_pre_hook(self._make_order_hook(n)) for n, m in modules
                                    if next(m.children(), None) is not None]

    def _make_order_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if _compiling() or not self._active or not module.training or self._forward_order is not None:
                return
            if name not in self._call_order:
                self._call_order.append(name)

        return hook

    def _on_root_forward(self, module: nn.Module, args: tuple) -> None:
        if _compiling() or not module.training:
            return
        self._batch += 1
        if not self._active:
            return
        self._forwards += 1
        if self._forwards > MAX_FORWARDS_PER_STEP:
            self._active = False  # until the next step()
            warnings.warn(f"GradientMonitor: {MAX_FORWARDS_PER_STEP} training forward passes without a step(); "
                          "this step's forward statistics stop there. Call mon.step() once per optimizer step.",
                          RuntimeWarning, stacklevel=2)
            return
        x = _first_tensor(args)
        if x is not None and x.is_floating_point() and x.numel():
            # the extremes tell exactly whether x holds a NaN or an Inf, in one pass, no mask
            self._input_extremes.append((self._batch, torch.stack(torch.aminmax(x.detach()))))

    def _make_layer_hook(self, name: str, module: nn.Module):
        rules = {n: r for n, _, r in self._layout.activations} if self.measure_activations else {}
        rule = rules.get(name)
        units_last = features_last(module)

        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if _compiling() or not self._active or not module.training:
                return
            out = _first_tensor(output)
            if out is None or not out.is_floating_point():
                return
            if self._forward_order is None and name not in self._call_order:
                self._call_order.append(name)
            if rule is None:
                # a weight layer: only whether its output is finite, for the first bad layer
                if out.numel():
                    self._tally.add_layer(name, out, units_last)
                return
            inp = _first_tensor(inputs) if rule.uses_input else None
            # an in-place activation has overwritten its input: rules that need it cannot run
            if inp is not None and inp.data_ptr() == out.data_ptr():
                inp = None
            if out.numel():
                self._tally.add_activation(name, rule, module, inp, out)

        return hook

    def _on_optimizer_post(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        pending = self._pending
        if pending is None:
            return
        if pending.detailed and not pending.stepped and "post_l2" not in pending.pieces:
            # the optimizer has just used the gradients: whatever clipping happened (in any
            # framework, e.g. Lightning's gradient_clip_val) is in them now
            self.after_clip()
        pending.stepped = True
        pending.stepped_by.add(id(optimizer))
        # the record is complete once every optimizer has stepped (one that does not step, as
        # GradScaler may decide, leaves it to the next step() or end_step())
        if len(pending.stepped_by) >= len(self._optimizers):
            self._materialize(wait=False)

    @torch.no_grad()
    def _measure_update(self, pending: _Pending) -> None:
        """The norm of each layer's real update: the weights before the step minus those after."""
        deltas = pending.snapshot
        pending.snapshot = None
        # in place: before - after has the norm of the update, without a second copy
        torch._foreach_sub_(deltas, [p.detach() for p in self._layout.params])
        norms = fused_norms(deltas)
        pending.pieces["update_l2"] = self._per_layer(norms, self._all_positions)[0]

    # ---- measuring ---------------------------------------------------------------------------

    def _index_on(self, device: torch.device, positions: list[int]) -> Tensor:
        full = self._param_index.get(device)
        if full is None:
            full = torch.tensor(self._layout.param_layer, dtype=torch.long, device=device)
            self._param_index[device] = full
        if len(positions) == len(self._layout.params):
            return full
        return full[torch.tensor(positions, dtype=torch.long, device=device)]

    def _per_layer(self, norms: Tensor, positions: list[int], maxes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        groups = len(self._layout.layer_names)
        index = self._index_on(norms.device, positions)
        l2 = group_l2(norms, index, groups)
        mx = group_max(maxes, index, groups) if maxes is not None else None
        return l2, mx

    def _copy_of_weights(self, params: list[Tensor]) -> list[Tensor]:
        """The weights before the optimizer step, for the real update it makes.

        On the CPU the copy's memory is kept for the next detailed step: memory the process has
        not touched yet costs a page fault per 4 KiB, several times the copy itself (a GPU's
        caching allocator keeps freed memory already, so there the copy is made afresh).
        """
        weights = [p.detach() for p in params]
        if any(w.device.type != "cpu" for w in weights):
            return torch._foreach_mul(weights, 1.0)
        kept = self._kept_copy
        if kept is None or len(kept) != len(weights) or any(
                k.shape != w.shape or k.dtype != w.dtype for k, w in zip(kept, weights)):
            kept = self._kept_copy = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]
        torch._foreach_copy_(kept, weights)
        return kept

    def _grads(self) -> tuple[list[int], list[Tensor]]:
        # read under no_grad, so no detach: the norms record no graph
        grads = [p.grad for p in self._layout.params]
        if not any(g is None for g in grads):
            return self._all_positions, grads
        positions = [i for i, g in enumerate(grads) if g is not None]
        return positions, [grads[i] for i in positions]

    @torch.no_grad()
    def step(
        self,
        loss: Tensor | float | None = None,
        *,
        batch: int | None = None,
        lr: float | None = None,
        grad_scale: Tensor | float | None = None,
        skipped: bool | None = None,
        force: bool = False,
        metrics: dict[str, Tensor | float | None] | None = None,
    ) -> None:
        """Measure this optimizer step: call after backward (and unscale / all-reduce), before clipping.

        ``grad_scale``: pass the GradScaler's scale if the gradients are still scaled, and the
        norms are divided by it. ``skipped``: say so when you skip the optimizer step yourself
        (with an ``optimizer`` attached the monitor sees it). ``force``: record this step even
        if ``every`` would not.
        """
        if not self._handles:
            raise ConfigError("the monitor is not attached: use it as a context manager or call attach() first.")
        self._materialize(wait=False)  # the previous step, if its optimizer never stepped
        step = self._step
        self._step += 1
        detailed = force or self._active
        if not (detailed or self._recorded(step)):
            self._reset_forward_buffers()
            self._set_active()
            return
        if self._forward_order is None and self._call_order:
            self._forward_order = list(self._call_order)
            self._meta = None
            _ = self.meta  # fixed now: it outlives detach()
        if lr is None and self._optimizers:
            lr = float(self._optimizers[0].param_groups[0]["lr"])
        pending = _Pending(step=step, batch=self._batch if batch is None else batch, lr=lr, skipped=skipped,
                           detailed=detailed)

        if detailed:
            self._follow_new_parameters()
        positions, grads = self._grads()
        if not grads and not detailed and self._follow_new_parameters():
            positions, grads = self._grads()
        params = self._layout.params
        device = params[0].device if params else torch.device("cpu")
        if detailed:
            weight_l2, _ = self._per_layer(fused_norms([p.detach() for p in params]), self._all_positions)
            pending.pieces["weight_l2"] = weight_l2
            if self._optimizers and self.measure_updates:
                # the weights before the optimizer step, for the real update it makes
                pending.snapshot = self._copy_of_weights(params)
        if grads:
            norms = fused_norms(grads)
            maxes = max_abs(grads) if detailed else None
            if grad_scale is not None:
                inv = 1.0 / torch.as_tensor(grad_scale, dtype=NORM_DTYPE, device=norms.device)
                norms = norms * inv
                maxes = maxes * inv if maxes is not None else None
            grad_l2, grad_max = self._per_layer(norms, positions, maxes)
            pending.pieces["grad_l2"] = grad_l2
            if len(positions) < len(params):
                # which layers have a gradient at all (without this piece: every layer)
                has = torch.zeros(len(self._layout.layer_names), dtype=NORM_DTYPE, device=norms.device)
                pending.pieces["has_grad"] = has.index_fill_(0, self._index_on(norms.device, positions), 1.0)
            if grad_max is not None:
                pending.pieces["grad_max"] = grad_max
        if loss is not None:
            pending.pieces["loss"] = torch.as_tensor(loss).detach().to(device, NORM_DTYPE).reshape(1)
        for key, value in (metrics or {}).items():
            if isinstance(value, Tensor):
                pending.metric_names.append(key)
                pending.pieces[f"metric:{key}"] = value.detach().to(device, NORM_DTYPE).reshape(1)
            else:
                pending.metric_floats[key] = None if value is None else float(value)
        self._take_forward_stats(pending, device)
        self._pending = pending
        self._set_active()

    def _take_forward_stats(self, pending: _Pending, device: torch.device) -> None:
        if self._tally:
            pending.calls = self._tally.calls
            pending.pieces.update(self._tally.pieces(device, NORM_DTYPE))
        if self._input_extremes:
            pending.input_batches = [b for b, _ in self._input_extremes]
            pending.pieces["in_extremes"] = stack_on([e for _, e in self._input_extremes], device).to(NORM_DTYPE)
        self._reset_forward_buffers()

    @torch.no_grad()
    def after_clip(self) -> None:
        """Measure the gradients again after clipping: ``grad_norm_post_clip`` per layer."""
        pending = self._pending
        if pending is None:
            return
        positions, grads = self._grads()
        if grads:
            norms = fused_norms(grads)
            pending.pieces["post_l2"], _ = self._per_layer(norms, positions)

    # ---- finishing a record ------------------------------------------------------------------

    def _materialize(self, wait: bool = True) -> None:
        """Send the pending step to the host in one transfer; with ``wait``, finish every record."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._send(pending)
        self._receive(wait=wait)

    def _send(self, pending: _Pending) -> None:
        if pending.snapshot is not None and pending.stepped:
            # measured when the step is complete, so the update of every optimizer is in it
            self._measure_update(pending)
        pending.snapshot = None  # a step the optimizer skipped still holds its weights' copy
        pieces = list(pending.pieces.values())
        if not pieces:
            self._in_flight.append(_InFlight(pending, torch.zeros(0, dtype=NORM_DTYPE)))
            return
        device = pieces[0].device
        # the pieces are float64 vectors on one device already, unless the model spans several
        flat = torch.cat([p if p.device == device and p.dim() == 1 else p.to(device).reshape(-1) for p in pieces])
        if flat.dtype != NORM_DTYPE:
            flat = flat.to(NORM_DTYPE)
        if flat.device.type != "cuda":
            self._in_flight.append(_InFlight(pending, flat.cpu()))
            return
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(flat.device))
        self._in_flight.append(_InFlight(pending, host, ready))

    def _receive(self, wait: bool) -> None:
        """Turn the steps whose numbers have landed into records, oldest first."""
        while self._in_flight:
            head = self._in_flight[0]
            if head.ready is not None:
                if not (wait or len(self._in_flight) > MAX_IN_FLIGHT or head.ready.query()):
                    return
                head.ready.synchronize()
            self._in_flight.popleft()
            flat = head.host.tolist()
            values: dict[str, list[float]] = {}
            offset = 0
            for key, piece in head.pending.pieces.items():
                values[key] = flat[offset:offset + piece.numel()]
                offset += piece.numel()
            record = self._build_record(head.pending, values)
            self._records.append(record)
            self._emit(record)

    def _layers_in_forward_order(self) -> list[int]:
        """Layer indices in the order the forward pass ran them (see ``complete_order``)."""
        key = (id(self._forward_order), len(self._layout.layer_names))
        if self._ordered_key != key:
            names = self._layout.layer_names
            index = {n: i for i, n in enumerate(names)}
            self._ordered = [index[n] for n in complete_order(self._forward_order or [], names)]
            self._ordered_key = key
        return self._ordered

    def _build_record(self, pending: _Pending, v: dict[str, list[float]]) -> StepRecord:
        names = self._layout.layer_names
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
                  for i in self._layers_in_forward_order()}
        summaries, bad_calls = summarize_calls(pending.calls, v.get("fwd_extremes", []), v.get("act_moments", []),
                                               v.get("act_counts", []))
        # in the layout's order of activation modules
        activations = {name: ActivationStats(**summaries[name])
                       for name, _, _ in self._layout.activations if name in summaries}
        loss = v["loss"][0] if "loss" in v else None
        stepped_known = bool(self._optimizers)
        skipped = pending.skipped if pending.skipped is not None else (stepped_known and not pending.stepped)
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
        )
        record.first_nonfinite = self._locate_nonfinite(pending, v, record, bad_calls)
        if record.first_nonfinite is not None and self._first_nonfinite is None:
            self._first_nonfinite = record.first_nonfinite
        return record

    def _locate_nonfinite(self, pending: _Pending, v: dict[str, list[float]], record: StepRecord,
                          bad_calls: list[str]) -> NonFiniteEvent | None:
        """The earliest place NaN/Inf shows: input, forward calls as they ran, loss, then backward order."""
        extremes = v.get("in_extremes", [])
        for i, batch in enumerate(pending.input_batches):
            if not (math.isfinite(extremes[2 * i]) and math.isfinite(extremes[2 * i + 1])):
                return NonFiniteEvent("input", None, batch, pending.step)
        if bad_calls:
            name = bad_calls[0]
            kind = "activation" if name in record.activations else "forward"
            return NonFiniteEvent(kind, name, pending.batch, pending.step)
        if record.loss is not None and not math.isfinite(record.loss):
            return NonFiniteEvent("loss", None, pending.batch, pending.step)
        # backward runs from the output to the input: the first bad gradient is the last layer's
        for name in reversed(list(record.layers)):
            if record.layers[name].grad_nonfinite:
                return NonFiniteEvent("gradient", name, pending.batch, pending.step)
        return None

    def _emit(self, record: StepRecord) -> None:
        if self._jsonl_path is not None and self._writer is None:
            self._writer = JsonlWriter(self._jsonl_path, self.meta, append=self._append)
        if self._writer is not None:
            self._writer.write(record)
        for sink in self._sinks:
            sink.write(record, self.meta)
