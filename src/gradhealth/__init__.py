"""gradhealth: find, explain and fix vanishing and exploding gradients in PyTorch models.

Attributes load on first use, so that ``gradhealth report`` and ``gradhealth diagnose --from-log``
read a log without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from gradhealth.errors import CheckpointError, ConfigError, DataError, GradHealthError, NonFiniteError, RecordError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "create_model": "gradhealth.models",
    "list_models": "gradhealth.models",
    "register_model": "gradhealth.models",
    "create_act": "gradhealth.layers",
    "create_norm": "gradhealth.layers",
    "apply_init": "gradhealth.layers",
    "GradientMonitor": "gradhealth.monitor",
    "StepRecord": "gradhealth.monitor",
    "RunLog": "gradhealth.monitor",
    "read_jsonl": "gradhealth.monitor",
    "fit": "gradhealth.train.loop",
    "TrainConfig": "gradhealth.train.config",
    "load_data": "gradhealth.train.data",
    "checkup": "gradhealth.checkup",
    "diagnose_log": "gradhealth.diagnose.rules",
    "create_clipper": "gradhealth.remedies",
    "create_scheduler": "gradhealth.remedies",
    "create_optimizer": "gradhealth.remedies",
    "run_trials": "gradhealth.trials",
}

__all__ = [
    "__version__",
    "GradHealthError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "RecordError",
    "NonFiniteError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradhealth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
