"""Whether a block has a skip path, read once from its autograd graph.

A block has one when, below its output, an add node has an operand that reaches the block
input's node without passing a weight op (a matrix product, a convolution, an embedding, an
attention kernel): ``x + f(x)`` has one, ``f(x)`` has not, whatever ``f`` adds inside. A
projection shortcut counts too: an add whose one operand reaches the input through a single weight
op (ResNet's 1x1 convolution, with its norm) while another needs two or more (the block's branch);
the adds inside a GELU, whose operands pass the same weights, do not.
"""
from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["has_skip_path"]

# grad_fn names (lower case, without "backward" and the version digit) of ops that apply weights
_WEIGHT_OPS = ("mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "matmul", "linear", "embedding", "embeddingbag")
_WEIGHT_PARTS = ("convolution", "attention")
_ADD_OPS = ("add",)
# nodes looked at per block at most: past this the answer is "could not tell"
NODE_LIMIT = 20_000
# weight ops counted on a path at most (a branch of two or more is a branch, whatever its length)
_FAR = 2


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


def _weight_ops_to_input(start: Any, target: Any, budget: list[int]) -> int | None:
    """The fewest weight ops on a path from ``start`` to the input, up to ``_FAR``; None: no path.

    The input's own op is not counted (the block's input may be a convolution's output). A path
    still going past ``_FAR`` weight ops counts as ``_FAR`` (a bottleneck's three convolutions).
    """
    def cost_of(node: Any) -> int:
        return int(_weight_op(node) and not _is_input(node, target))

    # 0-1 breadth-first search: a weight op costs one, any other op nothing
    queue, best = deque([(start, cost_of(start))]), {}
    far = False
    while queue and budget[0] > 0:
        node, cost = queue.popleft()
        if cost > _FAR:
            far = True
            continue
        if best.get(id(node), (_FAR + 1,))[0] <= cost:
            continue
        best[id(node)] = (cost, node)  # the node kept alive, so its id is not reused
        if _is_input(node, target):
            return cost
        budget[0] -= 1
        for parent in _parents(node):
            step = cost_of(parent)
            if step:
                queue.append((parent, cost + step))
            else:
                queue.appendleft((parent, cost))
    return _FAR if far else None


def _is_skip(add: Any, target: Any, budget: list[int]) -> bool:
    reach = [d for d in (_weight_ops_to_input(p, target, budget) for p in _parents(add)) if d is not None]
    return bool(reach) and (min(reach) == 0 or (reach.count(1) >= 1 and max(reach) >= _FAR))


def has_skip_path(output_fn: Any, input_fn: Any) -> bool | None:
    """True / False as the module docstring says; None where it cannot tell (no graph, too big).

    ``input_fn``: the block input's grad_fn, or the input itself where it is a leaf.
    """
    if output_fn is None or input_fn is None:
        return None
    if _is_input(output_fn, input_fn):
        return True  # the block passed its input through unchanged
    budget = [NODE_LIMIT]
    # Python wrappers of graph nodes live only while referenced: ``seen`` keeps them, so an id
    # seen is never reused by another node during the walk
    stack: list[Any] = [output_fn]
    seen: dict[int, Any] = {}
    while stack:
        if budget[0] <= 0:
            return None
        node = stack.pop()
        if _is_input(node, input_fn) or id(node) in seen:
            continue  # what lies before the block's input is not the block
        seen[id(node)] = node
        budget[0] -= 1
        if _op(node) in _ADD_OPS and _is_skip(node, input_fn, budget):
            return True
        stack.extend(_parents(node))
    return None if budget[0] <= 0 else False
