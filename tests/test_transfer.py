"""The monitor's host transfer: a step's pieces go over as one vector and come back split by name."""
from __future__ import annotations

import torch

from gradhealth.monitor.transfer import HostTransfer, PendingStep


def _pending(step: int, **pieces: torch.Tensor) -> PendingStep:
    pending = PendingStep(step=step, batch=None, lr=None, skipped=None)
    pending.pieces.update(pieces)
    return pending


def test_pieces_come_back_by_name_in_order_of_sending():
    transfer = HostTransfer()
    first = _pending(0, grad_l2=torch.tensor([1.5, 2.5], dtype=torch.float64),
                     table=torch.tensor([[3.0, 4.0], [5.0, 6.0]], dtype=torch.float64),
                     loss=torch.tensor([0.1], dtype=torch.float32))
    second = _pending(1)
    transfer.send(first)
    transfer.send(second)
    got = list(transfer.receive(wait=False))  # on the CPU a copy has landed as soon as it is sent
    assert [p.step for p, _ in got] == [0, 1]
    values = got[0][1]
    assert list(values) == ["grad_l2", "table", "loss"]
    assert values["grad_l2"] == [1.5, 2.5]
    assert values["table"] == [3.0, 4.0, 5.0, 6.0]
    assert values["loss"] == [float(torch.tensor(0.1, dtype=torch.float32))]
    assert got[1][1] == {}
    assert list(transfer.receive(wait=True)) == []  # each step is read back once
