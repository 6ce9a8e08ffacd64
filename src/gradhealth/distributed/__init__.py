"""Everything about running on several processes, in one place that the monitor, clipping and the
training loop share: which process this is and agreement between ranks (``processes``), and norms
of sharded tensors under FSDP2, tensor parallelism and HSDP (``tensors``)."""
from __future__ import annotations

from gradhealth.distributed.processes import (
    DistInfo,
    agree_any,
    backend_device_type,
    collective_device,
    init_distributed,
    shutdown_distributed,
)
from gradhealth.distributed.tensors import (
    counted_squares,
    gather_rows,
    is_sharded,
    local_maxes,
    local_pieces,
    max_over_ranks,
    own_pieces,
    sharded_global_norm,
    sum_over_ranks,
)

__all__ = [
    "DistInfo",
    "init_distributed",
    "agree_any",
    "collective_device",
    "backend_device_type",
    "shutdown_distributed",
    "is_sharded",
    "own_pieces",
    "local_pieces",
    "counted_squares",
    "local_maxes",
    "gather_rows",
    "sum_over_ranks",
    "max_over_ranks",
    "sharded_global_norm",
]
