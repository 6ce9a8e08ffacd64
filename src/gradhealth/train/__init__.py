"""Training: data sets by name, safe checkpoints with full resume state, and the training loop.

Attributes load on first use: the command line reads ``TrainConfig`` for its defaults without
importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_LAZY = {
    "fit": "gradhealth.train.loop",
    "TrainResult": "gradhealth.train.loop",
    "TrainConfig": "gradhealth.train.config",
    "DataBundle": "gradhealth.train.data",
    "load_data": "gradhealth.train.data",
    "save_checkpoint": "gradhealth.train.checkpoint",
    "load_checkpoint": "gradhealth.train.checkpoint",
}

__all__ = [*_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradhealth.train' has no attribute {name!r}")
