"""``GradHealthCallback``: the GradientMonitor inside a Lightning Trainer.

Lightning runs backward, unscales AMP gradients, then calls ``on_before_optimizer_step`` (once per
optimizer step, after gradient accumulation) and only then clips: that is where the monitor
measures, so the recorded norms are the true, pre-clip ones. The post-clip norms are read when
the optimizer has stepped, from the gradients it actually used.

Every ``log_every_n_steps`` the global pre- and post-clip norms and each layer's norm go to the
Trainer's loggers (``gradhealth/grad_norm``, ``gradhealth/grad_norm_post_clip``,
``gradhealth/grad_norm/<layer>``). When ``fit`` ends, ``metrics.jsonl``, ``findings.json`` and
``report.html`` are in the Trainer's log folder (``trainer.log_dir``), written by global zero.
"""
from __future__ import annotations

import os
from pathlib import Path
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

from gradhealth.integrations._run_files import METRICS_FILE, diagnose_run_folder, verdict_line
from gradhealth.monitor.monitor import GradientMonitor
from gradhealth.monitor.records import StepRecord

__all__ = ["GradHealthCallback", "LOG_PREFIX", "logged_values"]

LOG_PREFIX = "gradhealth/"


def logged_values(record: StepRecord) -> dict[str, float]:
    """What one record sends to the loggers: global pre/post-clip norms, then each layer's norm."""
    values = {f"{LOG_PREFIX}grad_norm": record.global_grad_norm,
              f"{LOG_PREFIX}grad_norm_post_clip": record.global_grad_norm_post_clip}
    values.update({f"{LOG_PREFIX}grad_norm/{name}": stats.grad_norm for name, stats in record.layers.items()})
    return {key: float(value) for key, value in values.items() if value is not None}


class GradHealthCallback(Callback):
    """Record per-layer gradient health of the LightningModule during ``trainer.fit``.

    ``out``: the folder for metrics.jsonl, findings.json and report.html (default: the Trainer's
    ``log_dir``, which is ``default_root_dir`` without a logger). ``jsonl``: another path for the
    records. ``log``: send norms to the Trainer's loggers. ``report``: diagnose the run when fit
    ends. The other arguments are the GradientMonitor's.
    """

    def __init__(self, *, every: int = 1, detail_every: int | None = None, activations: bool = True,
                 jsonl: str | os.PathLike | None = None, history: int = 10_000,
                 out: str | os.PathLike | None = None, log: bool = True, report: bool = True):
        super().__init__()
        self._options = dict(every=every, detail_every=detail_every, activations=activations, history=history)
        self._jsonl = jsonl
        self._out = out
        self._log = log
        self._report = report
        self.monitor: GradientMonitor | None = None
        self.folder: Path | None = None
        self.diagnosis = None
        self._losses: list[torch.Tensor] = []
        self._handles: list[Any] = []
        self._measured_step: int | None = None

    @property
    def records(self) -> list[StepRecord]:
        return list(self.monitor.records) if self.monitor is not None else []

    @property
    def metrics_path(self) -> Path | None:
        if self._jsonl is not None:
            return Path(self._jsonl)
        return self.folder / METRICS_FILE if self.folder is not None else None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # log_dir is broadcast from global zero: every process must ask for it
        log_dir = trainer.log_dir
        self.folder = Path(self._out if self._out is not None else (log_dir or trainer.default_root_dir))
        optimizers = list(trainer.optimizers)
        # registered before the monitor's own hooks, so the post-clip norms are in the step's
        # record before the monitor closes it
        self._handles = [opt.register_step_post_hook(self._after_optimizer_step) for opt in optimizers]
        self.monitor = GradientMonitor(
            pl_module, optimizer=optimizers, name=type(pl_module).__name__,
            jsonl=self.metrics_path if trainer.is_global_zero else None, **self._options,
        ).attach()

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        # with accumulation Lightning has already divided each micro-batch loss by their number
        loss = torch.stack(self._losses).sum() if self._losses else None
        self._losses.clear()
        self._measured_step = self.monitor.steps
        self.monitor.step(loss=loss, batch=trainer.global_step)

    def _after_optimizer_step(self, optimizer: Any, args: tuple, kwargs: dict) -> None:
        # the optimizer has used the gradients: whatever clipping Lightning did is in them now
        if self.monitor is not None:
            self.monitor.after_clip()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.monitor is None:
            return
        # a step that AMP skipped never reached the optimizer: close its record as skipped
        self.monitor.end_step()
        step, self._measured_step = self._measured_step, None
        if step is None or not (self._log and trainer.loggers):
            return  # an accumulation batch, or nothing to log to
        # the step Lightning writes its loggers on (it counts steps from 1), so the numbers are
        # read from the device only when they will be written
        if trainer.log_every_n_steps <= 0 or trainer.global_step % trainer.log_every_n_steps != 0:
            return
        record = self.monitor.records[-1] if self.monitor.records else None
        if record is not None and record.step == step:
            pl_module.log_dict(logged_values(record), on_step=True, on_epoch=False, batch_size=1)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is None:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.monitor.detach()
        if self._report and trainer.is_global_zero:
            self.diagnosis = diagnose_run_folder(self.folder, self.metrics_path)
            print(verdict_line(self.diagnosis, self.folder))
