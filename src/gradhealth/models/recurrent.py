"""Recurrent nets: a tanh RNN, an LSTM and a GRU behind one interface, for gradients through time.

The gradient that reaches step t of a sequence of T steps has passed T - t recurrent Jacobians
``W_hh^T diag(1 - h^2)`` in a tanh RNN (Bengio et al. 1994, Pascanu et al. 2013); the LSTM's cell
state (Hochreiter & Schmidhuber 1997) and the GRU's gated update (Cho et al. 2014) add a path that
is nearly the identity. ``recurrent_init`` sets the recurrent weights: torch's default
(uniform in ±1/sqrt(hidden)), ``orthogonal`` (Saxe et al. 2014) or ``identity`` (IRNN, Le et al.
2015), each gate's block on its own; ``recurrent_gain`` multiplies them afterwards (> 1: explode).
``gate_bias`` starts a gated cell keeping its state: it is added to the LSTM's forget-gate bias (Gers
et al. 2000; Jozefowicz et al. 2015 use 1) or the GRU's update-gate bias, whose sigmoid then starts
above 1/2 and carries more of the state, and of the gradient, from step to step.

Layer names: ``embed`` (an Embedding of ``vocab_size`` token ids, or a Linear of ``in_features``
floats per step), ``rnn`` (``rnn.weight_ih_l0``, ``rnn.weight_hh_l0``, ...) and ``head``. Inputs are
(B, T) token ids or (B, T, in_features) floats, batch first; outputs are (B, num_classes) from the
last step (``task=classify``) or (B, T, vocab_size) at every step (``task=lm``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.models._registry import register_model
from gradhealth.validate import non_negative_int, positive_number, require_positive

__all__ = ["CELLS", "RECURRENT_INITS", "GATES", "RecurrentNet", "rnn", "init_recurrent_weights", "add_gate_bias"]

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
# rows of weight_hh stack one (hidden, hidden) block per gate: LSTM i, f, g, o; GRU r, z, n
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
RECURRENT_INITS = ("default", "orthogonal", "identity")
TASKS = ("classify", "lm")


@torch.no_grad()
def init_recurrent_weights(module: nn.RNNBase, scheme: str, gain: float = 1.0) -> None:
    """Set every ``weight_hh_l*`` of ``module`` gate block by gate block, then multiply by ``gain``.

    ``default`` keeps the weights as they are (torch's or an init scheme's), so only ``gain`` applies.
    """
    gates = GATES[module.mode.lower().replace("rnn_tanh", "rnn").replace("rnn_relu", "rnn")]
    for name, weight in module.named_parameters():
        if not name.startswith("weight_hh"):
            continue
        for block in weight.chunk(gates, dim=0):
            if scheme == "orthogonal":
                nn.init.orthogonal_(block)
            elif scheme == "identity":
                block.copy_(torch.eye(*block.shape, dtype=block.dtype, device=block.device))
        weight.mul_(gain)


# the block of bias_ih that gates how much state is kept: LSTM (i, f, g, o) -> f; GRU (r, z, n) -> z,
# with h' = (1 - z) n + z h
_KEEP_GATE = {"lstm": 1, "gru": 1}


@torch.no_grad()
def add_gate_bias(module: nn.RNNBase, cell: str, bias: float) -> None:
    """Add ``bias`` to the keep gate (LSTM forget, GRU update) of every layer; a tanh RNN has none."""
    if cell not in _KEEP_GATE or bias == 0:
        return
    for name, param in module.named_parameters():
        if name.startswith("bias_ih"):
            param.chunk(GATES[cell], dim=0)[_KEEP_GATE[cell]].add_(bias)


class RecurrentNet(nn.Module):
    """embed -> ``layers`` stacked RNN/LSTM/GRU layers (batch first) -> head on the last or every step."""

    def __init__(
        self,
        cell: str = "rnn",
        hidden: int = 64,
        layers: int = 1,
        task: str = "classify",
        recurrent_init: str = "default",
        recurrent_gain: float = 1.0,
        gate_bias: float = 0.0,
        in_features: int = 0,
        vocab_size: int = 256,
        num_classes: int = 10,
    ):
        super().__init__()
        require_positive(hidden=hidden, layers=layers, vocab_size=vocab_size, num_classes=num_classes)
        non_negative_int("in_features", in_features)
        self.recurrent_gain = positive_number("recurrent_gain", recurrent_gain)
        self.gate_bias = float(gate_bias)
        self.cell, self.task, self.recurrent_init = (self._choice(k, v, c) for k, v, c in (
            ("cell", cell, tuple(CELLS)), ("task", task, TASKS), ("recurrent init", recurrent_init, RECURRENT_INITS)))
        if self.gate_bias and self.cell == "rnn":
            raise ConfigError("gate_bias sets an LSTM's forget gate or a GRU's update gate; a tanh RNN has no gate.")
        if self.task == "lm" and in_features:
            raise ConfigError("task=lm predicts the next token id, so the input must be token ids; drop in_features.")
        self.in_features = in_features
        # in_features = 0: the input is token ids, embedded; otherwise floats per step, projected
        self.embed = nn.Linear(in_features, hidden) if in_features else nn.Embedding(vocab_size, hidden)
        # the plain RNN is Elman's, with tanh, whose derivative 1 - h^2 is what shrinks the gradient
        kwargs = {"nonlinearity": "tanh"} if self.cell == "rnn" else {}
        self.rnn = CELLS[self.cell](hidden, hidden, num_layers=layers, batch_first=True, **kwargs)
        self.head = nn.Linear(hidden, vocab_size if self.task == "lm" else num_classes)
        self.reset_recurrent()

    @staticmethod
    def _choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
        key = str(value).lower()
        if key not in choices:
            raise unknown_name(kind, value, choices)
        return key

    def reset_recurrent(self) -> None:
        """Apply ``recurrent_init``, ``recurrent_gain`` and ``gate_bias`` to the recurrent layers.

        ``apply_init`` calls it after a named scheme, which sets the recurrent weights (and zeroes
        the biases) too.
        """
        init_recurrent_weights(self.rnn, self.recurrent_init, self.recurrent_gain)
        add_gate_bias(self.rnn, self.cell, self.gate_bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: Tensor) -> Tensor:
        if self.in_features:
            if x.dim() == 2 and self.in_features == 1:
                x = x.unsqueeze(-1)  # (B, T) floats: one feature per step
            if x.dim() != 3 or x.shape[-1] != self.in_features or x.is_floating_point() is False:
                raise ConfigError(f"this recurrent net takes (batch, time, {self.in_features}) floats, not a "
                                  f"{x.dtype} tensor of shape {tuple(x.shape)}.")
        elif x.dim() != 2 or x.is_floating_point():
            raise ConfigError(f"this recurrent net takes (batch, time) token ids, not a {x.dtype} tensor of shape "
                              f"{tuple(x.shape)}; for float sequences set in_features to the features per step.")
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1] if self.task == "classify" else out)


def rnn(
    cell: str = "rnn",
    hidden: int = 64,
    layers: int = 1,
    task: str = "classify",
    recurrent_init: str = "default",
    recurrent_gain: float = 1.0,
    gate_bias: float = 0.0,
    in_features: int = 0,
    vocab_size: int = 256,
    num_classes: int = 10,
) -> RecurrentNet:
    """Recurrent net: cell=rnn (tanh) | lstm | gru; token ids, or in_features floats per step."""
    return RecurrentNet(cell, hidden, layers, task, recurrent_init, recurrent_gain, gate_bias, in_features,
                        vocab_size, num_classes)


register_model("rnn", rnn)
register_model("lstm", rnn, "LSTM (Hochreiter & Schmidhuber 1997): rnn with cell=lstm", cell="lstm")
register_model("gru", rnn, "GRU (Cho et al. 2014): rnn with cell=gru", cell="gru")
