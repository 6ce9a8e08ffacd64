"""A measured step's numbers, and their one device-to-host transfer.

A recorded step leaves its numbers on the device as named float64 vectors (``pieces``); when the
step is complete they are concatenated and copied to the host in ONE transfer. On a GPU the copy
goes to pinned memory without waiting (an event says when it has landed), so the CPU keeps
queueing the next steps' kernels; a step is read back once its copy has landed, at the latest when
``MAX_IN_FLIGHT`` steps are waiting or when anything reads the records.

A sharded model's step first combines every rank's pieces (``sharded.py``): one collective,
right before the transfer, so every rank sends the same numbers.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradhealth.monitor.forward_tally import CallInfo
from gradhealth.monitor.sharded import combine_ranks
from gradhealth.tensor_norms import NORM_DTYPE

__all__ = ["MAX_IN_FLIGHT", "PendingStep", "InFlight", "HostTransfer"]

MAX_IN_FLIGHT = 3


@dataclass
class PendingStep:
    """A measured step waiting for its optimizer step: device tensors, moved to host once."""

    step: int
    batch: int | None
    lr: float | None
    skipped: bool | None
    detailed: bool = False
    # detailed because an earlier non-finite step armed the forward watch
    armed: bool = False
    pieces: dict[str, Tensor] = field(default_factory=dict)
    # the measured forward calls, in the order they ran
    calls: list[CallInfo] = field(default_factory=list)
    input_batches: list[int] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    metric_floats: dict[str, float | None] = field(default_factory=dict)
    snapshot: list[Tensor] | None = None
    stepped: bool = False
    stepped_by: set[int] = field(default_factory=set)
    # the pieces are this rank's shares of a sharded model's norms, to combine across ranks
    sharded: bool = False


@dataclass
class InFlight:
    """A finished step whose numbers are on their way to the host (``ready`` is None on the CPU)."""

    pending: PendingStep
    host: Tensor
    ready: Any = None  # a torch.cuda.Event recorded after the copy


class HostTransfer:
    """The queue of finished steps between the device and the host, oldest first."""

    def __init__(self) -> None:
        self._in_flight: deque[InFlight] = deque()

    def send(self, pending: PendingStep) -> None:
        """Start moving the step's pieces to the host, as one flat float64 vector."""
        if pending.sharded:
            pending.pieces = combine_ranks(pending.pieces)
        pieces = list(pending.pieces.values())
        if not pieces:
            self._in_flight.append(InFlight(pending, torch.zeros(0, dtype=NORM_DTYPE)))
            return
        device = pieces[0].device
        # the pieces are float64 vectors on one device already, unless the model spans several
        flat = torch.cat([p if p.device == device and p.dim() == 1 else p.to(device).reshape(-1) for p in pieces])
        if flat.dtype != NORM_DTYPE:
            flat = flat.to(NORM_DTYPE)
        if flat.device.type != "cuda":
            self._in_flight.append(InFlight(pending, flat.cpu()))
            return
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(flat.device))
        self._in_flight.append(InFlight(pending, host, ready))

    def receive(self, wait: bool) -> Iterator[tuple[PendingStep, dict[str, list[float]]]]:
        """The steps whose numbers have landed, oldest first, each with its pieces as host floats.

        Without ``wait`` it stops at the first copy still under way, unless more than
        ``MAX_IN_FLIGHT`` are waiting.
        """
        while self._in_flight:
            head = self._in_flight[0]
            if head.ready is not None:
                if not (wait or len(self._in_flight) > MAX_IN_FLIGHT or head.ready.query()):
                    return
                head.ready.synchronize()
            self._in_flight.popleft()
            flat = head.host.tolist()
            values: dict[str, list[float]] = {}
            offset = 0
            for key, piece in head.pending.pieces.items():
                values[key] = flat[offset:offset + piece.numel()]
                offset += piece.numel()
            yield head.pending, values
