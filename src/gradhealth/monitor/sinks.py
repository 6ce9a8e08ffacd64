"""Where finished records go besides memory: JSONL (see records.JsonlWriter), CSV, TensorBoard."""
from __future__ import annotations

import math
import os
from typing import Any

from gradhealth.errors import ConfigError
from gradhealth.monitor.records import RunMeta, StepRecord

__all__ = ["TensorBoardSink"]


class TensorBoardSink:
    """Scalars per layer (``grad_norm/<layer>``, ``update_ratio/<layer>``, ...) for TensorBoard.

    ``histograms=True`` adds, per step, the distribution of per-layer gradient norms (log10).
    Non-finite values are left out: TensorBoard's histogram writer rejects them.
    """

    def __init__(self, logdir: str | os.PathLike, histograms: bool = False):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "TensorBoard logging needs the tensorboard package: pip install 'gradhealth[tensorboard]'."
            ) from None
        self._writer = SummaryWriter(log_dir=str(logdir))
        self.histograms = histograms

    def write(self, record: StepRecord, meta: RunMeta | None = None) -> None:
        w, step = self._writer, record.step

        def scalar(tag: str, value: Any) -> None:
            if value is not None and math.isfinite(value):
                w.add_scalar(tag, value, step)

        scalar("train/loss", record.loss)
        scalar("train/lr", record.lr)
        scalar("grad/global_norm", record.global_grad_norm)
        scalar("grad/global_norm_post_clip", record.global_grad_norm_post_clip)
        scalar("train/skipped", float(record.skipped))
        for name, stats in record.layers.items():
            scalar(f"grad_norm/{name}", stats.grad_norm)
            scalar(f"grad_norm_post_clip/{name}", stats.grad_norm_post_clip)
            scalar(f"weight_norm/{name}", stats.weight_norm)
            scalar(f"update_ratio/{name}", stats.update_ratio)
        for name, act in record.activations.items():
            scalar(f"saturation/{name}", act.saturation)
            scalar(f"dead_fraction/{name}", act.dead_fraction)
        for key, value in record.metrics.items():
            scalar(f"metrics/{key}", value)
        if self.histograms:
            import numpy as np

            logs = [math.log10(s.grad_norm) for s in record.layers.values()
                    if s.grad_norm is not None and math.isfinite(s.grad_norm) and s.grad_norm > 0]
            if logs:
                w.add_histogram("grad_norm_log10", np.asarray(logs), step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
