"""Whether a block has a skip path, read once from its autograd graph.

A block has one when, below its output, an add node has an operand that reaches the block
input's node without passing a weight op (a matrix product, a convolution, an embedding, an
attention kernel): ``x + f(x)`` has one, ``f(x)`` has not, whatever ``f`` adds inside.
"""
from __future__ import annotations

from typing import Any

__all__ = ["has_skip_path"]

# grad_fn names (lower case, without "backward" and the version digit) of ops that apply weights
_WEIGHT_OPS = ("mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "matmul", "linear", "embedding", "embeddingbag")
_WEIGHT_PARTS = ("convolution", "attention")
_ADD_OPS = ("add",)
# nodes looked at per block at most: past this the answer is "could not tell"
NODE_LIMIT = 20_000


def _op(node: Any) -> str:
    name = type(node).__name__.lower()
    return name.split("backward")[0]


def _weight_op(node: Any) -> bool:
    op = _op(node)
    return op in _WEIGHT_OPS or any(part in op for part in _WEIGHT_PARTS)


def _parents(node: Any) -> list[Any]:
    return [n for n, _ in getattr(node, "next_functions", ()) if n is not None]


def _is_input(node: Any, target: Any) -> bool:
    # a leaf input has no grad_fn: the node that accumulates its gradient stands for it
    return node is target or getattr(node, "variable", None) is target


def _reaches_without_weights(start: Any, target: Any, budget: list[int]) -> bool:
    stack, seen = [start], set()
    while stack and budget[0] > 0:
        node = stack.pop()
        if _is_input(node, target):
            return True
        if id(node) in seen or _weight_op(node):
            continue
        seen.add(id(node))
        budget[0] -= 1
        stack.extend(_parents(node))
    return False


def has_skip_path(output_fn: Any, input_fn: Any) -> bool | None:
    """True / False as the module docstring says; None where it cannot tell (no graph, too big).

    ``input_fn``: the block input's grad_fn, or the input itself where it is a leaf.
    """
    if output_fn is None or input_fn is None:
        return None
    if _is_input(output_fn, input_fn):
        return True  # the block passed its input through unchanged
    budget = [NODE_LIMIT]
    stack, seen = [output_fn], set()
    while stack:
        if budget[0] <= 0:
            return None
        node = stack.pop()
        if _is_input(node, input_fn) or id(node) in seen:
            continue  # what lies before the block's input is not the block
        seen.add(id(node))
        budget[0] -= 1
        parents = _parents(node)
        if _op(node) in _ADD_OPS and any(_reaches_without_weights(p, input_fn, budget) for p in parents):
            return True
        stack.extend(parents)
    return None if budget[0] <= 0 else False
