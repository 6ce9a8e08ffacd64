"""``GradHealthCallback``: the GradientMonitor inside a Hugging Face ``transformers.Trainer``.

Where each number comes from, in the Trainer's order of one optimizer step::

    backward of the last micro-batch   ->  pre-clip norms (``grad_norm``)      end of that backward
    unscale (fp16) + clip to max_grad_norm
    on_pre_optimizer_step              ->  post-clip norms (``grad_norm_post_clip``)
    optimizer.step()                   ->  update ratios (detailed steps); the record is complete

The Trainer offers no callback between backward and its own clipping (``on_pre_optimizer_step``
comes after the clip), so the pre-clip measurement runs as the backward pass finishes: a hook on
the model's output, which every backward of the loss passes through, queues it on the autograd
engine. Under fp16 the gradients are still scaled then, and the monitor divides by the scale.
Files: ``metrics.jsonl`` during training, ``findings.json`` and ``report.html`` at the end, in
``args.output_dir`` (or ``out``), written by the world-process-zero only.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "gradhealth.integrations.transformers needs transformers: pip install 'gradhealth[transformers]'."
    ) from None

from gradhealth.integrations._run_files import METRICS_FILE, diagnose_run_folder, verdict_line
from gradhealth.monitor.monitor import GradientMonitor
from gradhealth.monitor.records import StepRecord

__all__ = ["GradHealthCallback"]


def _output_tensors(output: Any) -> Iterator[Tensor]:
    """The tensors in a model's output (a ModelOutput is a dict, older models return tuples)."""
    if isinstance(output, Tensor):
        yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from _output_tensors(value)
    elif isinstance(output, (tuple, list)):
        for value in output:
            yield from _output_tensors(value)


def _syncs_gradients() -> bool:
    """Whether this backward is the last micro-batch of an optimizer step (the Trainer sets it)."""
    try:
        from accelerate.state import GradientState
    except ImportError:  # an old Trainer without accelerate steps after every backward
        return True
    return bool(GradientState().sync_gradients)


def _queue_after_backward(callback: Any) -> None:
    # the autograd engine runs queued callbacks once the whole backward pass is done, in order
    torch.autograd.Variable._execution_engine.queue_callback(callback)


class GradHealthCallback(TrainerCallback):
    """Record per-layer gradient health of the Trainer's model and diagnose the run at its end.

    ``out``: the folder for metrics.jsonl, findings.json and report.html (default: the Trainer's
    ``output_dir``). ``report``: diagnose and write findings.json and report.html when training
    ends. ``every``, ``detail_every``, ``activations``, ``history`` are the GradientMonitor's.
    """

    def __init__(self, *, every: int = 1, detail_every: int | None = None, activations: bool = True,
                 history: int = 10_000, out: str | os.PathLike | None = None, report: bool = True):
        super().__init__()
        self._options = dict(every=every, detail_every=detail_every, activations=activations, history=history)
        self._out = out
        self._report = report
        self.monitor: GradientMonitor | None = None
        self.folder: Path | None = None
        self.diagnosis = None
        self._handles: list[Any] = []
        self._losses: list[Tensor] = []
        self._queued = False
        self._scaler: Any = None
        self._state: Any = None

    @property
    def records(self) -> list[StepRecord]:
        return list(self.monitor.records) if self.monitor is not None else []

    # ---- Trainer events ------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        self.folder = Path(self._out if self._out is not None else args.output_dir)
        self._state = state
        # accelerate wraps the optimizer; hooks go on the torch optimizer that really steps
        inner = getattr(optimizer, "optimizer", optimizer)
        scaler = getattr(optimizer, "scaler", None)
        self._scaler = scaler if scaler is not None and scaler.is_enabled() else None
        resumed = state.global_step > 0
        self.monitor = GradientMonitor(
            model, optimizer=inner, name=type(model).__name__,
            jsonl=self.folder / METRICS_FILE if state.is_world_process_zero else None, append=resumed,
            config={"max_grad_norm": args.max_grad_norm, "learning_rate": args.learning_rate,
                    "gradient_accumulation_steps": args.gradient_accumulation_steps},
            **self._options,
        ).attach()
        if resumed:  # record steps by the Trainer's global step, also after a resume
            self.monitor.load_state_dict({"step": state.global_step})
        self._handles.append(model.register_forward_hook(self._on_model_output))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # a backward that failed half-way must not keep the next step from being measured
        self._queued = False
        self._losses.clear()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # after the Trainer's clip, before the optimizer uses the gradients
        if self.monitor is not None:
            self.monitor.after_clip()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # a step the fp16 scaler skipped never reached the optimizer: close its record as skipped
        if self.monitor is not None:
            self.monitor.end_step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is None:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.monitor.detach()
        if self._report and state.is_world_process_zero:
            self.diagnosis = diagnose_run_folder(self.folder)
            print(verdict_line(self.diagnosis, self.folder))

    # ---- measuring at the end of backward --------------------------------------------------

    def _on_model_output(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # evaluation and generation: no backward follows
        loss = output.get("loss") if isinstance(output, dict) else None
        if isinstance(loss, Tensor):
            self._losses.append(loss.detach())
        for tensor in _output_tensors(output):
            if tensor.requires_grad:
                tensor.register_hook(self._on_backward_start)

    def _on_backward_start(self, grad: Tensor) -> None:
        if self._queued or not _syncs_gradients():
            return
        self._queued = True
        # two hops: DDP and FSDP queue their own end-of-backward work (the all-reduce) during this
        # backward, after this hook; queued from the first callback, the measurement runs after theirs
        _queue_after_backward(lambda: _queue_after_backward(self._measure))

    def _measure(self) -> None:
        self._queued = False
        loss = torch.stack(self._losses).mean() if self._losses else None
        self._losses.clear()
        scale = self._scaler.get_scale() if self._scaler is not None else None
        self.monitor.step(loss=loss, batch=self._state.global_step, grad_scale=scale)
