"""The model's shape as a log shows it (no torch): repeated blocks, norm placement, tied weights.

A transformer's depth is its blocks, not its matrices: q/k/v, the attention output and the MLP
matrices of one block have gradients of different scales, side by side rather than one after the
other, so read one matrix after another they would pass for a decay or a growth. The depth profile
therefore takes a block's matrices together, and needs to know the blocks: from ``meta.blocks``
where the monitor found them, else from the names (``h.0 .. h.N``, ``layers.K``,
``encoder.layer.K``, ``blocks.K``, ``layer1.0`` ...).
"""
from __future__ import annotations

from collections.abc import Sequence

from gradhealth.monitor.records import LayerInfo, RunLog

__all__ = ["RECURRENT_TYPES", "block_of", "block_members", "norm_placement", "tied_layers", "recurrent_types"]

RECURRENT_TYPES = ("RNN", "LSTM", "GRU")
# BatchNorm sits after convolutions by design; pre/post placement is a question for layer norms,
# torch's and every library's own (LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm, T5LayerNorm ...)
_SEQUENCE_NORM_SUFFIXES = ("LayerNorm", "RMSNorm")


def _sequence_norm(layer: LayerInfo) -> bool:
    return layer.role == "norm" and layer.type.endswith(_SEQUENCE_NORM_SUFFIXES)


def _layers(log: RunLog) -> list[LayerInfo]:
    if log.meta.layers:
        return list(log.meta.layers)
    names = dict.fromkeys(name for record in log.records for name in record.layers)
    return [LayerInfo(name, "", "weight") for name in names]


def _candidates(name: str) -> list[str]:
    """Every prefix of ``name`` that ends in an index: ``a.h.3.attn`` -> ``a.h.3``, outermost first."""
    parts = name.split(".")
    return [".".join(parts[:i + 1]) for i, part in enumerate(parts) if part.isdigit()]


def _derived_blocks(layers: Sequence[LayerInfo]) -> set[str]:
    """Indexed children of one container, of which at least two hold the same weight layers (same
    relative names and types): a repeated block. A ``Sequential(backbone, head)`` has indexed
    children too, but different ones, so it is not taken for a stack of blocks."""
    signatures: dict[str, dict[str, set[tuple[str, str]]]] = {}
    for layer in layers:
        if layer.role != "weight":
            continue
        for block in _candidates(layer.name):
            container = block.rpartition(".")[0]
            suffix = layer.name[len(block):]
            signatures.setdefault(container, {}).setdefault(block, set()).add((suffix, layer.type))
    blocks: set[str] = set()
    for children in signatures.values():
        shapes = [frozenset(s) for s in children.values()]
        if len(children) >= 2 and len(set(shapes)) < len(shapes):
            blocks.update(children)
    return blocks


def block_of(log: RunLog) -> dict[str, str]:
    """Each module inside a repeated block -> the outermost such block; modules outside any are absent."""
    layers = _layers(log)
    blocks = {b.name for b in log.meta.blocks} or _derived_blocks(layers)
    out = {}
    for layer in layers:
        if layer.block:  # a writer that knows the block says so
            out[layer.name] = layer.block
            continue
        parts = layer.name.split(".")
        outermost = next((p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in blocks), None)
        if outermost is not None:
            out[layer.name] = outermost
    return out


def block_members(log: RunLog) -> dict[str, list[str]]:
    """Block -> its modules in forward order, blocks in the order they first run."""
    members: dict[str, list[str]] = {}
    for name, block in block_of(log).items():
        members.setdefault(block, []).append(name)
    return members


def norm_placement(log: RunLog) -> str | None:
    """``pre`` when most blocks start with a layer norm (``x + f(norm(x))``), ``post`` when most
    end with one (``norm(x + f(x))``), None without blocks or layer norms in them.

    Forward order decides: the first measured module of a pre-norm block is its norm.
    """
    roles = {layer.name: layer for layer in _layers(log)}
    votes = {"pre": 0, "post": 0}
    for members in block_members(log).values():
        measured = [roles[n] for n in members if roles[n].role in ("weight", "norm")]
        if not measured or not any(_sequence_norm(m) for m in measured):
            continue
        if measured[0].role == "norm":
            votes["pre"] += 1
        elif measured[-1].role == "norm":
            votes["post"] += 1
    if not any(votes.values()):
        return None
    return max(votes, key=votes.get)


def tied_layers(log: RunLog) -> dict[str, list[str]]:
    """Measured layers whose parameters other modules share (``transformer.wte`` and ``lm_head``)."""
    return {layer.name: list(layer.tied) for layer in log.meta.layers if layer.tied}


def recurrent_types(log: RunLog) -> list[str]:
    """The recurrent module classes of the run (RNN, LSTM, GRU), from the layers' types."""
    return sorted({layer.type for layer in log.meta.layers if layer.type in RECURRENT_TYPES})
