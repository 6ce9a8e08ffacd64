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
norms, the largest gradient element, the post-clip norms (only where something changed the
gradients after ``step()``: their version counters say so), the real update (a copy of the
weights before the optimizer step, whose memory is kept between detailed steps on the CPU: the
one copy of the parameters the monitor makes, none with ``update_ratio=False``), whether every
weight layer's output is finite and a few kernels per activation output (``forward_tally.py``), and
a zero probe added to each recurrent layer's input (and to each ``watch_time`` tensor) for its gradient through time. Other
steps cost a counter increment. Once, at the first training forward pass, each repeated block's
autograd graph is read for a skip path. A non-finite loss or gradient found on a step whose forward
pass was not watched arms the watch for the next forward pass (one detailed step).

``GradientMonitor`` is the facade over four parts, one job each: ``hooks.py`` (the hooks and
which steps they measure), ``measure.py`` (the per-layer norms on the device), ``transfer.py``
(the one device-to-host copy of a step) and ``assembly.py`` (the record, the first NaN/Inf, the
sinks).
"""
from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradhealth.errors import ConfigError
from gradhealth.monitor.assembly import RecordAssembly
from gradhealth.monitor.grad_versions import GradVersions
from gradhealth.monitor.hooks import DETAIL_RATIO, MonitorHooks
from gradhealth.monitor.measure import LayerMeasures, scalar_piece
from gradhealth.monitor.records import BlockInfo, NonFiniteEvent, RunMeta, StepRecord
from gradhealth.monitor.structure import ModelLayout, layout_of
from gradhealth.monitor.transfer import HostTransfer, PendingStep
from gradhealth.runlock import RunLock, lock_file

__all__ = ["GradientMonitor"]


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
    steps that GradScaler skipped. ``update_ratio``: measure that update against a copy of the
    weights taken at ``step()`` on detailed steps (the one copy of the parameters the monitor
    keeps); ``False`` measures no update ratios and keeps no copy. ``jsonl``: a path the full run is appended to; ``sinks``:
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
        self.measure_updates = update_ratio
        if optimizer is None:
            self._optimizers: list[torch.optim.Optimizer] = []
        elif isinstance(optimizer, torch.optim.Optimizer):
            self._optimizers = [optimizer]
        else:
            self._optimizers = list(optimizer)
        self._config = dict(config or {})
        if self._optimizers and "optimizer" not in self._config:
            self._config["optimizer"] = "+".join(dict.fromkeys(type(o).__name__ for o in self._optimizers))
        self._name = name
        self._meta: RunMeta | None = None
        self._hooks = MonitorHooks(model, every=every, detail_every=detail_every, activations=activations)
        self._measures = LayerMeasures()
        self._transfer = HostTransfer()
        self._assembly = RecordAssembly(history=history, jsonl=jsonl, append=append, sinks=sinks,
                                        meta=lambda: self.meta)
        self._pending: PendingStep | None = None
        # the gradients as measured at the pending detailed step's step() (unscaled ones only)
        self._measured_grads: GradVersions | None = None
        # one writer per log: a second monitor on the same jsonl path is refused at attach
        self._jsonl = jsonl
        self._jsonl_lock: RunLock | None = None

    # the schedule's settings, kept by the hooks that follow it

    @property
    def every(self) -> int:
        return self._hooks.every

    @every.setter
    def every(self, value: int) -> None:
        self._hooks.every = value

    @property
    def detail_every(self) -> int:
        return self._hooks.detail_every

    @detail_every.setter
    def detail_every(self, value: int) -> None:
        self._hooks.detail_every = value

    @property
    def measure_activations(self) -> bool:
        return self._hooks.measure_activations

    @measure_activations.setter
    def measure_activations(self, value: bool) -> None:
        self._hooks.measure_activations = value

    # ---- lifecycle ---------------------------------------------------------------------------

    def attach(self) -> GradientMonitor:
        """Register the hooks (idempotent)."""
        if self._hooks.attached:
            return self
        if self._jsonl is not None and self._jsonl_lock is None:
            self._jsonl_lock = lock_file(self._jsonl)
        model = self._hooks.live_model()
        self._use_layout(layout_of(model))
        self._hooks.before_forward = self._check_unfinished_step
        self._hooks.attach(model, self._optimizers, self._on_optimizer_step)
        return self

    @property
    def _layout(self) -> ModelLayout:
        return self._measures.layout

    def _use_layout(self, layout: ModelLayout) -> None:
        self._hooks.layout = layout
        self._measures.use_layout(layout)
        self._assembly.forget_layer_order()

    def _follow_new_parameters(self) -> bool:
        """Measure the model's parameters as they are now, if they are not those found at attach.

        ``load_state_dict(..., assign=True)`` or a replaced layer gives the model new parameter
        objects; the old ones get no gradients and keep old values, so numbers read from them
        would be silently stale. Checked on detailed steps and on steps where no gradient was found.
        """
        model = self._hooks.model_or_none()
        if model is None or self._measures.is_current(model):
            return False
        self._hooks.remove_layer_hooks()
        self._use_layout(layout_of(model))
        self._hooks.set_active()
        return True

    def detach(self) -> None:
        """Remove every hook, finish the last record, close the sinks, drop all tensors."""
        self._materialize(wait=True)
        if self._hooks.attached:
            _ = self.meta
        self._hooks.detach()
        self._use_layout(ModelLayout())
        self._assembly.close()
        if self._jsonl_lock is not None:
            self._jsonl_lock, lock = None, self._jsonl_lock
            lock.release()

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
        return self._assembly.records

    @property
    def first_nonfinite(self) -> NonFiniteEvent | None:
        """The first NaN/Inf of the run: where (input, layer output, loss or gradient), batch, step."""
        _ = self.records  # every step measured so far, complete as ``records`` says
        return self._assembly.first_nonfinite

    def end_step(self, skipped: bool | None = None) -> StepRecord | None:
        """Complete the current record now; ``skipped`` overrides what the optimizer hooks saw."""
        if self._pending is None:
            return None
        if skipped is not None:
            self._pending.skipped = skipped
        self._materialize()
        return self._assembly.records[-1]

    @property
    def meta(self) -> RunMeta:
        """Layers in forward order with type and role, every parameter and where it was counted,
        what was not hooked, the sequences measured through time (and those that could not be), the
        repeated blocks, the config."""
        layout, hooks = self._layout, self._hooks
        if self._meta is None:
            self._meta = RunMeta(
                layers=layout.layer_info(hooks.forward_order or []),
                model=self._name,
                config=self._config,
                parameters=layout.parameters_now(),
                blocks=[BlockInfo(name, hooks.residual.get(name)) for name, _ in layout.blocks],
            )
        meta = self._meta
        # the sequences and their reasons show as the forward passes run: added as they come
        meta.time_series.extend(n for n in [n for n, _ in layout.recurrent] + hooks.time_probes.names
                                if n not in meta.time_series)
        meta.unhooked.extend(u for u in layout.unhooked if u not in meta.unhooked)
        meta.time_unmeasured.extend(u for u in hooks.time_probes.skipped if u not in meta.time_unmeasured)
        return meta

    def watch_time(self, name: str, x: Tensor, time_dim: int = 1) -> Tensor:
        """Measure the gradient that reaches each time step of a sequence tensor of your own.

        Call it inside forward, ``x = monitor.watch_time("encoder_in", x, time_dim=1)``: on
        detailed steps the record's ``time_grads[name]`` holds ``||dL/dx_t||`` per time step t
        (L2 over the other dims); on other steps ``x`` is returned as it is, at no cost.
        """
        if isinstance(time_dim, bool) or not isinstance(time_dim, int):
            raise ConfigError(f"time_dim must be an integer dimension of the tensor, not {time_dim!r}.")
        return self._hooks.watch_time(name, x, time_dim)

    @property
    def steps(self) -> int:
        """Optimizer steps seen so far (calls of ``step()``)."""
        return self._hooks.step

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._hooks.step, "batch": self._hooks.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._hooks.step = int(state.get("step", 0))
        self._hooks.batch = int(state.get("batch", -1))
        self._hooks.set_active()

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Measure the forward passes inside this block even on a step ``every`` would skip.

        What earlier forward passes of this step left is dropped, and a forward inside the block
        does not count as a new batch: it is for re-running a batch to see where it went wrong.
        """
        with self._hooks.capture():
            yield

    # ---- one optimizer step ------------------------------------------------------------------

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
        if not self._hooks.attached:
            raise ConfigError("the monitor is not attached: use it as a context manager or call attach() first.")
        # whether this step's forward passes were watched (read before the previous step's record
        # lands, which may arm the watch for the next forward pass)
        watched, armed = self._hooks.active, self._hooks.armed
        self._materialize(wait=False)  # the previous step, if its optimizer never stepped
        self._hooks.stop_block_checks()
        step = self._hooks.next_step()
        detailed = force or watched
        if watched and armed:
            self._hooks.armed = False
        if not (detailed or self._hooks.recorded(step)):
            self._pass_over_step()
            return
        self._fix_forward_order()
        pending = self._open_record(step, batch, lr, skipped, detailed)
        pending.armed = watched and armed
        device = self._measure_parameters(pending, grad_scale)
        self._add_loss_and_metrics(pending, device, loss, metrics)
        self._hooks.take_forward_stats(pending, device)
        self._pending = pending
        self._hooks.set_active()

    def _pass_over_step(self) -> None:
        """A step that is not recorded: drop what its forward passes left, schedule the next."""
        self._hooks.reset_forward_buffers()
        self._hooks.set_active()

    def _fix_forward_order(self) -> None:
        if self._hooks.fix_forward_order():
            self._meta = None
            _ = self.meta  # fixed now: it outlives detach()

    def _open_record(self, step: int, batch: int | None, lr: float | None, skipped: bool | None,
                     detailed: bool) -> PendingStep:
        if lr is None and self._optimizers:
            lr = float(self._optimizers[0].param_groups[0]["lr"])
        return PendingStep(step=step, batch=self._hooks.batch if batch is None else batch, lr=lr, skipped=skipped,
                           detailed=detailed)

    def _measure_parameters(self, pending: PendingStep, grad_scale: Tensor | float | None) -> torch.device:
        """Gradient norms; on a detailed step also weight norms and the copy for the update. The device."""
        measures = self._measures
        detailed = pending.detailed
        if detailed:
            self._follow_new_parameters()
        positions, grads = measures.grads()
        if not grads and not detailed and self._follow_new_parameters():
            positions, grads = measures.grads()
        device = measures.device
        pending.sharded = measures.sharded
        if detailed:
            pending.pieces["weight_l2"] = measures.weight_norms()
            if self._optimizers and self.measure_updates:
                # the weights before the optimizer step, for the real update it makes
                pending.snapshot = measures.copy_of_weights()
        if grads:
            pending.pieces.update(measures.gradient_norms(positions, grads, detailed, grad_scale))
        # the post-clip norms equal these while nothing touches the gradients (scaled ones are
        # divided by the scale here but not after clipping, so they are always measured again)
        self._measured_grads = None
        if detailed and grads and grad_scale is None and not measures.sharded:
            self._measured_grads = GradVersions.of(grads)
        return device

    @staticmethod
    def _add_loss_and_metrics(pending: PendingStep, device: torch.device, loss: Tensor | float | None,
                              metrics: dict[str, Tensor | float | None] | None) -> None:
        if loss is not None:
            pending.pieces["loss"] = scalar_piece(torch.as_tensor(loss), device)
        for key, value in (metrics or {}).items():
            if isinstance(value, Tensor):
                pending.metric_names.append(key)
                pending.pieces[f"metric:{key}"] = scalar_piece(value, device)
            else:
                pending.metric_floats[key] = None if value is None else float(value)

    @torch.no_grad()
    def after_clip(self, metrics: dict[str, Tensor | float | None] | None = None) -> None:
        """Measure the gradients again after clipping: ``grad_norm_post_clip`` per layer.

        ``metrics``: what the clipper said (e.g. whether it fired), added to the step's metrics.
        """
        pending = self._pending
        if pending is None:
            return
        measured, self._measured_grads = self._measured_grads, None
        if measured is not None and "grad_l2" in pending.pieces and measured.unchanged(self._measures.grads()[1]):
            post = pending.pieces["grad_l2"]  # nothing clipped them: the same norms, no second pass
        else:
            post = self._measures.post_clip_norms()
        if post is not None:
            pending.pieces["post_l2"] = post
        if metrics:
            self._add_loss_and_metrics(pending, self._measures.device, None, metrics)

    def _on_optimizer_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """Each attached optimizer's step post-hook: the step's record is complete once all have stepped."""
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

    # ---- finishing a record ------------------------------------------------------------------

    def _materialize(self, wait: bool = True) -> None:
        """Send the pending step to the host in one transfer; with ``wait``, finish every record."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._measure_update(pending)
            self._transfer.send(pending)
        self._receive(wait=wait)

    def _measure_update(self, pending: PendingStep) -> None:
        """The update norms, once the step is complete so the update of every optimizer is in them."""
        if pending.snapshot is not None and pending.stepped:
            pending.pieces["update_l2"] = self._measures.update_norms(pending.snapshot)
        pending.snapshot = None  # a step the optimizer skipped still holds its weights' copy

    def _receive(self, wait: bool) -> None:
        """Turn the steps whose numbers have landed into records, oldest first."""
        optimizers_known = bool(self._optimizers)
        for pending, values in self._transfer.receive(wait):
            record = self._assembly.add(pending, values, self._layout, self._hooks.forward_order, optimizers_known)
            if record.first_nonfinite is not None and not pending.detailed and self._hooks.attached:
                # found from the gradients only: watch the next forward pass, whose outputs'
                # extremes name the first module that goes bad, in forward order
                self._hooks.arm()

    def _check_unfinished_step(self) -> None:
        """At a training forward pass while a step waits for its optimizer: arm the forward watch
        if that step's loss or gradients are non-finite and already on the host (CPU: no sync).

        A loop that skips the optimizer step on a NaN leaves its record unfinished until the next
        ``step()``, which comes after this forward pass; on a GPU the record arms it when it lands.
        """
        pending = self._pending
        if pending is None or pending.detailed or self._hooks.armed:
            return
        for key in ("loss", "grad_l2"):
            piece = pending.pieces.get(key)
            if piece is not None and piece.device.type == "cpu" and not bool(torch.isfinite(piece).all()):
                self._hooks.arm()
                return
