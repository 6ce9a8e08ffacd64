"""``fit()``: training with the material's remedies, in the order that keeps each of them honest.

One optimizer step (``_Run._one_step``; each line is a stage of its own, named on the right)::

    forward (autocast) -> loss (+ L1/L2 penalties) -> backward       x accumulate micro-batches
                                                                      _forward_backward
    -> scaler.unscale_        gradients at their true scale before anyone looks at them   _unscale
    -> non-finite check       agreed by all ranks, so they all take the same branch       _nonfinite_agreed
    -> monitor.step           pre-clip norms: what the model really produced
    -> clip -> monitor.after_clip                                                         _clip
    -> optimizer step         (GradScaler may skip it when it finds inf/NaN)              _optimizer_step
    -> scheduler step         only if the optimizer stepped, so the schedule stays in step
    -> zero_grad -> monitor.end_step -> progress, checkpoints                             _after_step

Files (rank 0 only) in ``out``: ``metrics.jsonl`` (the monitor's records), ``checkpoints/last.pt``
(and ``best.pt`` by validation loss), ``summary.json``.

The loss is the model's own when its ``forward`` takes the targets and returns one, else
cross-entropy on its logits (``outputs.py`` states the rule); the summary says which.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from gradhealth.errors import CheckpointError, ConfigError, GradHealthError, Interrupted, NonFiniteError
from gradhealth.io import signals_deferred, write_json_atomic
from gradhealth.monitor.monitor import GradientMonitor
from gradhealth.monitor.records import NonFiniteEvent, RunMeta, StepRecord, read_jsonl, write_jsonl
from gradhealth.monitor.sinks import TensorBoardSink
from gradhealth.tensor_norms import all_finite
from gradhealth.remedies.clip import create_clipper
from gradhealth.remedies.optim import create_optimizer
from gradhealth.remedies.regularize import l1_penalty, l2_penalty
from gradhealth.remedies.schedules import create_scheduler
from gradhealth.train.checkpoint import build_checkpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from gradhealth.train.config import TrainConfig
from gradhealth.train.data import DataBundle, EpochShuffleSampler, first_examples, load_data
from gradhealth.distributed import DistInfo, agree_any, init_distributed, own_pieces, shutdown_distributed
from gradhealth.train.outputs import call_rule, check_logits, correct, cross_entropy, loss_description, read_output
from gradhealth.train.sharded_checkpoint import (
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    restore_rest,
    save_sharded_checkpoint,
)
from gradhealth.train.strategy import no_gradient_sync, spread_model
from gradhealth.train.progress import Progress
from gradhealth.train.setup import autocast_dtype, build_model, input_mismatch, pick_device

__all__ = ["fit", "TrainResult"]

# A resumed run continues the same run: these settings decide which examples come in which order
# and what the optimizer and scheduler states mean, so a checkpoint resumes only with the same ones
# (the step count, learning rate and logging may change).
RESUME_MUST_MATCH = ("model", "data", "seq_len", "seed", "batch_size", "accumulate", "optimizer", "schedule", "amp")

# With --on-nonfinite skip, this many skipped steps in a row means the run cannot recover.
MAX_CONSECUTIVE_SKIPS = 25


@dataclass
class TrainResult:
    model: nn.Module
    records: list[StepRecord]
    meta: RunMeta
    summary: dict[str, Any]
    out_dir: Path | None

    @property
    def stopped(self) -> str | None:
        """None when the run finished; ``nonfinite`` when it stopped on NaN/Inf."""
        return self.summary.get("stopped")


def fit(config: TrainConfig | None = None, *, model: nn.Module | str | None = None,
        data: DataBundle | str | None = None, progress: bool | None = None, **overrides: Any) -> TrainResult:
    """Train ``config.model`` (or the given ``model``) on ``config.data`` (or the given bundle).

    Keyword overrides change fields of the config: ``fit(model="resnet20", data="digits-image",
    steps=50, clip="norm")``. ``model`` may also be an nn.Module and ``data`` a DataBundle.
    """
    if isinstance(model, str):
        overrides["model"], model = model, None
    if isinstance(data, str):
        overrides["data"], data = data, None
    config = dataclasses.replace(config, **overrides) if config is not None else TrainConfig(**overrides)
    config.validate()
    return _Run(config, model, data, progress).train()


class _Run:
    def __init__(self, config: TrainConfig, model: nn.Module | None, data: DataBundle | None, progress: bool | None):
        self.config = config
        self.device = pick_device(config.device)
        self.dist: DistInfo = init_distributed(self.device)
        self.data = data if data is not None else load_data(config.data, seed=config.seed, seq_len=config.seq_len)
        self._make_loaders()
        per_epoch = max(1, len(self.train_loader) // config.accumulate)
        self.total_steps = config.steps if config.steps is not None else _steps_of_epochs(config.epochs, per_epoch)
        if model is None:
            x0, _ = first_examples(self.data.train, config.batch_size)
            model = build_model(config, self.data.model_kwargs(), x0)
        self.model = model.to(self.device)
        self.call = call_rule(self.model, self.data.task)
        self.own_loss = False
        self.net: nn.Module = spread_model(self.model, config.strategy, self.dist, self.device)
        # FSDP2: every rank writes its shards of each checkpoint
        self.sharded = self.dist.enabled and config.strategy == "fsdp"
        self.optimizer = create_optimizer(config.optimizer, self.model, config.lr, momentum=config.optimizer_momentum(),
                                          nesterov=config.nesterov, weight_decay=config.weight_decay,
                                          l2_mode=config.l2_mode)
        self.scheduler = create_scheduler(config.schedule, self.optimizer, self.total_steps,
                                          warmup_steps=config.warmup_steps)
        # the head matters to AGC alone (remedy trials set it for their AGC trial and keep it for the rest)
        head = {"head": config.clip_head} if config.clip_head and config.clip == "agc" else {}
        self.clipper = create_clipper(config.clip, config.clip_value, model=self.model, **head)
        self.autocast = autocast_dtype(config.amp)
        self.scaler = torch.amp.GradScaler(self.device.type) if config.amp == "fp16" else None
        self.out = Path(config.out) if config.out else None
        self.writes = self.out is not None and self.dist.is_main
        self.saves = self.out is not None and (self.dist.is_main or self.sharded)
        self.step, self.epoch, self.position, self.batch_index = 0, 0, 0, -1
        self.best_val = math.inf
        self.consecutive_skips = 0
        self.first_nonfinite: NonFiniteEvent | None = None
        self.last_val: dict[str, float] = {}
        self.stopped: str | None = None
        self.shapes_checked = False
        self.stop_reason = ""
        # the step of each checkpoint file as last written whole (what a full disk leaves in place)
        self.saved_steps: dict[str, int] = {}
        if config.resume:
            self._resume(config.resume)
        self.monitor = self._make_monitor()
        self.progress = Progress(self.total_steps, self.step, enabled=self.dist.is_main if progress is None else progress)
        self._interrupted = False

    # ---- set-up ------------------------------------------------------------------------------

    def _make_loaders(self) -> None:
        c = self.config
        if self.dist.enabled:
            self.sampler: Any = DistributedSampler(self.data.train, self.dist.world_size, self.dist.rank,
                                                   shuffle=True, seed=c.seed, drop_last=True)
        else:
            self.sampler = EpochShuffleSampler(len(self.data.train), c.seed)
        # its own generator: creating an iterator must not draw from the global RNG (bit-exact resume)
        generator = torch.Generator().manual_seed(c.seed)
        self.train_loader = DataLoader(self.data.train, batch_size=c.batch_size, sampler=self.sampler,
                                       drop_last=len(self.data.train) > c.batch_size, num_workers=c.num_workers,
                                       generator=generator)
        self.val_loader = DataLoader(self.data.val, batch_size=512, shuffle=False)

    def _make_monitor(self) -> GradientMonitor:
        sinks = []
        if self.writes and self.config.tensorboard:
            sinks.append(TensorBoardSink(self.out / "tensorboard"))
        jsonl = self.out / "metrics.jsonl" if self.writes else None
        meta_config = {**self.config.to_json(), "depth": getattr(self.model, "depth", None),
                       "residual": getattr(self.model, "residual", None)}
        monitor = GradientMonitor(self.net, every=self.config.monitor_every, detail_every=self.config.detail_every,
                                  activations=self.config.activations, optimizer=self.optimizer,
                                  jsonl=jsonl, sinks=sinks, config=meta_config, name=self.config.model,
                                  append=bool(self.config.resume))
        if self._monitor_state is not None:
            monitor.load_state_dict(self._monitor_state)
        return monitor

    _monitor_state: dict[str, Any] | None = None

    def _check_resume_settings(self, path: str, saved: dict[str, Any]) -> None:
        now = self.config.to_json()
        changed = [key for key in RESUME_MUST_MATCH if key in saved and saved[key] != now.get(key)]
        if changed:
            key = changed[0]
            raise ConfigError(f"the checkpoint {path} was trained with {key}={saved[key]!r}, and this run asks for "
                              f"{key}={now.get(key)!r}; a resumed run continues the same run: give the same {key}.")

    def _resume(self, path: str) -> None:
        if self.sharded or is_sharded_checkpoint(path):
            if not self.sharded:
                raise ConfigError(f"{path} is a sharded checkpoint; resume it under torchrun with --strategy fsdp "
                                  "and the number of processes that wrote it.")
            own = load_sharded_checkpoint(path, model=self.model, optimizer=self.optimizer, info=self.dist)
            saved = own.get("config") or {}
            self._check_resume_settings(path, saved)
            info = restore_rest(own, scheduler=self.scheduler, scaler=self.scaler, clipper=self.clipper)
        else:
            ckpt = load_checkpoint(path, map_location=self.device)
            # the settings first: a model sized by them (seq_len, data) would otherwise fail as "another model"
            saved = ckpt.get("config") or {}
            self._check_resume_settings(path, saved)
            info = restore_checkpoint(ckpt, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                      scaler=self.scaler, clipper=self.clipper)
        extra = info.get("extra") or {}
        self.step = int(info["step"])
        if self.step >= self.total_steps:
            raise ConfigError(f"the checkpoint {path} is already at step {self.step}, the end of the "
                              f"{self.total_steps} steps asked for: pass more steps to train on.")
        try:
            self.epoch, self.position = _count(extra.get("epoch", 0)), _count(extra.get("position", 0))
            self.batch_index = _count(extra.get("batch_index", -1), least=-1)
            self.best_val = float(extra.get("best_val", math.inf))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is corrupt: its data position is wrong ({exc}); "
                                  "use an earlier checkpoint.") from None
        self._monitor_state = info.get("monitor")
        if self.writes and (self.out / "metrics.jsonl").exists():
            # a run killed after its last checkpoint logged steps that will now be trained again
            log = read_jsonl(self.out / "metrics.jsonl")
            theirs = {"model": log.meta.model, **(log.meta.config or {})}
            # the whole identity of a run, as the checkpoint's own run had it (init included)
            ours = {**self.config.to_json(), **saved}
            differ = [key for key in (*RESUME_MUST_MATCH, "init") if key in theirs and theirs[key] != ours.get(key)]
            if differ:
                key = differ[0]
                raise ConfigError(f"{self.out}/metrics.jsonl is the log of another run ({key}={theirs[key]!r} there, "
                                  f"{ours.get(key)!r} in the checkpoint's run); resume into the folder of the "
                                  "checkpoint's own run, or pass another --out.")
            write_jsonl(self.out / "metrics.jsonl", [r for r in log.records if r.step < self.step], log.meta)

    # ---- the loop ----------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches forever, epoch after epoch, starting where a resumed run left off."""
        while True:
            self.sampler.set_epoch(self.epoch)
            for index, (x, y) in enumerate(self.train_loader):
                if index < self.position:
                    continue
                self.position = index + 1
                self.batch_index += 1
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True).long()
            self.epoch, self.position = self.epoch + 1, 0

    def _model_name(self) -> str:
        return self.config.model or type(self.model).__name__

    def _forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, loss): the model called as its signature asks, the loss its own or cross-entropy."""
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            # the first forward pass tells whether model and data fit: a failure there is said in
            # a sentence; later ones are the model's own
            try:
                output = self.call.call(self.net, x, y)
            except Exception as exc:
                if _out_of_memory(exc):
                    raise  # a size the machine cannot hold: the command line says so
                if not self.shapes_checked and isinstance(exc, (RuntimeError, ValueError, IndexError, TypeError)):
                    raise input_mismatch(exc, self.data, self._model_name(), self.config.data) from exc
                if _raised_by_gradhealth(exc):
                    raise  # our own hooks failed: a bug to report, not the model's doing
                raise self._model_failed(exc) from exc
            logits, own = read_output(output, self._model_name())
            if not self.shapes_checked:
                check_logits(logits, y, self.data, self._model_name(), self.config.data)
                # the model's loss is used when it was given the targets and answered with one
                self.own_loss = own is not None and self.call.keyword is not None
                self.shapes_checked = True
            loss = own.float() if self.own_loss and own is not None else cross_entropy(logits, y)
        return logits, loss

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, loss = self._forward(x, y)
        total = loss
        if self.config.l1 > 0:
            total = total + l1_penalty(self.model, self.config.l1)
        if self.config.l2_mode == "penalty" and self.config.weight_decay > 0:
            total = total + l2_penalty(self.model, self.config.weight_decay)
        return total, loss.detach(), correct(logits, y)

    def _model_failed(self, exc: Exception) -> GradHealthError:
        """A forward pass that raised its own exception: the model's, with its message and the step."""
        message = (str(exc).strip().splitlines() or [""])[0]
        return GradHealthError(f"the model {self._model_name()} raised {type(exc).__name__} in its forward pass at "
                               f"step {self.step}: {message.rstrip('.') or 'no message'}.")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        was_training = self.net.training
        self.net.eval()
        loss_sum, right, count = 0.0, 0, 0
        for x, y in self.val_loader:
            x, y = x.to(self.device), y.to(self.device).long()
            logits, loss = self._forward(x, y)
            # a mean over the batch's targets (examples, or tokens of next-token data), weighted back to a sum
            loss_sum += float(loss) * y.numel()
            right += int(correct(logits, y))
            count += y.numel()
        self.net.train(was_training)
        return {"val_loss": loss_sum / max(count, 1), "val_acc": right / max(count, 1)}

    def train(self) -> TrainResult:
        started = time.perf_counter()
        self.net.train()
        batches = self._batches()
        try:
            with self._signals(), self.monitor:
                try:
                    while self.step < self.total_steps and self.stopped is None:
                        if agree_any(self._interrupted, self.dist, self.device):
                            self.stopped = "interrupted"
                            break
                        self._one_step(batches)
                    if self.saves:
                        self._save("last.pt")
                finally:
                    self.progress.close()
            result = self._result(time.perf_counter() - started)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise self._disk_full(exc.filename) from None
        shutdown_distributed(self.dist)
        if self.stopped == "nonfinite" and self.config.on_nonfinite == "raise":
            raise NonFiniteError(self.stop_reason + ".")
        if self.stopped == "interrupted":
            # under DDP rank 0 alone saves, and every rank says where its run's checkpoint is
            if self.out is not None:
                name = "last.dcp" if self.sharded else "last.pt"
                raise Interrupted(f"interrupted at step {self.step}; checkpoint written to "
                                  f"{self.out / 'checkpoints' / name}.")
            raise Interrupted(f"interrupted at step {self.step}; nothing was saved (the run had no output folder).")
        return result

    def _one_step(self, batches: Iterator[tuple[Tensor, Tensor]]) -> None:
        """One optimizer step, stage by stage in the order of the module docstring."""
        metrics = self._maybe_evaluate()
        loss_mean, train_acc, last_batch = self._forward_backward(batches)
        self._unscale()
        bad = self._nonfinite_agreed(loss_mean)
        if bad:
            self._capture_first_nonfinite(*last_batch)
        metrics["train_acc"] = train_acc
        self.monitor.step(loss=loss_mean, force=bad, metrics=metrics, batch=self.batch_index)
        self._clip()
        if bad:
            self._non_finite()
            return
        self.consecutive_skips = 0
        stepped = self._optimizer_step()
        if stepped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        record = self.monitor.end_step(skipped=not stepped)
        self.step += 1
        self._after_step(record)

    def _maybe_evaluate(self) -> dict[str, Any]:
        """The validation metrics when this step is an evaluation step (they join the step's record)."""
        metrics: dict[str, Any] = {}
        if self.config.eval_every and self.step % self.config.eval_every == 0:
            self.last_val = self.evaluate()
            metrics.update(self.last_val)
        return metrics

    def _forward_backward(self, batches: Iterator[tuple[Tensor, Tensor]]
                          ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """Forward, loss and backward over the micro-batches: the mean loss, the training accuracy
        and the last batch (replayed when the step turns out non-finite)."""
        c = self.config
        loss_sum = torch.zeros((), device=self.device)
        right = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for micro in range(c.accumulate):
            x, y = next(batches)
            # DDP: all-reduce the gradients once, on the last micro-batch
            sync = contextlib.nullcontext() if micro == c.accumulate - 1 else no_gradient_sync(self.net, self.dist)
            with sync:
                total, loss, hits = self._loss(x, y)
                scaled = total / c.accumulate
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss
            right += hits
            seen += y.numel()  # examples, or tokens of next-token data
        return loss_sum / c.accumulate, right.double() / max(seen, 1), (x, y)

    def _unscale(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)

    def _nonfinite_agreed(self, loss_mean: Tensor) -> bool:
        """Whether the loss or a gradient is NaN/Inf on any rank (all ranks then take the same branch)."""
        finite = torch.isfinite(loss_mean)
        if self.scaler is None:
            # under fp16 an inf gradient is GradScaler's business: it skips the step and lowers the scale
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                # each rank checks its own shards; agree_any spreads a NaN on any rank to all
                finite = finite & all_finite(own_pieces(grads))
        return agree_any(~finite, self.dist, self.device)

    def _capture_first_nonfinite(self, x: Tensor, y: Tensor) -> None:
        # run the last batch forward again with the hooks on, so the record names the first
        # layer whose output went NaN/Inf (the hooks only watch detailed steps otherwise)
        with self.monitor.capture(), torch.no_grad():
            self._loss(x, y)

    def _clip(self) -> None:
        if self.clipper.mode != "none":
            # with no clipping the gradients after it are those the monitor has just measured
            result = self.clipper(self.model.parameters())
            # per step: whether clipping fired (the coefficient is post / pre of the record's norms)
            self.monitor.after_clip(metrics={"clipped": result.clipped})

    def _optimizer_step(self) -> bool:
        """The optimizer step; False when GradScaler skipped it (it lowered the scale on inf/NaN)."""
        if self.scaler is None:
            self.optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def _after_step(self, record: StepRecord | None) -> None:
        if record is not None:
            self.progress.update(self.step, record.loss, record.global_grad_norm, record.lr)
        if self.saves and self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
            self._save("last.pt")
        val = self.last_val.get("val_loss")
        if self.saves and val is not None and val < self.best_val:
            self.best_val = val
            self._save("best.pt")

    def _non_finite(self) -> None:
        record = self.monitor.end_step(skipped=True)
        event = record.first_nonfinite if record is not None else None
        if event is None:
            event = NonFiniteEvent("gradient", None, self.batch_index, self.step)
        if self.first_nonfinite is None:
            self.first_nonfinite = event
        where = _describe(event)
        self.optimizer.zero_grad(set_to_none=True)
        policy = self.config.on_nonfinite
        if policy == "skip" and self.consecutive_skips < MAX_CONSECUTIVE_SKIPS:
            self.consecutive_skips += 1
            self.step += 1
            self.progress.update(self.step, None, None, None, note=f"skipped: {where}")
            return
        self.stopped = "nonfinite"
        self.stop_reason = f"training produced NaN/Inf at step {self.step}: {where}"
        if self.saves:
            self._save("last.pt")

    # ---- files -------------------------------------------------------------------------------

    def _save(self, name: str) -> None:
        with signals_deferred():  # a signal now is answered once this checkpoint is whole
            self._write_checkpoint(name)

    def _write_checkpoint(self, name: str) -> None:
        extra = {"epoch": self.epoch, "position": self.position, "batch_index": self.batch_index,
                 "best_val": self.best_val}
        if self.sharded:
            state = {"scheduler": self.scheduler.state_dict(), "scaler": _state_of(self.scaler),
                     "clipper": self.clipper.state_dict(), "monitor": self.monitor.state_dict(), "step": self.step,
                     "epoch": self.epoch, "config": self.config.to_json(), "extra": extra}
            save_sharded_checkpoint(self.out / "checkpoints" / name.replace(".pt", ".dcp"), model=self.model,
                                    optimizer=self.optimizer, state=state, info=self.dist)
            self.saved_steps[name] = self.step
            return
        state = build_checkpoint(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                 scaler=self.scaler, clipper=self.clipper, monitor_state=self.monitor.state_dict(),
                                 step=self.step, epoch=self.epoch, config=self.config.to_json(), extra=extra)
        path = self.out / "checkpoints" / name
        try:
            # the first save proves the checkpoint can be read back, not the --resume of a finished run
            save_checkpoint(path, state, verify=not self.saved_steps)
        except CheckpointError as exc:
            if exc.disk_full:
                raise self._disk_full(path) from None
            raise
        self.saved_steps[name] = self.step

    def _disk_full(self, path: Any) -> CheckpointError:
        where = path or self.out or "this run's files"
        kept = self.saved_steps.get("last.pt")
        last = (f"the last good checkpoint (step {kept}) is kept" if kept is not None
                else "no checkpoint of this run was written yet")
        return CheckpointError(f"the disk holding {where} is full; {last}.")

    def _result(self, seconds: float) -> TrainResult:
        records = list(self.monitor.records)
        losses = [r.loss for r in records if r.loss is not None and not r.skipped]
        tail = losses[-max(1, len(losses) // 10):] if losses else []
        summary = {
            "model": self.config.model,
            "data": self.data.name,
            "num_classes": self.data.num_classes,
            "task": self.data.task,
            "loss": loss_description(self.own_loss, self.call),
            "normalisation": self.data.normalisation,
            "steps": self.step,
            "total_steps": self.total_steps,
            "final_loss": sum(tail) / len(tail) if tail else None,
            **{f"final_{k}": v for k, v in self.last_val.items()},
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "skipped_steps": sum(r.skipped for r in records),
            "first_nonfinite": dataclasses.asdict(self.first_nonfinite) if self.first_nonfinite else None,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason or None,
            "seconds": round(seconds, 3),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "config": self.config.to_json(),
        }
        if self.writes:
            write_json_atomic(self.out / "summary.json", summary, strict=True)
        return TrainResult(self.model, records, self.monitor.meta, summary, self.out)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Ctrl-C / SIGTERM finish the current step, save, and end the run with exit status 130."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self._interrupted:  # a second Ctrl-C: the user means it
                stop = KeyboardInterrupt()
                stop.signame = signal.Signals(signum).name  # for the command line's sentence
                raise stop
            self._interrupted = True

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _state_of(obj: Any) -> Any:
    return obj.state_dict() if obj is not None else None


# past this many optimizer steps a run length is a typo, not a plan (a trillion steps: years on any machine)
MAX_STEPS = 10**12


def _count(value: Any, least: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{value!r} is not a whole number of at least {least}")
    return value


def _steps_of_epochs(epochs: float, per_epoch: int) -> int:
    steps = epochs * per_epoch
    if not math.isfinite(steps) or steps > MAX_STEPS:
        raise ConfigError(f"--epochs {epochs:g} makes more than {MAX_STEPS:.0e} optimizer steps ({per_epoch} per "
                          "epoch), more than any run can take; pass fewer epochs.")
    return math.ceil(steps)


def _raised_by_gradhealth(exc: BaseException) -> bool:
    """Whether the innermost Python frame of ``exc``'s traceback is in this package's code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = str(Path(__file__).resolve().parents[1])
    return tb is not None and str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(package)


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc)


def _describe(event: NonFiniteEvent) -> str:
    where = {"input": "in the input batch", "loss": "in the loss", "activation": "in the output of",
             "forward": "in the output of", "gradient": "in the gradient of"}.get(event.kind, event.kind)
    layer = f" layer {event.layer}" if event.layer else ""
    return f"first {where}{layer} (batch {event.batch})"
