"""Everything one training run needs to know, validated once, JSON-able for checkpoints and logs."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.validate import non_negative_int, non_negative_number, positive_int, positive_number

__all__ = ["TrainConfig", "AMP_MODES", "NONFINITE_POLICIES", "DEFAULT_STEPS", "DEFAULT_SEQ_LEN"]

AMP_MODES = ("none", "bf16", "fp16")
NONFINITE_POLICIES = ("raise", "skip", "stop")
# the run length when neither steps nor epochs is given
DEFAULT_STEPS = 100
# tokens per example of text data: long enough for a byte-level model to see words and lines
DEFAULT_SEQ_LEN = 64
# a million micro-batches per step is already far past any real recipe (large-batch training uses
# hundreds): a larger count is a typo, and each step would take a day or more
MAX_ACCUMULATE = 1_000_000
# the largest float32: optimizers multiply float32 parameters by these scales, and a larger one overflows
FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class TrainConfig:
    """A run: model and data by name, the remedies of the material, and bookkeeping.

    ``steps`` counts optimizer steps; ``epochs`` is converted to steps from the data size.
    ``accumulate`` micro-batches go into each optimizer step.
    """

    model: str = "mlp"
    data: str = "digits"
    # tokens per example for text data (and for a data loader that takes seq_len)
    seq_len: int = DEFAULT_SEQ_LEN
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 64
    accumulate: int = 1
    optimizer: str = "sgd"
    lr: float = 0.1
    # None: 0.9 for sgd (He et al.'s recipe), nothing for adam/adamw (they have betas)
    momentum: float | None = None
    nesterov: bool = False
    weight_decay: float = 0.0
    l2_mode: str = "decoupled"
    l1: float = 0.0
    schedule: str = "constant"
    warmup_steps: int | None = None
    clip: str = "none"
    clip_value: float | None = None
    # AGC's classifier head by module name (for models without get_classifier())
    clip_head: str | None = None
    amp: str = "none"
    init: str | None = None
    seed: int = 0
    monitor_every: int = 1
    detail_every: int | None = None  # None: the monitor's default, 10 * monitor_every
    activations: bool = True
    on_nonfinite: str = "stop"
    eval_every: int = 0
    checkpoint_every: int = 0
    device: str = "auto"
    num_workers: int = 0
    out: str | None = None
    resume: str | None = None
    tensorboard: bool = False
    # under torchrun: ddp (a full model per rank) or fsdp (FSDP2, sharded; train/strategy.py)
    strategy: str = "ddp"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.steps is None and self.epochs is None:
            self.steps = DEFAULT_STEPS
        if self.steps is not None:
            positive_int("steps", self.steps)
        if self.epochs is not None:
            positive_number("epochs", self.epochs)
        for name in ("batch_size", "accumulate", "monitor_every", "seq_len"):
            positive_int(name, getattr(self, name))
        if self.accumulate > MAX_ACCUMULATE:
            raise ConfigError(f"accumulate {self.accumulate} is past {MAX_ACCUMULATE:,} micro-batches per optimizer "
                              "step, which would take a day or more for one step; pass a smaller count.")
        if self.detail_every is not None:
            positive_int("detail_every", self.detail_every)
        for name in ("eval_every", "checkpoint_every", "num_workers", "seed"):
            non_negative_int(name, getattr(self, name))
        if self.seed >= 2**63:  # torch.manual_seed takes a 64-bit signed integer
            raise ConfigError(f"seed must be below 2**63, not {self.seed}.")
        positive_number("the learning rate", self.lr)
        for name in ("weight_decay", "l1", "momentum"):
            if getattr(self, name) is not None:
                non_negative_number(name, getattr(self, name))
        for name, value in (("the learning rate", self.lr), ("weight_decay", self.weight_decay), ("l1", self.l1),
                            ("momentum", self.momentum)):
            if value is not None and value > FLOAT32_MAX:
                raise ConfigError(f"{name} {value:g} overflows the float32 numbers the parameters are updated in "
                                  f"(at most {FLOAT32_MAX:.3g}); pass a smaller value.")
        if self.amp not in AMP_MODES:
            raise unknown_name("AMP mode", self.amp, AMP_MODES)
        if self.strategy not in ("ddp", "fsdp"):
            raise unknown_name("strategy", self.strategy, ("ddp", "fsdp"))
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise unknown_name("non-finite policy", self.on_nonfinite, NONFINITE_POLICIES)
        if self.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", str(self.device)):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}.")

    def optimizer_momentum(self) -> float:
        if self.momentum is not None:
            return self.momentum
        return 0.9 if self.optimizer == "sgd" else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

