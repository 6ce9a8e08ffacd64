"""Per-layer gradient health of any PyTorch model.

``records`` (the data) needs no torch; ``GradientMonitor`` and ``TensorBoardSink`` load it on use.
"""
from __future__ import annotations

import importlib
from typing import Any

from gradhealth.monitor.records import (
    ActivationStats,
    LayerInfo,
    LayerStats,
    NonFiniteEvent,
    RunLog,
    RunMeta,
    StepRecord,
    read_jsonl,
    write_csv,
    write_jsonl,
)

_LAZY = {"GradientMonitor": "gradhealth.monitor.monitor", "TensorBoardSink": "gradhealth.monitor.sinks"}

__all__ = [
    "GradientMonitor",
    "TensorBoardSink",
    "StepRecord",
    "LayerStats",
    "ActivationStats",
    "NonFiniteEvent",
    "LayerInfo",
    "RunMeta",
    "RunLog",
    "read_jsonl",
    "write_jsonl",
    "write_csv",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradhealth.monitor' has no attribute {name!r}")
