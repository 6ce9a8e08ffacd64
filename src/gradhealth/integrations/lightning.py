"""``GradHealthCallback``: the GradientMonitor inside a Lightning Trainer.

Lightning runs backward, unscales AMP gradients, then calls ``on_before_optimizer_step`` (once per
optimizer step, after gradient accumulation) and only then clips: that is where the monitor
measures, so the recorded norms are the true, pre-clip ones. The post-clip norms are read when
the optimizer steps, from the gradients it actually used.
"""
from __future__ import annotations

import os
from typing import Any

import torch

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError:
        raise ImportError(
            "gradhealth.integrations.lightning needs Lightning: pip install 'gradhealth[lightning]'."
        ) from None

from gradhealth.monitor.monitor import GradientMonitor
from gradhealth.monitor.records import StepRecord

__all__ = ["GradHealthCallback"]


class GradHealthCallback(Callback):
    """Record per-layer gradient health of the LightningModule during ``trainer.fit``.

    ``jsonl``: a path the records are written to (by the global-zero process only).
    The other arguments are the GradientMonitor's.
    """

    def __init__(self, *, every: int = 1, detail_every: int | None = None, activations: bool = True,
                 jsonl: str | os.PathLike | None = None, history: int = 10_000):
        super().__init__()
        self._options = dict(every=every, detail_every=detail_every, activations=activations, history=history)
        self._jsonl = jsonl
        self.monitor: GradientMonitor | None = None
        self._losses: list[torch.Tensor] = []

    @property
    def records(self) -> list[StepRecord]:
        return list(self.monitor.records) if self.monitor is not None else []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.monitor = GradientMonitor(
            pl_module, optimizer=list(trainer.optimizers), name=type(pl_module).__name__,
            jsonl=self._jsonl if trainer.is_global_zero else None, **self._options,
        ).attach()

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        # with accumulation Lightning has already divided each micro-batch loss by their number
        loss = torch.stack(self._losses).sum() if self._losses else None
        self._losses.clear()
        self.monitor.step(loss=loss, batch=trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # a step that AMP skipped never reached the optimizer: close its record as skipped
        if self.monitor is not None:
            self.monitor.end_step()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.detach()
