"""The commands' defaults for run options: those of ``TrainConfig``'s fields, read from the dataclass
so a default is written once (``train/config.py``) and the help texts cannot drift from it."""
from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from gradhealth.train.config import DEFAULT_STEPS, TrainConfig

__all__ = ["TRAIN_DEFAULTS", "DEFAULT_STEPS"]

TRAIN_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
