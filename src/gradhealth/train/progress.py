"""Progress of a run: a rich bar on a terminal, a plain line now and then otherwise (logs, CI)."""
from __future__ import annotations

import math
import sys
import time

__all__ = ["Progress"]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


# without a terminal, a line at every 5 % of the run, and at least this often, so a log of a slow
# run (CI, a batch job) never looks hung
QUIET_SECONDS = 30.0


class Progress:
    def __init__(self, total: int, start: int = 0, enabled: bool = True, terminal: bool | None = None):
        self.total, self.enabled = total, enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._every = max(1, total // 20)
        self._started = self._printed = time.perf_counter()
        self._bar = None
        if enabled and self.terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self._bar = RichProgress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, loss: float | None, grad_norm: float | None, lr: float | None, note: str = "") -> None:
        if not self.enabled:
            return
        info = f"loss {_fmt(loss)}  grad-norm {_fmt(grad_norm)}  lr {_fmt(lr)}{'  ' + note if note else ''}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step % self._every == 0 or step == self.total or note or time.perf_counter() - self._printed > QUIET_SECONDS:
            self._printed = time.perf_counter()
            elapsed = self._printed - self._started
            print(f"step {step}/{self.total}  {info}  ({elapsed:.1f}s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
