"""What the monitor measures on the device: per-layer gradient, weight and update norms, max |grad|.

Every result stays a device tensor (a float64 vector over the layers, in the layout's order); the
monitor moves all of a step's results to the host at once (``transfer.py``).

A sharded model (DTensor parameters: FSDP2, tensor parallelism, HSDP) is measured on each rank's
own pieces: its L2 pieces are this rank's share of each layer's SQUARED norm (``sharded``), which
``sharded.py`` sums over the ranks in the step's one collective before the transfer.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gradhealth.distributed import counted_squares, is_sharded, local_maxes, local_pieces
from gradhealth.monitor.stats import group_l2, group_max, group_squares
from gradhealth.monitor.structure import ModelLayout
from gradhealth.tensor_norms import NORM_DTYPE, ScaledScratch, fused_norms, max_abs

__all__ = ["LayerMeasures", "parameter_ids", "scalar_piece"]


def parameter_ids(model: nn.Module) -> set[int]:
    """The identities of every parameter of ``model``, as ``model.parameters()`` would give them.

    Read on every detailed step, so the module tree is walked without the qualified names
    ``parameters()`` builds for each module: half the time on a transformer of 80 blocks.
    """
    found: set[int] = set()
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        found.update(id(p) for p in module._parameters.values() if p is not None)
        stack.extend(child for child in module._modules.values() if child is not None)
    return found


def scalar_piece(value: Tensor, device: torch.device) -> Tensor:
    """A scalar tensor (loss, a metric) as a one-element float64 vector on ``device``."""
    return value.detach().to(device, NORM_DTYPE).reshape(1)


class LayerMeasures:
    """Per-layer norms of one model's parameters, their gradients and their updates."""

    def __init__(self) -> None:
        # the scaled copies of vanishing or exploding gradients, kept for the next step's
        self._grad_scratch = ScaledScratch()
        # the same for the weights and the updates: each keeps its own sizes and scaled tensors
        self._weight_scratch = ScaledScratch()
        self._update_scratch = ScaledScratch()
        self.use_layout(ModelLayout())

    def use_layout(self, layout: ModelLayout) -> None:
        """Measure these parameters from now on (and forget what was kept for the old ones)."""
        self.layout = layout
        self.param_ids = {id(p) for p in layout.params}
        self._param_index: dict[torch.device, Tensor] = {}
        self._kept_copy: list[Tensor] | None = None
        self.all_positions = list(range(len(layout.params)))
        # DTensor parameters: per-layer pieces are squared shares, combined across ranks later
        self.sharded = is_sharded(layout.params)

    def is_current(self, model: nn.Module) -> bool:
        """Whether ``model``'s parameters are the ones measured (not replaced since)."""
        return parameter_ids(model) == self.param_ids

    @property
    def device(self) -> torch.device:
        params = self.layout.params
        return params[0].device if params else torch.device("cpu")

    def grads(self) -> tuple[list[int], list[Tensor]]:
        """The positions of the parameters that have a gradient, and those gradients."""
        # read under no_grad, so no detach: the norms record no graph
        grads = [p.grad for p in self.layout.params]
        if not any(g is None for g in grads):
            return self.all_positions, grads
        positions = [i for i, g in enumerate(grads) if g is not None]
        return positions, [grads[i] for i in positions]

    def index_on(self, device: torch.device, positions: list[int]) -> Tensor:
        """The layer of each parameter at ``positions``, as an index tensor on ``device``."""
        full = self._param_index.get(device)
        if full is None:
            full = torch.tensor(self.layout.param_layer, dtype=torch.long, device=device)
            self._param_index[device] = full
        if len(positions) == len(self.layout.params):
            return full
        return full[torch.tensor(positions, dtype=torch.long, device=device)]

    def per_layer(self, norms: Tensor, positions: list[int],
                  maxes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Per-parameter L2 norms (and maxima) grouped into one value per layer."""
        groups = len(self.layout.layer_names)
        index = self.index_on(norms.device, positions)
        l2 = group_l2(norms, index, groups)
        mx = group_max(maxes, index, groups) if maxes is not None else None
        return l2, mx

    def _shares(self, tensors: list[Tensor], positions: list[int]) -> Tensor:
        """Sharded model: this rank's share of each layer's squared norm of ``tensors``."""
        pieces, counted = local_pieces(tensors)
        squares = counted_squares(pieces, counted)
        index = self.index_on(squares.device, positions)
        return group_squares(squares, index, len(self.layout.layer_names))

    def weight_norms(self) -> Tensor:
        """The L2 norm of each layer's weights (sharded: this rank's share of its square)."""
        params = [p.detach() for p in self.layout.params]
        if self.sharded:
            return self._shares(params, self.all_positions)
        weights = fused_norms(params, self._weight_scratch)
        return self.per_layer(weights, self.all_positions)[0]

    def gradient_norms(self, positions: list[int], grads: list[Tensor], detailed: bool,
                       grad_scale: Tensor | float | None) -> dict[str, Tensor]:
        """Pieces ``grad_l2``, and ``has_grad`` / ``grad_max`` where they apply, of the given gradients.

        ``grad_scale``: the gradients are still scaled by it (AMP), so the norms are divided by it.
        """
        pieces: dict[str, Tensor] = {}
        if self.sharded:
            grad_l2, grad_max, device = self._sharded_gradient_norms(positions, grads, detailed, grad_scale)
        else:
            norms = fused_norms(grads, self._grad_scratch)
            maxes = max_abs(grads) if detailed else None
            if grad_scale is not None:
                inv = 1.0 / torch.as_tensor(grad_scale, dtype=NORM_DTYPE, device=norms.device)
                norms = norms * inv
                maxes = maxes * inv if maxes is not None else None
            grad_l2, grad_max = self.per_layer(norms, positions, maxes)
            device = norms.device
        pieces["grad_l2"] = grad_l2
        if len(positions) < len(self.layout.params):
            # which layers have a gradient at all (without this piece: every layer)
            has = torch.zeros(len(self.layout.layer_names), dtype=NORM_DTYPE, device=device)
            pieces["has_grad"] = has.index_fill_(0, self.index_on(device, positions), 1.0)
        if grad_max is not None:
            pieces["grad_max"] = grad_max
        return pieces

    def _sharded_gradient_norms(self, positions: list[int], grads: list[Tensor], detailed: bool,
                                grad_scale: Tensor | float | None) -> tuple[Tensor, Tensor | None, torch.device]:
        """Sharded ``grad_l2`` (squared shares) and ``grad_max`` (this rank's maxima), and their device."""
        pieces, counted = local_pieces(grads)
        squares = counted_squares(pieces, counted)
        device = squares.device
        maxes = local_maxes(pieces) if detailed else None
        if grad_scale is not None:
            inv = 1.0 / torch.as_tensor(grad_scale, dtype=NORM_DTYPE, device=device)
            squares = squares * inv.square()
            maxes = maxes * inv if maxes is not None else None
        groups = len(self.layout.layer_names)
        index = self.index_on(device, positions)
        grad_max = group_max(maxes, index, groups) if maxes is not None else None
        return group_squares(squares, index, groups), grad_max, device

    def post_clip_norms(self) -> Tensor | None:
        """The per-layer norms of the gradients as they are now (after clipping), or None without any."""
        positions, grads = self.grads()
        if not grads:
            return None
        if self.sharded:
            return self._shares(grads, positions)
        return self.per_layer(fused_norms(grads, self._grad_scratch), positions)[0]

    def copy_of_weights(self) -> list[Tensor]:
        """The weights before the optimizer step, for the real update it makes.

        On the CPU the copy's memory is kept for the next detailed step: memory the process has
        not touched yet costs a page fault per 4 KiB, several times the copy itself (a GPU's
        caching allocator keeps freed memory already, so there the copy is made afresh).
        """
        weights = self._local_weights()
        if any(w.device.type != "cpu" for w in weights):
            return torch._foreach_mul(weights, 1.0)
        kept = self._kept_copy
        if kept is None or len(kept) != len(weights) or any(
                k.shape != w.shape or k.dtype != w.dtype for k, w in zip(kept, weights)):
            kept = self._kept_copy = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]
        torch._foreach_copy_(kept, weights)
        return kept

    @torch.no_grad()
    def update_norms(self, before: list[Tensor]) -> Tensor:
        """The norm of each layer's real update: the weights ``before`` the step minus those now.

        ``before`` (a ``copy_of_weights``) is overwritten.
        """
        # in place: before - after has the norm of the update, without a second copy
        torch._foreach_sub_(before, self._local_weights())
        if self.sharded:
            # the difference of two pieces is the piece of the difference: it counts where they do
            _, counted = local_pieces([p.detach() for p in self.layout.params])
            squares = counted_squares(before, counted)
            return group_squares(squares, self.index_on(squares.device, self.all_positions),
                                 len(self.layout.layer_names))
        return self.per_layer(fused_norms(before, self._update_scratch), self.all_positions)[0]

    def _local_weights(self) -> list[Tensor]:
        """The weights as tensors this rank holds (a sharded model's own pieces)."""
        weights = [p.detach() for p in self.layout.params]
        return local_pieces(weights)[0] if self.sharded else weights
